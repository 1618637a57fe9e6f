"""LoRA and rsLoRA on the tiny BERT: identity at init, what trains, merging, options."""

import math

import jax
import peft
import pytest
from flax import nnx

from ftjax import config as config_lib
from ftjax import methods
from ftjax.errors import UserError
from ftjax.methods import lora_layers
from ftjax.models import registry
from method_harness import HEAD, HIDDEN, LAYERS, check_common, check_merge, run_method, tiny_config

OWN = r"\.(query|value)\.lora_[ab]$"


def test_lora_identity_training_and_merge(tiny_bert_dir, tiny_sentiment_files, tmp_path):
  cfg = tiny_config(tiny_bert_dir, tiny_sentiment_files, method="lora", rank=4, alpha=8.0)
  run = run_method(cfg)
  # 2 targets (query, value) per layer, each rank * (in + out); plus the head.
  check_common(run, expected_trainable=LAYERS * 2 * 4 * (HIDDEN + HIDDEN) + HEAD, own=OWN,
               identity_atol=0.0)
  check_merge(run, run.exp.method, tmp_path)


def test_rslora_scales_by_sqrt_rank_and_merges(tiny_bert_dir, tiny_sentiment_files, tmp_path):
  cfg = tiny_config(tiny_bert_dir, tiny_sentiment_files, method="lora", rank=4, alpha=8.0,
                    rslora=True, targets=r"\.(key|intermediate\.dense)$")
  run = run_method(cfg)
  # key: 4 * (32 + 32); intermediate.dense: 4 * (32 + 64); plus the head.
  check_common(run, expected_trainable=LAYERS * 4 * (HIDDEN + HIDDEN + HIDDEN + 2 * HIDDEN) + HEAD,
               own=r"\.(key|intermediate\.dense)\.lora_[ab]$", identity_atol=0.0)
  wrapped = [m for _, m in lora_layers.iter_wrappers(
      nnx.merge(run.exp.graphdef, run.final.params, run.final.frozen), lora_layers.LoRALinear)]
  assert len(wrapped) == 2 * LAYERS
  assert all(w.scale == pytest.approx(8.0 / math.sqrt(4)) for w in wrapped)
  check_merge(run, run.exp.method, tmp_path)


def test_default_rank_and_alpha_are_peft_s():
  """r=8, alpha=8 like `peft.LoraConfig` (and the paper: alpha = the first rank tried)."""
  reference = peft.LoraConfig()
  for name in ("lora", "dora", "qlora"):
    options = methods.get(name).defaults
    assert (options["rank"], options["alpha"]) == (reference.r, reference.lora_alpha), name


def test_targets_that_match_nothing_are_an_error(tiny_bert_dir):
  model, _ = registry.build_model(tiny_bert_dir, task="classification", num_labels=2,
                                  rngs=nnx.Rngs(0))
  options = dict(methods.get("lora").defaults, targets=r"q_projj$")
  with pytest.raises(UserError, match="method.lora.targets"):
    methods.registry._METHODS["lora"](options).apply(model, rngs=nnx.Rngs(0))


def test_head_is_never_wrapped(tiny_bert_dir):
  model, _ = registry.build_model(tiny_bert_dir, task="classification", num_labels=2,
                                  rngs=nnx.Rngs(0))
  options = dict(methods.get("lora").defaults, targets=r"(dense|classifier)$")
  model = methods.registry._METHODS["lora"](options).apply(model, rngs=nnx.Rngs(0))
  assert type(model.classifier) is nnx.Linear  # pylint: disable=unidiomatic-typecheck
  assert isinstance(model.bert.pooler.dense, lora_layers.LoRALinear)


@pytest.mark.parametrize("rate", [-0.1, 1.0])
def test_dropout_outside_0_1_is_an_error(tiny_bert_dir, rate):
  model, _ = registry.build_model(tiny_bert_dir, task="classification", num_labels=2,
                                  rngs=nnx.Rngs(0))
  options = dict(methods.get("lora").defaults, dropout=rate)
  with pytest.raises(UserError, match=r"method\.lora\.dropout.*\[0, 1\)"):
    methods.registry._METHODS["lora"](options).apply(model, rngs=nnx.Rngs(0))


def test_unknown_option_key_is_an_error(tmp_path):
  path = tmp_path / "cfg.py"
  path.write_text("from ftjax.config import base_config\n"
                  "def get_config():\n"
                  "  c = base_config()\n"
                  "  c.model.checkpoint = '/nowhere'\n"
                  "  c.method.name = 'lora'\n"
                  "  return c\n")
  cfg = config_lib.load_config(str(path), ["method.lora.rank=4", "method.lora.rslora=true"])
  assert cfg.method.lora.rank == 4 and cfg.method.lora.rslora is True
  with pytest.raises(UserError, match=r"method\.lora\.rnk.*did you mean 'method\.lora\.rank'"):
    config_lib.load_config(str(path), ["method.lora.rnk=4"])


def test_train_head_false_trains_only_lora(tiny_bert_dir):
  model, _ = registry.build_model(tiny_bert_dir, task="classification", num_labels=2,
                                  rngs=nnx.Rngs(0))
  method = methods.registry._METHODS["lora"](dict(methods.get("lora").defaults, rank=2,
                                                   train_head=False))
  model = method.apply(model, rngs=nnx.Rngs(0))
  _, params, _ = nnx.split(model, method.trainable(), ...)
  assert sum(x.size for x in jax.tree.leaves(params)) == LAYERS * 2 * 2 * (HIDDEN + HIDDEN)


def test_method_freeze_composes_with_lora(tiny_bert_dir, tiny_sentiment_files):
  from ftjax import train  # pylint: disable=g-import-not-at-top
  cfg = tiny_config(tiny_bert_dir, tiny_sentiment_files, method="lora", rank=2)
  cfg.method.freeze = r"(layer\.0\.|classifier)"
  exp = train.build_experiment(cfg)
  assert exp.param_counts["trainable"] == 2 * 2 * (HIDDEN + HIDDEN)  # layer 1's query, value
