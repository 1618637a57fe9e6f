"""QLoRA: block-wise NF4 / int8 storage, dequantized forward, LoRA on top, merging."""

import re

import bitsandbytes.functional as bnb
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from ftjax import methods, train
from ftjax.errors import UserError
from ftjax.methods import qlora, quant
from ftjax.models import registry
from method_harness import (HEAD, HIDDEN, LAYERS, base_logits, check_common, check_merge, logits,
                            run_method, tiny_config)


def test_nf4_table_values_round_trip_exactly():
  # Column 0 holds every code scaled by 3 (absmax 3: each value is its own code), column 1 the
  # table rotated and halved.
  col = np.concatenate([quant.NF4, quant.NF4[::-1]])
  w = jnp.asarray(np.stack([col * 3.0, np.roll(col, 5) * 0.5], axis=1))  # [in 32, out 2]
  q = quant.quantize(w, "nf4", 32)
  np.testing.assert_array_equal(np.asarray(quant.dequantize(q, w.shape, "nf4", 32)), np.asarray(w))
  assert q.codes.dtype == jnp.uint8 and q.codes.shape == (16, 2)  # two rows of `in` per byte
  # Rows 0 and 1 of the kernel (codes 0 and 1) in one byte, the first in the high nibble.
  assert int(q.codes[0, 0]) == 0x01 and int(q.codes[7, 0]) == 0xEF
  np.testing.assert_array_equal(np.asarray(q.scales), [[3.0, 0.5]])


def test_blocks_run_along_the_input_axis():
  """bitsandbytes' blocks are runs of the torch weight's rows [out, in]: here columns of [in, out]."""
  w = np.asarray(jax.random.normal(jax.random.key(1), (128, 3))) * np.float32([1, 10, 100])
  q = quant.quantize(jnp.asarray(w), "nf4", 64)
  assert q.scales.shape == (2, 3)
  np.testing.assert_array_equal(np.asarray(q.scales), np.abs(w).reshape(2, 64, 3).max(1))


@pytest.mark.parametrize("kind,bound", [("nf4", (1 - 0.6961928) / 2 + 1e-6), ("int8", 0.5 / 127 + 1e-6)])
@pytest.mark.parametrize("double_quant", [False, True])
def test_quantization_error_and_size(kind, bound, double_quant):
  w = jax.random.normal(jax.random.key(0), (256, 100)) * 0.05  # 400 blocks: 2 of 256 scales
  q = quant.quantize(w, kind, 64, double_quant)
  back = quant.dequantize(q, w.shape, kind, 64)
  blocks = np.abs(np.asarray(w)).reshape(4, 64, 100).max(1)
  err = np.abs(np.asarray(back - w)).reshape(4, 64, 100).max(1) / blocks
  # NF4: at most half the widest gap of the table (-1 .. -0.696); int8: half a step. Double
  # quantization adds the scales' own error: at most half the dynamic map's widest gap times
  # the absmax of the centred scales, relative to the smallest scale.
  scale_err = 0.0
  if double_quant:
    scale_err = np.diff(quant.dynamic_map()).max() / 2 * float(q.scales_scale.max()) / blocks.min()
  assert err.max() <= bound + scale_err * (1 + bound), (err.max(), scale_err)
  full = w.size * 4
  expected = (w.size // 2 if kind == "nf4" else w.size) + (400 if double_quant else 1600) + (
      2 * 4 + 4 if double_quant else 0)
  assert quant.nbytes(q) == expected
  assert quant.nbytes(q) < full / (7 if kind == "nf4" else 3.5)


def test_input_size_must_be_a_multiple_of_the_block(tiny_bert_dir):
  model, _ = registry.build_model(tiny_bert_dir, task="classification", num_labels=2,
                                  rngs=nnx.Rngs(0))
  options = dict(methods.get("qlora").defaults, block_size=64)  # hidden 32
  with pytest.raises(UserError, match=r"kernel of 'bert\.encoder\.layer\.0\.attention\."
                                      r"self_attn\.query' of shape \(32, 32\).*block_size"):
    methods.registry._METHODS["qlora"](options).apply(model, rngs=nnx.Rngs(0))


