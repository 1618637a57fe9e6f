"""IA3: learned scaling vectors on keys, values (outputs) and feed-forward inputs."""

from flax import nnx

from ftjax import methods
from ftjax.models import registry
from method_harness import (HEAD, HIDDEN, INTERMEDIATE, LAYERS, check_common, check_merge,
                            run_method, tiny_config)


def test_ia3_identity_training_and_merge(tiny_bert_dir, tiny_sentiment_files, tmp_path):
  run = run_method(tiny_config(tiny_bert_dir, tiny_sentiment_files, method="ia3"))
  # key, value: out; attention.output.dense, output.dense (feed-forward): in; plus the head.
  check_common(run, expected_trainable=LAYERS * (HIDDEN + HIDDEN + HIDDEN + INTERMEDIATE) + HEAD,
               own=r"\.ia3_l$", identity_atol=0.0)
  check_merge(run, run.exp.method, tmp_path)


def test_ia3_feedforward_layers_scale_their_input(tiny_bert_dir):
  model, _ = registry.build_model(tiny_bert_dir, task="classification", num_labels=2,
                                  rngs=nnx.Rngs(0))
  model = methods.get("ia3").apply(model, rngs=nnx.Rngs(0))
  layer = model.bert.encoder.layer[0]
  assert not layer.attention.self_attn.key.feedforward
  assert layer.attention.self_attn.key.ia3_l[...].shape == (HIDDEN,)
  assert layer.output.dense.feedforward
  assert layer.output.dense.ia3_l[...].shape == (INTERMEDIATE,)
  assert layer.attention.output.dense.feedforward  # PEFT's 'output.dense' matches it too
  assert type(layer.attention.self_attn.query) is nnx.Linear  # pylint: disable=unidiomatic-typecheck
  assert isinstance(layer.intermediate.dense, nnx.Linear)
