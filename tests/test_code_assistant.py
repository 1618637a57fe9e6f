"""The code assistant's parts: plain-text LM training through the trainer, and HumanEval-style
pass@1 (real HumanEval problems; tests run in a sandboxed subprocess)."""

import gzip
import json

import numpy as np
import pytest

from ftjax import code_eval, sources, train
from ftjax.config import base_config
from ftjax.errors import UserError
from tiny_assets import WORDS, make_tiny_llama


def _corpus(root, n=24, seed=0):
  """Documents that repeat one of three phrases (learnable), in nested folders."""
  rng = np.random.default_rng(seed)
  phrases = [" ".join(WORDS[k:k + 5]) for k in (0, 5, 10)]
  for i in range(n):
    path = root / f"pkg{i % 2}" / f"mod{i}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(" ".join([phrases[i % 3]] * int(rng.integers(2, 12)) + [str(i)]))
  return root


def test_plain_text_run_learns_every_token_then_code_eval_scores_it(tmp_path):
  c = base_config()
  c.model.checkpoint = str(make_tiny_llama(tmp_path / "llama"))
  c.model.task = "causal_lm"
  c.data.name = "text_files"
  c.data.text_source = str(_corpus(tmp_path / "corpus"))
  c.data.eval_fraction = c.data.test_fraction = 0.2
  c.data.packing = True
  c.data.max_length = 32
  c.data.bucket_boundaries = (16, 32)
  c.data.text_prompt_tokens = 4
  c.train.steps = 20
  c.train.batch_size = 4
  c.optimizer.lr = 1e-2
  c.eval.every_steps = 20
  c.eval.batch_size = 8
  c.eval.metric = "loss"
  c.eval.mode = "min"
  c.eval.num_samples = 2
  c.eval.sample_max_new_tokens = 4
  c.checkpoint.every_steps = 20
  workdir = tmp_path / "run"
  summary = train.train_and_evaluate(c, str(workdir))
  assert summary["final_eval"]["loss"] < summary["initial_eval"]["loss"] * 0.5, summary
  assert summary["test"]["num_tokens"] > 0  # the test split was read, once, at the end
  report = json.loads((workdir / "data_report.json").read_text())
  assert report["skipped_files"] == {"not_utf8": 0, "blank": 0, "duplicates": 0}
  assert sum(s["windows"] for s in report["splits"].values()) >= 24
  samples = [json.loads(l) for l in (workdir / "samples.jsonl").read_text().splitlines()]
  assert [s["checkpoint"] for s in samples] == ["base", "base", "final", "final"]

  # Whatever the model writes after "# " stays a comment: the first problem passes, the second
  # (a failing test) does not, for the base and the trained model alike.
  problems = tmp_path / "problems.jsonl"
  problems.write_text("".join(json.dumps(p) + "\n" for p in [
      {"task_id": "t/0", "prompt": "def one():\n  return 1\n# ", "entry_point": "one",
       "test": "def check(f):\n  assert f() == 1\n"},
      {"task_id": "t/1", "prompt": "def two():\n  return 1\n# ", "entry_point": "two",
       "test": "def check(f):\n  assert f() == 2\n"}]))
  for checkpoint in ("base", "latest"):
    result = code_eval.run(workdir, checkpoint, problems=str(problems), max_new_tokens=6)
    assert (result["n"], result["passed"], result["pass@1"]) == (2, 1, 0.5)
    assert [r["passed"] for r in result["results"]] == [True, False]
    saved = json.loads((workdir / f"humaneval_{checkpoint}.json").read_text())
    assert saved["pass@1"] == 0.5 and saved["step"] == (0 if checkpoint == "base" else 20)


def test_humaneval_solutions_pass_and_bare_prompts_fail():
  problems = code_eval.load_problems()
  assert len(problems) == 164
  path = sources.resolve(code_eval.HUMANEVAL)
  with gzip.open(path, "rt", encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  # The model continues the stripped prompt; the canonical solution follows the whole one.
  solutions = [r["prompt"][len(code_eval.prompt_text(r)):] + r["canonical_solution"]
               for r in rows]
  assert all(code_eval.score(problems, solutions, timeout=10))
  assert not any(code_eval.score(problems[:8], ["  pass\n"] * 8, timeout=10))


def test_the_code_assistant_config_validates():
  from ftjax import config as config_lib
  cfg = config_lib.load_config("configs/code_smollm2.py")
  assert (cfg.data.name, cfg.model.task, cfg.eval.metric) == ("text_files", "causal_lm",
                                                              "perplexity")


def test_completions_stop_at_the_next_top_level_statement():
  body = "    return x + 1\n\n    # inside\n"
  assert code_eval.truncate(body + "\ndef other():\n  pass") == body
  assert code_eval.truncate(body + "\nif __name__ == '__main__':\n  f()") == body
  assert code_eval.truncate(body + "\nprint(f(1))") == body
  assert code_eval.truncate(body) == body


def test_a_program_cannot_reach_the_network_or_run_forever():
  from ftjax.tasks import rewards
  assert not rewards.passes("import socket\nsocket.create_connection(('127.0.0.1', 9))\n", 10)
  assert not rewards.passes("while True:\n  pass\n", 1)
  assert rewards.passes("assert sum(range(4)) == 6\n", 10)


def test_bad_problem_files_name_the_line(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"task_id": "a", "prompt": "", "test": "", "entry_point": "f"}\nnot json\n')
  with pytest.raises(UserError, match=r"bad.jsonl:2: bad JSON"):
    code_eval.load_problems(str(bad))
  bad.write_text('{"task_id": "a", "prompt": "def f():", "entry_point": "f"}\n')
  with pytest.raises(UserError, match=r"bad.jsonl:1: .*missing or not a string: \['test'\]"):
    code_eval.load_problems(str(bad))


def test_the_command_refuses_a_workdir_without_a_language_model(tmp_path):
  import subprocess
  import sys
  from tiny_assets import make_tiny_bert
  c = base_config()
  c.model.checkpoint = str(make_tiny_bert(tmp_path / "bert"))
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "config.json").write_text(json.dumps(c.to_dict()))
  for workdir, message in ((tmp_path / "run", "holds a classification run"),
                           (tmp_path, "no config.json in workdir")):
    done = subprocess.run([sys.executable, "-m", "ftjax.code_eval", "--workdir", str(workdir)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stderr
    errors = [l for l in done.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr
  assert not list((tmp_path / "run").glob("humaneval_*"))