# ------------------------------------------------------ against bitsandbytes (its CPU backend)

def _torch_weight(out_features=96, in_features=1536):
  torch.manual_seed(0)
  w = torch.randn(out_features, in_features) * 0.05
  w[3, 64:128] = 0  # an all-zero block: absmax 0, as bitsandbytes stores it
  return w


def test_dynamic_map_is_bitsandbytes():
  np.testing.assert_array_equal(quant.dynamic_map(), bnb.create_dynamic_map().numpy())


@pytest.mark.parametrize("double_quant", [False, True])
def test_bitsandbytes_storage_dequantizes_to_its_values(double_quant):
  w = _torch_weight()
  packed, state = bnb.quantize_4bit(w, blocksize=64, compress_statistics=double_quant,
                                    quant_type="nf4")
  expected = bnb.dequantize_4bit(packed, state).numpy().T  # as the kernel [in, out]
  nested = dict(nested_absmax=state.state2.absmax.numpy(), offset=state.offset.numpy()) \
      if double_quant else {}
  q = quant.from_bitsandbytes(packed.numpy(), state.absmax.numpy(), tuple(w.shape), 64, **nested)
  np.testing.assert_array_equal(np.asarray(quant.dequantize(q, expected.shape, "nf4", 64)), expected)
  # Under jit XLA may fuse the offset's sum into a multiply-add: one rounding of the scale.
  jitted = jax.jit(quant.dequantize, static_argnums=(1, 2, 3))(q, expected.shape, "nf4", 64)
  np.testing.assert_allclose(np.asarray(jitted), expected, rtol=2.0 ** -22, atol=0)


@pytest.mark.parametrize("double_quant", [False, True])
def test_ftjax_quantizes_as_bitsandbytes_and_it_reads_ftjax_storage(double_quant):
  w = _torch_weight()
  packed, state = bnb.quantize_4bit(w, blocksize=64, compress_statistics=double_quant,
                                    quant_type="nf4")
  q = quant.quantize(jnp.asarray(w.numpy().T), "nf4", 64, double_quant)
  ours = quant.to_bitsandbytes(q)
  np.testing.assert_array_equal(ours["weight"], packed.numpy().reshape(-1))  # NF4 codes: to the bit
  if not double_quant:
    np.testing.assert_array_equal(ours["absmax"], state.absmax.numpy())
  else:
    np.testing.assert_allclose(ours["offset"], state.offset.numpy(), rtol=2.0 ** -23)  # sum order
    np.testing.assert_allclose(ours["nested_absmax"], state.state2.absmax.numpy(), rtol=2.0 ** -22)
    # Ours is the nearest code of the map; bitsandbytes' CPU binary search takes the neighbour for
    # a few values close to a midpoint.
    _, plain = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4")
    blocks = plain.absmax.numel()
    target = (plain.absmax.numpy() - ours["offset"]) / np.repeat(ours["nested_absmax"], 256)[:blocks]
    nearest = np.abs(target[:, None] - quant.dynamic_map()[None, :]).argmin(1)  # ties: lower
    mine, theirs = ours["absmax"].astype(int), state.absmax.numpy().astype(int)
    np.testing.assert_array_equal(mine, nearest)
    assert np.mean(mine == theirs) > 0.99 and np.all(np.abs(mine - theirs) <= 1)
  # The reverse: bitsandbytes dequantizes ftjax's storage to ftjax's values.
  nested = {}
  if double_quant:
    nested = dict(offset=torch.tensor(ours["offset"]), state2=bnb.QuantState(
        absmax=torch.tensor(ours["nested_absmax"]), code=bnb.create_dynamic_map(), blocksize=256,
        dtype=torch.float32))
  theirs_state = bnb.QuantState(
      absmax=torch.tensor(ours["absmax"]), shape=w.shape, code=bnb.get_4bit_type("nf4", device="cpu"),
      blocksize=64, quant_type="nf4", dtype=torch.float32, **nested)
  back = bnb.dequantize_4bit(torch.tensor(ours["weight"]).unsqueeze(1), theirs_state).numpy()
  np.testing.assert_array_equal(back.T, np.asarray(quant.dequantize(q, (1536, 96), "nf4", 64)))


