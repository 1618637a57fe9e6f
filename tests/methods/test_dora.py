"""DoRA: LoRA plus a magnitude vector; identity at init, training, merging."""

import numpy as np
from flax import nnx

from ftjax import methods
from ftjax.methods import lora_layers
from ftjax.models import registry
from method_harness import HEAD, HIDDEN, LAYERS, check_common, check_merge, run_method, tiny_config


def test_dora_identity_training_and_merge(tiny_bert_dir, tiny_sentiment_files, tmp_path):
  cfg = tiny_config(tiny_bert_dir, tiny_sentiment_files, method="dora", rank=4, alpha=8.0)
  run = run_method(cfg)
  # Per target rank * (in + out) + out (the magnitude); plus the head.
  check_common(run, expected_trainable=LAYERS * 2 * (4 * 2 * HIDDEN + HIDDEN) + HEAD,
               own=r"\.(query|value)\.(lora_[ab]|magnitude)$", identity_atol=1e-6)
  check_merge(run, run.exp.method, tmp_path)


def test_dora_magnitude_is_the_column_norm_per_output_feature(tiny_bert_dir):
  model, _ = registry.build_model(tiny_bert_dir, task="classification", num_labels=2,
                                  rngs=nnx.Rngs(0))
  kernel = np.asarray(model.bert.encoder.layer[0].attention.self_attn.query.kernel[...])
  model = methods.get("dora").apply(model, rngs=nnx.Rngs(0))
  layer = model.bert.encoder.layer[0].attention.self_attn.query
  assert isinstance(layer, lora_layers.LoRALinear) and layer.dora
  # Our kernel is [in, out] (torch's weight transposed): the norm runs over the input axis.
  np.testing.assert_allclose(np.asarray(layer.magnitude[...]),
                             np.linalg.norm(kernel, axis=0), rtol=1e-6)
  assert layer.magnitude[...].shape == (HIDDEN,)
