"""GRPO: advantages and the clipped objective against a torch reference, the reward functions,
and the objective end to end on a tiny Llama (rollouts, KL, exact resume mid-rollout)."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ftjax import train
from ftjax.config import base_config
from ftjax.errors import UserError
from ftjax.tasks import grpo, rewards
from resume_runs import straight_and_resumed
from tiny_assets import make_tiny_llama, write_jsonl

HERE = pathlib.Path(__file__).resolve().parent


# --- the math ------------------------------------------------------------------------------------


def _torch_loss(kind, logps, old, ref, adv, mask, eps_low, eps_high, beta, max_new):
  """GRPO's loss as TRL 1.x's GRPOTrainer._compute_loss writes it, in torch."""
  ratio = torch.exp(logps - old)
  clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
  per_token = -torch.min(ratio * adv[:, None], clipped * adv[:, None])
  if beta:
    per_token = per_token + beta * (torch.exp(ref - logps) - (ref - logps) - 1)
  if kind == "grpo":
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
  if kind == "dapo":
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)
  return (per_token * mask).sum() / (per_token.size(0) * max_new)


@pytest.mark.parametrize("kind", grpo.LOSSES)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_and_gradient_equal_a_torch_reference(kind, beta):
  rng = np.random.default_rng(0)
  n, t = 6, 7
  logps = rng.normal(-2, 0.5, (n, t)).astype(np.float32)
  old = (logps + rng.normal(0, 0.3, (n, t))).astype(np.float32)  # ratios on both sides of the clip
  ref = (logps + rng.normal(0, 0.2, (n, t))).astype(np.float32)
  adv = rng.normal(0, 1, n).astype(np.float32)
  mask = (rng.random((n, t)) < 0.7).astype(np.float32)
  mask[0] = 0  # a completion masked out entirely (mask_truncated)
  opt = grpo.Options(loss=kind, epsilon=0.2, epsilon_high=0.28, beta=beta, max_new_tokens=t)

  def ours(lp):
    per_token, _, _, _ = grpo.token_losses(opt, lp, old, ref if beta else None, adv)
    return grpo.reduce_loss(opt, per_token, mask)[0]

  loss, grad = jax.value_and_grad(ours)(jnp.asarray(logps))
  lp = torch.tensor(logps, dtype=torch.float64, requires_grad=True)
  expected = _torch_loss(kind, lp, torch.tensor(old, dtype=torch.float64),
                         torch.tensor(ref, dtype=torch.float64), torch.tensor(adv, dtype=torch.float64),
                         torch.tensor(mask, dtype=torch.float64), 0.2, 0.28, beta, t)
  expected.backward()
  assert float(loss) == pytest.approx(expected.item(), abs=1e-6)
  np.testing.assert_allclose(np.asarray(grad), lp.grad.numpy(), atol=1e-6)


def test_advantages_are_group_relative():
  r = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
  a = grpo.advantages(r, 4, "group")
  np.testing.assert_allclose(a[:4], (r[:4] - 0.5) / (np.std(r[:4], ddof=1) + 1e-4))
  np.testing.assert_array_equal(a[4:], 0.0)  # a group that agrees teaches nothing
  np.testing.assert_allclose(grpo.advantages(r, 4, "none"), [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
  np.testing.assert_allclose(grpo.advantages(r, 4, "batch")[:4],
                             (r[:4] - 0.5) / (np.std(r, ddof=1) + 1e-4))


# --- reward functions ------------------------------------------------------------------------


def test_built_in_rewards():
  opt = grpo.Options(unit_test_timeout=5.0)
  exact = rewards.get("exact_answer", opt)
  assert exact("The sum is 1,042.", {"answer": "1042"}) == 1.0
  assert exact("7 then 8", {"answer": "7"}) == 0.0  # the last number is the answer
  assert exact("Paris.", {"answer": "paris"}) == 1.0 and exact("Lyon", {"answer": "Paris"}) == 0
  fmt = rewards.get("format", opt)
  assert fmt(" 42\n", {}) == 1.0 and fmt("it is 42", {}) == 0.0
  tests = rewards.get("unit_tests", opt)
  example = {"extra": {"test": "def check(f):\n  assert f(2, 3) == 5\n", "entry_point": "add",
                       "prompt_code": "def add(a, b):\n"}}
  assert tests("```python\ndef add(a, b):\n  return a + b\n```", example) == 1.0
  assert tests("  return a + b\n", example) == 1.0  # HumanEval-style body after the prompt
  assert tests("  return a - b\n", example) == 0.0
  network = ("import socket\nsocket.create_connection(('127.0.0.1', 9))\n"
             "def add(a, b):\n  return a + b\n")
  assert tests(network, example) == 0.0  # sockets are disabled in the program
  slow = rewards.get("unit_tests", grpo.Options(unit_test_timeout=1.0))
  assert slow("def add(a, b):\n  while True: pass\n", example) == 0.0  # the timeout


def test_score_counts_failing_reward_functions_instead_of_crashing():
  rewards.load_modules([str(HERE / "grpo_rewards.py")])
  fns = {"exact_answer": rewards.get("exact_answer", grpo.Options()),
         "broken": rewards.get("broken", grpo.Options())}
  values, errors = rewards.score(fns, ["3", "a b", "nan"], [{"answer": "3"}, {"answer": ""},
                                                            {"answer": "1"}])
  np.testing.assert_array_equal(values, [[1, 0, 0], [0, 0, 0]])
  assert errors == {"exact_answer": 1, "broken": 3}  # no answer; a raise and non-numbers
  with pytest.raises(UserError, match="unknown reward function 'nope'.*known: .*exact_answer"):
    rewards.get("nope", grpo.Options())
  with pytest.raises(UserError, match="cannot import 'no_such_module_x'"):
    rewards.load_modules(["no_such_module_x"])


# --- end to end ---------------------------------------------------------------------------------


def _prompt_rows(n, seed):
  rng = np.random.default_rng(seed)
  questions = ["hello how are you ?", "help me with python !", "hi !"]
  return [{"prompt": f"{questions[rng.integers(3)]} {i}", "answer": str(i % 7)} for i in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("grpo")
  return {"model": make_tiny_llama(root / "llama"),
          "train": write_jsonl(root / "train.jsonl", _prompt_rows(32, 0)),
          "validation": write_jsonl(root / "dev.jsonl", _prompt_rows(8, 1))}


def _config(tiny, *, method="lora", steps=12, **grpo_options):
  c = base_config()
  c.model.checkpoint = str(tiny["model"])
  c.model.task = "causal_lm"
  c.objective.name = "grpo"
  g = c.objective.grpo
  g.num_generations, g.max_new_tokens, g.beta = 4, 6, 0.04
  g.rewards, g.reward_modules = ("positive_share",), (str(HERE / "grpo_rewards.py"),)
  for k, v in grpo_options.items():
    g[k] = v
  c.method.name = method
  c.data.name = "prompt_files"
  c.data.files.train = str(tiny["train"])
  c.data.files.validation = str(tiny["validation"])
  c.data.test_split = ""
  c.data.max_length = 24
  c.train.steps = steps
  c.train.batch_size = 4
  c.train.log_every_steps = 2
  c.optimizer.lr = 5e-2 if method == "lora" else 1e-2
  c.optimizer.schedule = "constant"
  c.eval.every_steps = steps
  c.eval.batch_size = 8
  c.eval.metric, c.eval.mode = "reward", "max"
  c.eval.num_samples = 0
  c.checkpoint.every_steps = 1
  return c


def _rows(workdir, split="train"):
  return [r for r in map(json.loads, (pathlib.Path(workdir) / "metrics.jsonl").read_text()
                         .splitlines()) if r["split"] == split]


def test_grpo_with_lora_raises_the_reward_it_is_given(tiny, tmp_path):
  cfg = _config(tiny, steps=24)
  cfg.train.log_every_steps = 1
  summary = train.train_and_evaluate(cfg, str(tmp_path / "run"))
  first, last = summary["initial_eval"], summary["final_eval"]
  assert first["num_prompts"] == 8 and {"reward/positive_share", "completion_length"} <= set(last)
  assert last["reward"] > first["reward"] + 0.3, (first, last)
  rows = _rows(tmp_path / "run")
  assert {"reward", "reward_std", "kl", "clip_fraction", "completion_length", "rollout_sec",
          "reward_errors/positive_share", "truncated", "grad_norm"} <= set(rows[-1])
  assert rows[-1]["reward"] > rows[0]["reward"]
  assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as its reference
  report = json.loads((tmp_path / "run" / "data_report.json").read_text())
  assert report["objective"] == "grpo" and report["splits"]["train"]["count"] == 32


def test_resume_between_two_updates_of_one_rollout_is_exact(tiny, tmp_path):
  """num_iterations=2: a run stopped after step 3 saved the rollout batch its step 4 needs;
  resumed, it makes step 4 and the next rollout exactly as the straight run."""
  def config(steps):
    cfg = _config(tiny, steps=steps, num_iterations=2, loss="dapo", epsilon_high=0.28)
    cfg.eval.at_start = False
    return cfg
  straight, resumed = straight_and_resumed(config, tmp_path, 6, 3)
  assert resumed["final_eval"] == straight["final_eval"]
  # Steps 5-6: the third rollout (its key folded from index 2) and its second update.
  drop = ("rollout_sec", "examples_per_sec", "tokens_per_sec")
  last = [{k: v for k, v in _rows(d)[-1].items() if k not in drop} for d in (tmp_path / "a",
                                                                              tmp_path / "b")]
  assert last[0]["step"] == 6 and last[0] == last[1]


def test_bad_grpo_input_is_one_line(tiny, tmp_path):
  with pytest.raises(UserError, match="unknown reward function 'nope'"):
    train.build_experiment(_config(tiny, rewards=("nope",)), abstract=True)
  with pytest.raises(UserError, match="num_generations' must be >= 2"):
    train.build_experiment(_config(tiny, num_generations=1), abstract=True)
  with pytest.raises(UserError, match="max_new_tokens' .* must leave room"):
    train.build_experiment(_config(tiny, max_new_tokens=24), abstract=True)
  # A reward function that fails is counted per step and the run goes on.
  cfg = _config(tiny, steps=2, rewards=("positive_share", "broken"), reward_weights=(1.0, 1.0))
  cfg.eval.at_start = False
  train.train_and_evaluate(cfg, str(tmp_path / "broken"))
  rows = _rows(tmp_path / "broken")
  assert rows[-1]["reward_errors/broken"] == 16 and rows[-1]["reward_errors/positive_share"] == 0


def test_arithmetic_problems_are_disjoint_across_splits_and_seeded():
  from ftjax.data import arithmetic  # pylint: disable=g-import-not-at-top
  config = arithmetic.make_config(3, {"train": 300, "validation": 50, "test": 100}, 20, "+-*")
  splits = arithmetic.problems(config)
  canonical = lambda a, op, b: (min(a, b), op, max(a, b)) if op in "+*" else (a, op, b)
  seen = [{canonical(a, op, b) for a, op, b, _ in rows} for rows in splits.values()]
  assert [len(s) for s in seen] == [300, 50, 100]  # no repeats within a split
  assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
  assert all(arithmetic.OPERATIONS[op](a, b) == ans for rows in splits.values()
             for a, op, b, ans in rows)
  assert arithmetic.problems(config) == splits  # the seed decides
  with pytest.raises(UserError, match="operands up to 3 with '\\+-' give 26"):
    arithmetic.make_config(0, {"train": 27}, 3, "+-")  # 10 sums and 16 differences
  assert len(arithmetic.problems(arithmetic.make_config(0, {"train": 26}, 3, "+-"))["train"]) == 26
  with pytest.raises(UserError, match="operations='/'"):
    arithmetic.make_config(0, {"train": 10}, 9, "/")


def test_prompts_too_long_for_the_completion_budget_are_dropped_and_counted(tiny, tmp_path):
  rows = _prompt_rows(6, 2) + [{"prompt": " ".join(["hello"] * 30), "answer": "1"}]
  cfg = _config(tiny, steps=1)
  cfg.data.files.validation = str(write_jsonl(tmp_path / "dev.jsonl", rows))
  exp = train.build_experiment(cfg, abstract=True)
  assert len(exp.dataset.examples("validation")) == 6
  assert exp.dataset.dropped_prompt_too_long["validation"] == 1


def test_a_classifier_trained_by_ftjax_is_a_reward_function(tiny, tiny_bert_dir,
                                                            tiny_sentiment_files, tmp_path):
  """`reward_model`: the judge's probabilities, on the validation texts, pick the labels the
  judge run's own evaluation scored (its accuracy); in a GRPO run they are the rewards."""
  from tiny_assets import files_config  # pylint: disable=g-import-not-at-top
  from ftjax.train.reward_model import Judge  # pylint: disable=g-import-not-at-top
  judge_cfg = files_config(tiny_bert_dir, tiny_sentiment_files)
  judge_cfg.train.steps, judge_cfg.train.batch_size, judge_cfg.eval.every_steps = 8, 8, 8
  judge_cfg.eval.at_start = False
  judge_cfg.optimizer.lr, judge_cfg.checkpoint.keep_best = 1e-3, 1
  judge_cfg.data.max_length, judge_cfg.data.bucket_boundaries = 32, (16, 32)
  summary = train.train_and_evaluate(judge_cfg, str(tmp_path / "judge"))
  judge = Judge(str(tmp_path / "judge"), "pos")
  rows = [json.loads(l) for l in tiny_sentiment_files["validation"].read_text().splitlines()]
  p_pos = np.asarray(judge([r["text"] for r in rows]))
  assert ((p_pos >= 0) & (p_pos <= 1)).all()
  accuracy = np.mean([(p > 0.5) == (r["label"] == "pos") for p, r in zip(p_pos, rows)])
  assert accuracy == pytest.approx(summary["best_eval"]["accuracy"])
  with pytest.raises(UserError, match="reward_model_label 'nope' is not a label .*pos"):
    Judge(str(tmp_path / "judge"), "nope")

  cfg = _config(tiny, steps=2, rewards=("reward_model",), reward_model=str(tmp_path / "judge"),
                reward_model_label="pos")
  cfg.eval.at_start = False
  last = train.train_and_evaluate(cfg, str(tmp_path / "grpo"))["final_eval"]
  assert 0 < last["reward/reward_model"] < 1 and last["reward_errors"] == 0