# ---------------------------------------------------- the dequantized kernel is transient

def _split_layer(dtype=None):
  layer = qlora.QLoRALinear(nnx.Linear(128, 48, dtype=dtype, rngs=nnx.Rngs(0)), rank=4, alpha=8.0,
                            rslora=False, dora=False, rngs=nnx.Rngs(1), kind="nf4", block_size=64,
                            double_quant=True)
  layer.lora_b[...] = jax.random.normal(jax.random.key(2), layer.lora_b.shape)  # A gets gradients
  graphdef, params, frozen = nnx.split(layer, nnx.LoRAParam, ...)
  x = jax.random.normal(jax.random.key(3), (5, 128))
  return graphdef, params, frozen, x


def _loss(graphdef, frozen, dequantized_kernel=False):
  def loss(params, x):
    layer = nnx.merge(graphdef, params, frozen)
    if not dequantized_kernel:
      return jnp.sum(layer(x).astype(jnp.float32) ** 2)
    # The non-transient computation: the dequantized kernel as a plain operand.
    y = (x @ layer.base_kernel() + layer.bias[...]
         + layer.scale * (x @ layer.lora_a[...]) @ layer.lora_b[...])
    return jnp.sum(y ** 2)
  return loss


def test_transient_kernel_gives_the_same_gradients():
  graphdef, params, frozen, x = _split_layer()
  got = jax.jit(jax.grad(_loss(graphdef, frozen), argnums=(0, 1)))(params, x)
  want = jax.jit(jax.grad(_loss(graphdef, frozen, dequantized_kernel=True), argnums=(0, 1)))(params, x)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_no_dequantized_kernel_is_saved_for_the_backward_pass(dtype, capsys):
  graphdef, params, frozen, x = _split_layer(dtype)
  # The frozen storage enters as an argument of the step, as in the train step.
  loss = lambda params, x, frozen: _loss(graphdef, jax.lax.stop_gradient(frozen))(params, x)
  jax.ad_checkpoint.print_saved_residuals(loss, params, x, frozen)  # "f32[5,128] from ..."
  saved = capsys.readouterr().out.splitlines()
  assert not [line for line in saved if re.match(r"(f|bf)\d+\[128,48\]", line)], saved
  compute = "bf16" if dtype else "f32"
  # The input stays, for LoRA's A: the list is real, not empty.
  assert [line for line in saved if line.startswith(f"{compute}[5,128]")], saved


def test_compiled_step_holds_no_kernel_per_layer():
  """XLA's own accounting: a chain of QLoRA layers needs about the temporary memory of the same
  chain over plain kernels (LoRA), not one dequantized kernel more per layer."""
  layers, width = 4, 256

  class Chain(nnx.Module):
    def __init__(self, wrap):
      self.layers = nnx.List([wrap(nnx.Linear(width, width, rngs=nnx.Rngs(i)))
                              for i in range(layers)])

    def __call__(self, x):
      for layer in self.layers:
        x = jnp.tanh(layer(x))
      return x

  lora = dict(rank=4, alpha=8.0, rslora=False, dora=False, rngs=nnx.Rngs(1))
  quantized = Chain(lambda l: qlora.QLoRALinear(l, **lora, kind="nf4", block_size=64,
                                                double_quant=True))
  plain = Chain(lambda l: qlora.lora_layers.LoRALinear(l, **lora))
  x = jnp.ones((64, width))

  def temp_bytes(model):
    graphdef, params, frozen = nnx.split(model, nnx.LoRAParam, ...)
    loss = lambda params, frozen: jnp.sum(nnx.merge(graphdef, params, frozen)(x) ** 2)
    return jax.jit(jax.grad(loss)).lower(params, frozen).compile().memory_analysis() \
        .temp_size_in_bytes

  kernel = width * width * 4
  extra = temp_bytes(quantized) - temp_bytes(plain)
  assert extra < 2 * kernel, (extra / kernel, "kernels")  # being made: one forward, one backward


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
