"""Bottleneck adapters (Houlsby, Pfeiffer): identity at init, training, not mergeable."""

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
