"""The reward objective: TRL's RewardTrainer loss, and a tiny Llama reward model trained on pairs
that transformers then loads from the export and ranks the held-out pairs with."""

import collections
import json
import math
import types

import numpy as np
import pytest
import torch
import transformers

from ftjax import train
from ftjax.config import base_config
from ftjax.errors import UserError
from ftjax.export import export
from ftjax.tasks import reward
from tiny_assets import make_preference_rows, make_tiny_llama, write_jsonl


def _trl_reward_loss(rewards: np.ndarray, center):
  """TRL's `RewardTrainer.compute_loss` on fixed rewards [B, 2], called on a stand-in `self`
  (its model returns the rewards as [2B, 1] logits, chosen rows first, as TRL's collator lays
  them out)."""
  from trl.trainer.reward_trainer import RewardTrainer  # pylint: disable=g-import-not-at-top
  logits = torch.from_numpy(np.concatenate([rewards[:, 0], rewards[:, 1]])[:, None])
  accel = types.SimpleNamespace(gather=lambda x: x, gather_for_metrics=lambda x: x)
  stand_in = types.SimpleNamespace(
      model=types.SimpleNamespace(training=False), accelerator=accel,
      args=types.SimpleNamespace(center_rewards_coefficient=center),
      _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
      _total_train_tokens=0, _tp_size=1)
  model = lambda **kw: types.SimpleNamespace(logits=logits)
  inputs = {"input_ids": torch.zeros(2 * len(rewards), 4, dtype=torch.long),
            "attention_mask": torch.ones(2 * len(rewards), 4, dtype=torch.long)}
  return float(RewardTrainer.compute_loss(stand_in, model, inputs))


@pytest.mark.parametrize("center", [None, 0.01])
def test_loss_equals_trls_reward_trainer(center):
  rewards = np.random.default_rng(0).normal(0, 3, (7, 2))
  got = reward.pair_losses(reward.Options(center_rewards=center or 0.0), rewards).mean()
  assert float(got) == pytest.approx(_trl_reward_loss(rewards, center), abs=1e-6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("reward")
  return {"model": make_tiny_llama(root / "llama"), "root": root,
          "train": write_jsonl(root / "train.jsonl", make_preference_rows(48, 0)),
          "validation": write_jsonl(root / "dev.jsonl", make_preference_rows(16, 1))}


def _config(tiny, *, steps=24):
  c = base_config()
  c.model.checkpoint = str(tiny["model"])  # a causal LM: its decoder loads, `score` is new
  c.model.task = "classification"
  c.objective.name = "reward"
  c.method.name = "lora"
  c.data.name = "preference_files"
  c.data.files.train = str(tiny["train"])
  c.data.files.validation = str(tiny["validation"])
  c.data.test_split = ""
  c.data.max_length = 32
  c.data.bucket_boundaries = (16, 32)
  c.train.steps = steps
  c.train.batch_size = 8
  c.train.log_every_steps = 4
  c.optimizer.lr = 2e-2
  c.optimizer.schedule = "constant"
  c.eval.every_steps = 12
  c.eval.batch_size = 16
  c.eval.metric = "reward_accuracy"
  c.eval.mode = "max"
  c.checkpoint.every_steps = 12
  return c


def test_a_llama_reward_model_learns_the_pairs_and_exports_to_transformers(tiny, tmp_path):
  workdir = str(tmp_path / "run")
  summary = train.train_and_evaluate(_config(tiny), workdir)
  first, last = summary["initial_eval"], summary["final_eval"]
  assert first["num_pairs"] == last["num_pairs"] == 16
  assert last["reward_accuracy"] >= 0.9 and last["loss"] < 0.5 * math.log(2), last
  assert last["reward_margin"] > first["reward_margin"]
  assert last["reward_std"] > 0
  report = json.loads((tmp_path / "run" / "data_report.json").read_text())
  assert report["objective"] == "reward" and report["splits"]["train"]["count"] == 48

  # The merged export is an HF reward model: one label, loaded by transformers, that ranks the
  # held-out pairs (rendered with the tokenizer's chat template) as the run's eval did.
  out = export(workdir, str(tmp_path / "hf"), "hf", checkpoint="best")
  hf = json.loads((out / "config.json").read_text())
  assert hf["architectures"] == ["LlamaForSequenceClassification"] and hf["num_labels"] == 1
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()

  def score(prompt, reply):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                         {"role": "assistant", "content": reply}], tokenize=True,
                                        return_dict=False)
    with torch.no_grad():
      return float(model(input_ids=torch.tensor([ids])).logits[0, 0])

  rows = [json.loads(l) for l in tiny["validation"].read_text().splitlines()]
  margins = [score(r["prompt"], r["chosen"]) - score(r["prompt"], r["rejected"]) for r in rows]
  best = summary["best_eval"]
  assert np.mean(np.asarray(margins) > 0) == pytest.approx(best["reward_accuracy"])
  assert np.mean(margins) == pytest.approx(best["reward_margin"], rel=1e-3, abs=1e-4)


def test_wrong_head_and_bad_option_are_one_line_errors(tiny, tmp_path):
  cfg = _config(tiny)
  with cfg.unlocked():
    cfg.model.task = "causal_lm"
  with pytest.raises(UserError, match=r"'reward' trains a classification model; set "
                                      r"model.task=classification"):
    train.train_and_evaluate(cfg, str(tmp_path / "run"))
  cfg = _config(tiny)
  with cfg.unlocked():
    cfg.objective.reward.center_rewards = -1.0
  with pytest.raises(UserError, match=r"'objective.reward.center_rewards' must be >= 0"):
    train.train_and_evaluate(cfg, str(tmp_path / "run"))
