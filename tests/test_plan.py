"""`ftjax.plan`: per-device bytes and the compiled step's memory, before any weight is read."""

import jax
import pytest

from ftjax import plan as plan_lib
from ftjax import train
from ftjax.train import memory_plan
from ftjax.errors import UserError
from ftjax.weights import safetensors_io
from test_train import tiny_config


def device0_bytes(tree) -> int:
  dev = jax.devices()[0]
  return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
             if s.device == dev)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_plan_reads_nothing_and_matches_the_real_build(tiny_bert_dir, tiny_sentiment_files,
                                                       monkeypatch, method):
  cfg = tiny_config(tiny_bert_dir, tiny_sentiment_files, method=method)
  with monkeypatch.context() as m:
    m.setattr(safetensors_io.CheckpointReader, "read",
              lambda *a: pytest.fail("the plan read a weight"))
    plan = plan_lib.make_plan(cfg)
  exp = train.build_experiment(cfg)
  assert plan.per_device["trainable params"] == device0_bytes(exp.state.params)
  assert plan.per_device["frozen params"] == device0_bytes(exp.state.frozen)
  assert plan.per_device["optimizer state"] == device0_bytes(exp.state.opt_state)
  assert plan.compiled["temp"] > 0 and plan.peak >= plan.compiled["argument"]
  text = memory_plan.report(plan)
  assert "trainable params" in text and "not reported by this backend" in text  # CPU


def test_a_run_that_cannot_fit_fails_naming_the_largest_consumer(tiny_bert_dir, tiny_sentiment_files,
                                                                 monkeypatch):
  cfg = tiny_config(tiny_bert_dir, tiny_sentiment_files, method="full")
  monkeypatch.setattr(memory_plan, "device_limit", lambda: 1024)
  plan = plan_lib.make_plan(cfg)
  assert plan.fits() is False and "DOES NOT FIT" in memory_plan.report(plan)
  with pytest.raises(UserError, match=r"needs .* per device and the device has .*; the largest "
                                      r"consumer is (optimizer state|step temporaries|.* params) "
                                      r"\(.*\); shrink it with"):
    memory_plan.check_fits(plan)


def test_a_training_run_that_cannot_fit_stops_before_reading_or_writing(
    tiny_bert_dir, tiny_sentiment_files, tmp_path, monkeypatch):
  cfg = tiny_config(tiny_bert_dir, tiny_sentiment_files, method="lora")
  monkeypatch.setattr(memory_plan, "device_limit", lambda: 1024)
  monkeypatch.setattr(safetensors_io.CheckpointReader, "read",
                      lambda *a: pytest.fail("the run read a weight before checking its plan"))
  with pytest.raises(UserError, match="the largest consumer is"):
    train.train_and_evaluate(cfg, str(tmp_path / "run"))
  written = {p.name for p in (tmp_path / "run").iterdir()} - {".ftjax.lock", ".ftjax.lock.holder"}
  assert not written  # no config, data report, metrics or checkpoint half-written
