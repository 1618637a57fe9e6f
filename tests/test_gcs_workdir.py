"""A training run with a `gs://` workdir, on the local GCS emulator: it ends bit-identical to the
same run on a local workdir (params, every metrics.jsonl row), and evaluates and exports from
there; a missing bucket is one `error:` line, and so is `gs://` without gcsfs.

Resuming a `gs://` run killed with SIGKILL is checked by `tests/gcs_resume_check.py`, which is
kept out of the suite: it failed 2 of ~10 runs with an Orbax error while listing the killed run's
steps on the emulator (cause not found yet; see experiments/scale/README.md)."""

import importlib.util
import json
import os
import subprocess
import uuid

import jax
import orbax.checkpoint as ocp
from etils import epath
from etils.epath import backend as epath_backend
import pytest

from ftjax import evaluate, export, paths
from ftjax.errors import UserError
from ftjax.metric_writers import append_text
from gcs_emulator import gcs_bucket  # noqa: F401  (the fixture)
from test_resilience import REPO, assert_trees_equal, cli_args

STEPS = 16
EVERY = 2  # test_resilience's checkpoint cadence (and evals every 4)
# Throughput differs between any two runs; everything else in a row must not.
_TIMINGS = ("examples_per_sec", "tokens_per_sec")


def _errors(text: str) -> str:
  """A failed run's exception lines (tracebacks' last lines), then its tail."""
  lines = [l for l in text.splitlines() if "Error" in l and not l.startswith(" ")]
  return "\n".join(lines[-10:]) + "\n...\n" + text[-2000:]


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def _state(workdir: epath.Path, step: int, like=None):
  """A checkpoint's train state; on `gs://` restored onto `like`'s shardings (the emulator cannot
  serve a restore without a target, see experiments/scale/README.md)."""
  mngr = ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "data"))
  target = None if like is None else jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
  mngr.close()
  return state


def _rows(workdir: epath.Path) -> list[dict]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in r.items() if k not in _TIMINGS} for r in rows]


def _committed_steps(checkpoints: epath.Path) -> list[int]:
  """Steps Orbax has committed on `gs://` (a `commit_success.txt` marker instead of a rename)."""
  epath_backend.fsspec_backend.fs(checkpoints).invalidate_cache()  # gcsfs caches listings
  return [s for s in range(EVERY, STEPS + 1, EVERY)
          if (checkpoints / str(s) / "commit_success.txt").exists()]


def local_run_and_gs_workdir(bucket, tmp_path, model, files):
  """(the workdir of a finished local run of STEPS steps, a fresh workdir in `bucket`)."""
  local = tmp_path / "local"
  done = subprocess.run(cli_args(model, files, local, steps=STEPS), cwd=REPO,
                        capture_output=True, text=True, env=_env())
  assert done.returncode == 0, _errors(done.stderr)
  return local, epath.Path(f"{bucket}/run-{uuid.uuid4().hex[:8]}")


def test_gs_workdir_run_equals_a_local_run(gcs_bucket, tmp_path, tiny_bert_dir,  # noqa: F811
                                           tiny_sentiment_files):
  local, workdir = local_run_and_gs_workdir(gcs_bucket, tmp_path, tiny_bert_dir,
                                            tiny_sentiment_files)
  run = subprocess.run(cli_args(tiny_bert_dir, tiny_sentiment_files, workdir, steps=STEPS), cwd=REPO,
                       capture_output=True, text=True, env=_env())
  assert run.returncode == 0, _errors(run.stderr)
  assert _committed_steps(workdir / "checkpoints")  # Orbax's commit markers, in the bucket

  want = _state(epath.Path(local), STEPS)
  assert_trees_equal(want["params"], _state(workdir, STEPS, like=want)["params"])
  assert _rows(workdir) == _rows(epath.Path(local))  # metrics.jsonl rewritten per flush
  # The end-of-run files and TensorBoard's events landed in the bucket; no lock object did.
  names = {p.name for p in workdir.iterdir()}
  assert {"config.json", "summary.json", "report.md", "report_loss.png"} <= names, names
  assert any(n.startswith("events.out.tfevents") for n in names), names
  assert ".ftjax.lock" not in names
  assert "object store, which has no locks" in run.stdout + run.stderr
  # Evaluate and export read the run's config.json and checkpoint from the bucket; evaluate
  # writes its JSON there, export's output stays local.
  path, result = evaluate.run(export.load_workdir_config(workdir), str(workdir), "latest")
  assert str(path) == f"{workdir}/eval_validation_latest.json" and result["step"] == STEPS
  assert json.loads(path.read_text())["accuracy"] == result["accuracy"]
  out = export.export(str(workdir), str(tmp_path / "hf"), "hf")
  assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
  with pytest.raises(UserError, match=r"--out 'gs://.*' must be a local directory"):
    export.export(str(workdir), f"{workdir}/hf", "hf")


def test_workdir_in_a_missing_bucket_is_one_error_line(gcs_bucket, tiny_bert_dir,  # noqa: F811
                                                       tiny_sentiment_files):
  workdir = f"gs://no-such-bucket-{uuid.uuid4().hex[:8]}/run"
  result = subprocess.run(cli_args(tiny_bert_dir, tiny_sentiment_files, workdir), cwd=REPO,
                          capture_output=True, text=True, env=_env(), timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert errors == [f"error: workdir '{workdir}' is not writable: no such bucket"], result.stderr[-2000:]


def test_appending_on_gs_rewrites_the_object(gcs_bucket):  # noqa: F811
  # gcsfs opens mode "a" as "w" (experiments/scale/README.md): samples.jsonl appends by rewriting.
  path = epath.Path(f"{gcs_bucket}/append-{uuid.uuid4().hex[:8]}/samples.jsonl")
  append_text(path, "one\n")
  append_text(path, "two\n")
  assert path.read_text() == "one\ntwo\n"


def test_gs_without_gcsfs_names_the_extra(monkeypatch):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "gcsfs" else find_spec(name, *a))
  with pytest.raises(UserError, match=r"^'gs://b/run' needs gcsfs: pip install 'ftjax\[gcs\]'$"):
    paths.as_path("gs://b/run")
  assert paths.as_path("~/run") == epath.Path(os.path.expanduser("~/run"))
