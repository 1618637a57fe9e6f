"""End to end: `python -m ftjax.main` on a tiny random BERT and tiny local JSONL files."""

import json
import os
import subprocess
import sys

import pytest

import run_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(workdir, *overrides, config="configs/classify_files.py", cache=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if cache:
    env["FTJAX_CACHE"] = str(cache)
  cmd = [sys.executable, "-m", "ftjax.main", f"--config={config}", f"--workdir={workdir}", *overrides]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def tiny_overrides(model_dir, files, steps=6):
  return [f"--config.model.checkpoint={model_dir}",
          f"--config.data.files.train={files['train']}",
          f"--config.data.files.validation={files['validation']}",
          "--config.data.max_length=16", "--config.data.bucket_boundaries=(8,16)",
          f"--config.train.steps={steps}", "--config.train.batch_size=8",
          "--config.train.log_every_steps=2", "--config.eval.every_steps=3",
          "--config.eval.batch_size=16", "--config.checkpoint.every_steps=3",
          "--config.optimizer.lr=1e-3"]


def test_main_writes_the_workdir_contract_and_resumes(tmp_path, tiny_bert_dir, tiny_sentiment_files):
  workdir = tmp_path / "run"
  args = tiny_overrides(tiny_bert_dir, tiny_sentiment_files) + [
      "--config.logging.wandb=True", "--config.logging.wandb_mode=offline"]
  result = run_main(workdir, *args, cache=tmp_path / "cache")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "trainable parameters" in result.stdout

  config = json.loads((workdir / "config.json").read_text())
  assert config["train"]["steps"] == 6 and config["model"]["checkpoint"] == str(tiny_bert_dir)

  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if r["split"] == "train"]
  evals = [r for r in records if r["split"] == "eval"]
  assert [r["step"] for r in train] == [2, 4, 6]
  assert [r["step"] for r in evals] == [0, 3, 6]
  for r in train:
    assert {"loss", "lr", "grad_norm", "examples_per_sec", "tokens_per_sec"} <= set(r)
  for r in evals:
    assert {"loss", "accuracy", "num_examples"} <= set(r) and r["num_examples"] == 40

  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]
  assert list(workdir.glob("events.out.tfevents.*")), "no TensorBoard event file"

  summary = json.loads((workdir / "summary.json").read_text())
  for key in ("final_eval", "best_eval", "best_step", "steps", "examples_per_sec", "tokens_per_sec",
              "wall_time_sec", "initial_eval", "params"):
    assert key in summary, key
  assert summary["steps"] == 6 and summary["final_eval"]["step"] == 6
  assert summary["params"]["trainable"] == summary["params"]["total"]
  check_trackers(workdir, records, summary)

  # The same command again resumes at the last checkpoint: nothing left to train, records kept.
  again = run_main(workdir, *args, cache=tmp_path / "cache")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resumed from step 6" in again.stdout
  records_again = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r for r in records_again if r["split"] != "test"] == [r for r in records if r["split"] != "test"]
  # Both invocations are one W&B run (same id, nothing sent twice) and two TensorBoard sessions.
  runs = sorted((workdir / "wandb").glob("offline-run-*"))  # offline-run-TIME-ID[-1]
  wandb_id = json.loads((workdir / "wandb_run.json").read_text())["id"]
  assert len(runs) == 2 and all(f"-{wandb_id}" in r.name for r in runs), runs
  resumed_steps = {row["_step"] for row in run_records.wandb_history(runs[-1])}
  assert resumed_steps == {6}, resumed_steps  # the test row (evaluated again) and the plots
  assert [kind for kind, _ in run_records.hparams_sessions(workdir)] == ["start", "end"] * 2


def check_trackers(workdir, records, summary):
  """TensorBoard got the config as hyperparameters; W&B (offline) the config, the same rows,
  the summary and the report's plots, and ended the run with exit code 0."""
  (start, end), = [tuple(x for _, x in run_records.hparams_sessions(workdir))]
  assert start.hparams["optimizer.lr"].number_value == pytest.approx(1e-3)
  assert start.hparams["method.name"].string_value == "full"
  assert start.hparams["data.bucket_boundaries"].string_value == "[8, 16]"
  assert end.status == 1  # STATUS_SUCCESS
  tb_loss = {e.step: v.simple_value for e in run_records.tensorboard_events(workdir)
             for v in e.summary.value if v.tag == "train/loss"}
  assert tb_loss == pytest.approx({r["step"]: r["loss"] for r in records if r["split"] == "train"})

  (run_dir,) = (workdir / "wandb").glob("offline-run-*")
  wandb_id = json.loads((workdir / "wandb_run.json").read_text())["id"]
  assert run_dir.name.endswith(wandb_id)
  logs = run_records.wandb_records(run_dir)
  (run,) = [r.run for r in logs if r.WhichOneof("record_type") == "run"]
  config = {item.key: json.loads(item.value_json) for item in run.config.update}
  assert config["optimizer"]["lr"] == 1e-3 and config["train"]["steps"] == 6
  history = run_records.wandb_history(run_dir)
  for split, key in (("train", "loss"), ("eval", "accuracy"), ("test", "accuracy")):
    sent = {row["_step"]: row[f"{split}/{key}"] for row in history if f"{split}/{key}" in row}
    assert sent == pytest.approx({r["step"]: r[key] for r in records if r["split"] == split}), split
  plots = {k for row in history for k, v in row.items() if k.startswith("report/")}
  assert {"report/loss", "report/metrics"} <= plots
  assert all(row[k]["_type"] == "image-file" for row in history for k in row if k in plots)
  final = run_records.wandb_summary(run_dir)
  assert final["best_eval/accuracy"] == pytest.approx(summary["best_eval"]["accuracy"])
  assert final["steps"] == 6 and final["params/trainable"] == summary["params"]["trainable"]
  (exit_record,) = [r.exit for r in logs if r.WhichOneof("record_type") == "exit"]
  assert exit_record.exit_code == 0


@pytest.mark.parametrize("overrides, culprit", [
    (["--config.optimizer.lrr=1"], "optimizer.lr"),
    (["--config.model.checkpoint=/does/not/exist"], "/does/not/exist"),
    (["--config.method.name=nope"], "method.name"),
])
def test_user_errors_exit_2_with_one_error_line(tmp_path, tiny_bert_dir, tiny_sentiment_files, overrides, culprit):
  args = tiny_overrides(tiny_bert_dir, tiny_sentiment_files) + overrides
  result = run_main(tmp_path / "run", *args, cache=tmp_path / "cache")
  assert result.returncode == 2, result.stderr[-2000:]
  error_lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(error_lines) == 1 and culprit in error_lines[0], result.stderr[-2000:]
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_config_file_exits_2(tmp_path):
  result = run_main(tmp_path / "run", config="configs/nope.py")
  assert result.returncode == 2
  assert "configs/nope.py" in result.stderr
