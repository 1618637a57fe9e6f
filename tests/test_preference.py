"""The preference objective end to end: a tiny Llama learns which of two replies is preferred."""

import json
import math

import pytest

from ftjax import train
from ftjax.config import base_config
from ftjax.errors import UserError
from tiny_assets import make_preference_rows, make_tiny_llama, write_jsonl


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("preference")
  return {"model": make_tiny_llama(root / "llama"),
          "train": write_jsonl(root / "train.jsonl", make_preference_rows(48, 0)),
          "validation": write_jsonl(root / "dev.jsonl", make_preference_rows(12, 1))}


def _config(tiny, *, method="lora", loss="sigmoid", steps=24):
  c = base_config()
  c.model.checkpoint = str(tiny["model"])
  c.model.task = "causal_lm"
  c.objective.name = "preference"
  c.objective.preference.loss = loss
  c.objective.preference.beta = 0.5
  c.method.name = method
  c.data.name = "preference_files"
  c.data.files.train = str(tiny["train"])
  c.data.files.validation = str(tiny["validation"])
  c.data.test_split = ""
  c.data.max_length = 32
  c.data.bucket_boundaries = (16, 32)
  c.train.steps = steps
  c.train.batch_size = 8
  c.train.log_every_steps = 4
  c.optimizer.lr = 2e-2 if method == "lora" else 3e-3
  c.optimizer.schedule = "constant"
  c.eval.every_steps = 12
  c.eval.batch_size = 12
  c.eval.metric = "reward_accuracy"
  c.eval.mode = "max"
  c.eval.num_samples = 1
  c.eval.sample_max_new_tokens = 3
  c.checkpoint.every_steps = 3
  return c


def test_dpo_with_lora_learns_the_preference_from_a_step_0_reference(tiny, tmp_path):
  summary = train.train_and_evaluate(_config(tiny), str(tmp_path / "run"))
  first, last = summary["initial_eval"], summary["final_eval"]
  # At step 0 the policy is its own reference: every implicit reward is exactly 0.
  assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
  assert first["reward_accuracy"] == 0 and first["reward_margin"] == 0
  assert first["num_pairs"] == 12
  assert last["reward_accuracy"] >= 0.9 and last["loss"] < 0.8 * math.log(2), last
  assert last["logp_accuracy"] > first["logp_accuracy"]
  assert last["chosen_reward"] > last["rejected_reward"]
  report = json.loads((tmp_path / "run" / "data_report.json").read_text())
  assert report["objective"] == "preference" and report["splits"]["train"]["count"] == 48
  records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in records if "reward_accuracy" in r and "grad_norm" in r]
  assert train_rows and {"reward_margin", "logp_chosen", "logp_rejected"} <= set(train_rows[-1])


def test_full_fine_tuning_resumes_exactly_with_its_reference_rebuilt(tiny, tmp_path):
  """A full-FT reference is a copy of the base; a resumed run rebuilds it (it is never
  checkpointed) and goes on bit for bit as if never stopped."""
  def config(steps):
    cfg = _config(tiny, method="full", steps=steps)
    cfg.eval.at_start, cfg.eval.num_samples = False, 0  # the final eval is what is compared
    return cfg
  straight = train.train_and_evaluate(config(6), str(tmp_path / "a"))
  cfg = config(3)
  train.train_and_evaluate(cfg, str(tmp_path / "b"))
  with cfg.unlocked():
    cfg.train.steps = 6
  resumed = train.train_and_evaluate(cfg, str(tmp_path / "b"))
  assert resumed["resumed_from_step"] == 3
  assert resumed["final_eval"] == straight["final_eval"]
  assert straight["final_eval"]["reward_accuracy"] > 0


def test_objective_and_head_mismatch_and_unknown_loss_are_one_line_errors(tiny, tmp_path):
  cfg = _config(tiny)
  with cfg.unlocked():
    cfg.model.task = "classification"
  with pytest.raises(UserError, match=r"'preference' trains a causal_lm model; set "
                                      r"model.task=causal_lm"):
    train.train_and_evaluate(cfg, str(tmp_path / "run"))
  cfg = _config(tiny, loss="dpo")
  with pytest.raises(UserError, match=r"unknown loss 'dpo'; known: sigmoid, robust, ipo"):
    train.train_and_evaluate(cfg, str(tmp_path / "run"))
