"""QLoRA: block-wise NF4 / int8 storage, dequantized forward, LoRA on top, merging."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ftjax import methods, train
from ftjax.methods import qlora, quant
from ftjax.models import registry
from method_harness import (HEAD, HIDDEN, LAYERS, base_logits, check_common, check_merge, logits,
                            run_method, tiny_config)


def test_nf4_table_values_round_trip_exactly():
  # One block holding every code scaled by 3: absmax 3, each value is its own code.
  w = jnp.asarray(np.concatenate([quant.NF4, quant.NF4[::-1]]) * 3.0).reshape(4, 8)
  q = quant.quantize(w, "nf4", 32)
  np.testing.assert_array_equal(np.asarray(quant.dequantize(q, w.shape, "nf4", 32)), np.asarray(w))
  assert q.codes.dtype == jnp.uint8 and q.codes.size == 16  # two codes per byte
  assert int(q.codes[0]) == 0x01 and int(q.codes[7]) == 0xEF  # first code in the high nibble


@pytest.mark.parametrize("kind,bound", [("nf4", (1 - 0.6961928) / 2 + 1e-6), ("int8", 0.5 / 127 + 1e-6)])
@pytest.mark.parametrize("double_quant", [False, True])
def test_quantization_error_and_size(kind, bound, double_quant):
  w = jax.random.normal(jax.random.key(0), (256, 100)) * 0.05  # 25600 values: a padded block
  q = quant.quantize(w, kind, 64, double_quant)
  back = quant.dequantize(q, w.shape, kind, 64)
  blocks = np.abs(np.pad(np.asarray(w).reshape(-1), (0, 0))).reshape(-1, 64).max(1)
  err = np.abs(np.asarray(back - w)).reshape(-1, 64).max(1) / blocks
  # NF4: at most half the widest gap of the table (-1 .. -0.696); int8: half a step. Double
  # quantization adds the scales' own (small) error.
  assert err.max() <= bound + (3e-3 if double_quant else 0.0), err.max()
  full = w.size * 4
  expected = (w.size // 2 if kind == "nf4" else w.size) + (400 if double_quant else 1600) + (
      2 * 4 + 4 if double_quant else 0)
  assert quant.nbytes(q) == expected
  assert quant.nbytes(q) < full / (7 if kind == "nf4" else 3.5)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_qlora_trains_and_merges(kind, tiny_bert_dir, tiny_sentiment_files, tmp_path):
  cfg = tiny_config(tiny_bert_dir, tiny_sentiment_files, method="qlora", rank=4, alpha=8.0,
                    quant=kind, block_size=32, double_quant=kind == "nf4")
  run = run_method(cfg)
  check_common(run, expected_trainable=LAYERS * 2 * 4 * 2 * HIDDEN + HEAD,
               own=r"\.(query|value)\.lora_[ab]$", identity_atol=None)
  model0 = train.model_from_state(run.exp, jax.tree.map(jnp.asarray, run.initial))
  # Identity at step 0 w.r.t. the base model holding the dequantized kernels.
  base, _ = registry.build_model(tiny_bert_dir, task="classification", num_labels=2,
                                 rngs=nnx.Rngs(params=cfg.seed))
  for path, layer in qlora.lora_layers.iter_wrappers(model0, qlora.QLoRALinear):
    qlora.lora_layers.replace_module(base, path, layer.to_linear(layer.base_kernel()))
  np.testing.assert_allclose(logits(model0, run.batch), logits(base, run.batch), atol=1e-6, rtol=0)
  np.testing.assert_allclose(logits(model0, run.batch), base_logits(run, run.batch), atol=5e-2)
  # The stored kernels are really smaller: 4 kernels of 32 x 32 fp32 = 16384 bytes.
  stored, full = qlora.storage_bytes(model0)
  assert full == LAYERS * 2 * HIDDEN * HIDDEN * 4
  assert stored < full / (6 if kind == "nf4" else 3), (stored, full)
  assert not any(p[-1] == "kernel" and p[-2] in ("query", "value")
                 for p, _ in nnx.to_flat_state(nnx.state(model0)))
  check_merge(run, run.exp.method, tmp_path)


def test_qlora_options_are_checked(tiny_bert_dir):
  model, _ = registry.build_model(tiny_bert_dir, task="classification", num_labels=2,
                                  rngs=nnx.Rngs(0))
  options = dict(methods.get("qlora").defaults, quant="fp4")
  with pytest.raises(Exception, match="method.qlora.quant"):
    methods.registry._METHODS["qlora"](options).apply(model, rngs=nnx.Rngs(0))
