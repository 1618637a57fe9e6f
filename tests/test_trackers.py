"""The trackers in-process: ftjax.wandb_run offline (one W&B run across invocations of a workdir,
the rows an exact resume produces again not sent twice, a clear error without the package) and
TensorBoard as an optional mirror of metrics.jsonl. End to end: tests/test_main.py (a run and its
resume), tests/test_resilience.py (preempted, failed)."""

import json
import sys

import pytest
from etils import epath

import run_records
from ftjax import metric_writers, wandb_run
from ftjax.config import base_config
from ftjax.errors import UserError


def options():
  logging = base_config().logging
  logging.wandb, logging.wandb_mode = True, "offline"
  return logging


def test_resumed_invocation_continues_the_run_and_skips_rows_already_sent(tmp_path):
  workdir = epath.Path(tmp_path)
  first = wandb_run.WandbRun(workdir, options(), {"optimizer": {"lr": 1e-3}})
  for step in range(1, 6):
    first.log(step, "train", {"loss": 1.0 / step, "note": "not a number"})
  first.finish(None, {}, status="failed")  # e.g. killed after step 5, checkpoint at step 2

  second = wandb_run.WandbRun(workdir, options(), {"optimizer": {"lr": 1e-3}})
  for step in range(3, 8):  # the exact resume from step 2 produces rows 3.. again
    second.log(step, "train", {"loss": 1.0 / step})
  second.finish({"best_eval": {"accuracy": 0.5, "step": 7}, "test": None}, {}, status="completed")

  first_dir, second_dir = sorted((tmp_path / "wandb").glob("offline-run-*"))
  run_id = json.loads((tmp_path / wandb_run.RUN_FILE).read_text())["id"]
  assert first_dir.name.endswith(run_id) and run_id in second_dir.name
  assert [r["_step"] for r in run_records.wandb_history(first_dir)] == [1, 2, 3, 4, 5]
  assert all(set(r) >= {"train/loss"} and "train/note" not in r
             for r in run_records.wandb_history(first_dir))
  assert [r["_step"] for r in run_records.wandb_history(second_dir)] == [5, 6, 7]
  summary = run_records.wandb_summary(second_dir)
  assert summary["best_eval/accuracy"] == 0.5 and "test" not in summary


def test_flatten():
  assert wandb_run.flatten({"a": {"b": 1, "c": None}, "d": 2}) == {"a/b": 1, "d": 2}
  assert wandb_run.flatten({"a": {"b": 1}}, ".") == {"a.b": 1}


def test_missing_package_is_one_clear_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
  with pytest.raises(UserError, match=r"logging.wandb=True needs the wandb package: pip install 'ftjax\[wandb\]'"):
    wandb_run.WandbRun(epath.Path(tmp_path), options(), {})
  assert not (tmp_path / wandb_run.RUN_FILE).exists()


def test_config_check_names_the_key_when_the_package_is_missing(monkeypatch):
  from ftjax import config as config_lib  # pylint: disable=g-import-not-at-top
  real = config_lib.importlib.util.find_spec
  monkeypatch.setattr(config_lib.importlib.util, "find_spec",
                      lambda name, *a: None if name == "wandb" else real(name, *a))
  cfg = base_config()
  cfg.model.checkpoint = "/some/model"
  cfg.logging.wandb = True
  with pytest.raises(UserError, match=r"logging.wandb.*pip install 'ftjax\[wandb\]'"):
    config_lib.validate(cfg)


def test_without_tensorboardx_a_run_says_so_once_and_keeps_metrics_jsonl(tmp_path, monkeypatch, capsys):
  real = metric_writers.importlib.util.find_spec
  monkeypatch.setattr(metric_writers.importlib.util, "find_spec",
                      lambda name, *a: None if name == "tensorboardX" else real(name, *a))
  with metric_writers.MetricWriter(tmp_path, base_config().logging, {"seed": 0}) as writer:
    writer.write(1, "train", {"loss": 0.5})
    writer.write(2, "train", {"loss": 0.25})
    writer.finish(None, {}, status="completed")
  assert capsys.readouterr().out.count("no TensorBoard events: tensorboardX is not installed") == 1
  assert not list(tmp_path.glob("events.out.tfevents.*"))
  assert [r["loss"] for r in metric_writers.read_metrics(tmp_path)] == [0.5, 0.25]
