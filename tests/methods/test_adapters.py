"""Bottleneck adapters (Houlsby, Pfeiffer): identity at init, training, not mergeable."""

import jax
import numpy as np
import pytest
from flax import nnx

from ftjax import methods
from ftjax.errors import UserError
from ftjax.methods import adapters
from ftjax.models import registry
from method_harness import HEAD, HIDDEN, LAYERS, check_common, run_method, tiny_config

BOTTLENECK = 8
PER_ADAPTER = 2 * HIDDEN * BOTTLENECK + BOTTLENECK + HIDDEN


@pytest.mark.parametrize("variant,per_layer", [("houlsby", 2), ("pfeiffer", 1)])
def test_adapters_identity_and_training(tiny_bert_dir, tiny_sentiment_files, variant, per_layer):
  run = run_method(tiny_config(tiny_bert_dir, tiny_sentiment_files, method="adapters",
                               variant=variant, bottleneck=BOTTLENECK))
  check_common(run, expected_trainable=LAYERS * per_layer * PER_ADAPTER + HEAD,
               own=r"output\.dense\.adapter_(down|up)(_bias)?$", identity_atol=0.0)
  assert run.exp.method.merge(None) is None


def test_adapter_placement(tiny_bert_dir):
  def build(variant):
    model, _ = registry.build_model(tiny_bert_dir, task="classification", num_labels=2,
                                    rngs=nnx.Rngs(0))
    options = dict(methods.get("adapters").defaults, variant=variant)
    return methods.registry._METHODS["adapters"](options).apply(model, rngs=nnx.Rngs(0))

  layer = build("houlsby").bert.encoder.layer[1]
  assert isinstance(layer.attention.output.dense, adapters.AdapterLinear)
  assert isinstance(layer.output.dense, adapters.AdapterLinear)
  layer = build("pfeiffer").bert.encoder.layer[1]
  assert type(layer.attention.output.dense) is nnx.Linear  # pylint: disable=unidiomatic-typecheck
  assert isinstance(layer.output.dense, adapters.AdapterLinear)
  with pytest.raises(UserError, match="method.adapters.variant"):
    build("lora")


@pytest.mark.parametrize("variant,activation,fn", [("houlsby", "silu", jax.nn.silu),
                                                   ("pfeiffer", "relu", jax.nn.relu)])
def test_default_activation_is_adapterhubs(tiny_bert_dir, variant, activation, fn):
  """AdapterHub's defaults: swish (= silu) for Houlsby (`DoubleSeqBnConfig`), relu for
  Pfeiffer (`SeqBnConfig`); the layer computes h + up(act(down(h)))."""
  model, _ = registry.build_model(tiny_bert_dir, task="classification", num_labels=2,
                                  rngs=nnx.Rngs(0))
  options = dict(methods.get("adapters").defaults, variant=variant, bottleneck=BOTTLENECK)
  model = methods.registry._METHODS["adapters"](options).apply(model, rngs=nnx.Rngs(0))
  layer = model.bert.encoder.layer[0].output.dense
  assert layer.activation == activation
  keys = jax.random.split(jax.random.key(0), 3)
  layer.adapter_up[...] = jax.random.normal(keys[0], layer.adapter_up[...].shape)
  layer.adapter_down_bias[...] = jax.random.normal(keys[1], (BOTTLENECK,))  # negative inputs too
  x = jax.random.normal(keys[2], (3, layer.in_features))
  h = layer.base(x)
  expected = h + fn(h @ layer.adapter_down[...] + layer.adapter_down_bias[...]) @ (
      layer.adapter_up[...]) + layer.adapter_up_bias[...]
  np.testing.assert_allclose(layer(x), expected, atol=1e-6, rtol=0)
