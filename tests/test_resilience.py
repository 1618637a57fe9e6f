"""Never lose a run: SIGKILL/SIGTERM at any point, corrupt checkpoints, NaNs, early stopping, locks."""

import json
import re
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ftjax import train
from ftjax.errors import RunError, UserError
from ftjax.tasks import classification
from ftjax.workdir_lock import WorkdirLock
import run_records
from test_train import tiny_config
from tiny_assets import make_sentiment_rows, write_jsonl

REPO = pathlib.Path(__file__).resolve().parents[1]


def final_params(workdir: pathlib.Path, step: int):
  mngr = ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "data"))
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  mngr.close()
  return state["params"]


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def cli_args(model_dir, files, workdir, steps=12):
  return [sys.executable, "-m", "ftjax.main", "--config=configs/classify_files.py", f"--workdir={workdir}",
          f"--config.model.checkpoint={model_dir}", f"--config.data.files.train={files['train']}",
          f"--config.data.files.validation={files['validation']}", "--config.data.max_length=16",
          "--config.data.bucket_boundaries=(8,16)", f"--config.train.steps={steps}",
          "--config.train.batch_size=8", "--config.train.log_every_steps=1", "--config.eval.every_steps=4",
          "--config.eval.batch_size=16", "--config.checkpoint.every_steps=2", "--config.checkpoint.keep=3",
          "--config.optimizer.lr=1e-3"]


def start(args, **kw):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **kw)


def wait_for(predicate, proc, timeout=120):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.005)
  raise TimeoutError


def train_steps_logged(workdir):
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return 0
  steps = [json.loads(l)["step"] for l in path.read_text().splitlines() if '"train"' in l]
  return max(steps, default=0)


def saving_now(workdir):
  ckpt = workdir / "checkpoints"
  return ckpt.exists() and any("tmp" in p.name for p in ckpt.iterdir())


def test_sigkill_anywhere_then_rerun_gives_bit_identical_params(tmp_path, tiny_bert_dir, tiny_sentiment_files):
  straight = tmp_path / "straight"
  done = subprocess.run(cli_args(tiny_bert_dir, tiny_sentiment_files, straight), cwd=REPO,
                        capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert done.returncode == 0, done.stderr[-2000:]

  killed = tmp_path / "killed"
  kill_points = [lambda: train_steps_logged(killed) >= 3,      # between checkpoints
                 lambda: saving_now(killed),                   # during an asynchronous save
                 lambda: train_steps_logged(killed) >= 9]      # late, after several saves
  for point in kill_points:
    proc = start(cli_args(tiny_bert_dir, tiny_sentiment_files, killed))
    reached = wait_for(point, proc)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    assert reached or proc.returncode == 0, out[-3000:]
  final = subprocess.run(cli_args(tiny_bert_dir, tiny_sentiment_files, killed), cwd=REPO,
                         capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert final.returncode == 0, final.stderr[-2000:]
  assert_trees_equal(final_params(straight, 12), final_params(killed, 12))
  # The metrics log has no duplicated or missing steps after the kills.
  steps = [json.loads(l)["step"] for l in (killed / "metrics.jsonl").read_text().splitlines()
           if '"train"' in l]
  assert steps == list(range(1, 13))


def test_sigterm_saves_and_exits_0_then_resumes(tmp_path, tiny_bert_dir, tiny_sentiment_files):
  workdir = tmp_path / "run"
  args = cli_args(tiny_bert_dir, tiny_sentiment_files, workdir, steps=400) + [
      "--config.logging.wandb=True", "--config.logging.wandb_mode=offline"]
  proc = start(args)
  assert wait_for(lambda: train_steps_logged(workdir) >= 3, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 0, out[-2000:]
  assert "preempted" in out
  saved = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert saved >= 3 and saved == train_steps_logged(workdir)
  again = subprocess.run(args + ["--config.train.steps=" + str(saved + 2)], cwd=REPO,
                         capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert again.returncode == 0, again.stderr[-2000:]
  assert f"resumed from step {saved}" in again.stdout
  # The trackers: W&B marked the first invocation preempting (exit code 1, so it is requeued,
  # not finished) and the second finished the same run; TensorBoard's first session stayed open.
  first, second = (run_records.wandb_records(d) for d in sorted((workdir / "wandb").glob("offline-run-*")))
  kinds = [r.WhichOneof("record_type") for r in first]
  assert "preempting" in kinds and [r.exit.exit_code for r in first if r.exit.ByteSize()] == [1]
  assert [r.exit.exit_code for r in second if r.WhichOneof("record_type") == "exit"] == [0]
  resumed = [r.history for r in second if r.WhichOneof("record_type") == "history"]
  assert resumed and all(h.step.num > saved for h in resumed)
  assert [kind for kind, _ in run_records.hparams_sessions(workdir)] == ["start", "start", "end"]


def test_corrupt_latest_checkpoint_errors_or_falls_back(tmp_path, tiny_bert_dir, tiny_sentiment_files):
  cfg = tiny_config(tiny_bert_dir, tiny_sentiment_files)
  workdir = tmp_path / "run"
  train.train_and_evaluate(cfg, str(workdir))  # checkpoints at 3 and 6
  # Truncate every data file of the latest step.
  for f in (workdir / "checkpoints" / "6" / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  with cfg.unlocked():
    cfg.train.steps = 9
  with pytest.raises(UserError, match=r"checkpoint step 6 .* unreadable.*on_corrupt=previous"):
    train.train_and_evaluate(cfg, str(workdir))
  with cfg.unlocked():
    cfg.checkpoint.on_corrupt = "previous"
  summary = train.train_and_evaluate(cfg, str(workdir))
  assert summary["resumed_from_step"] == 3 and summary["steps"] == 9



def test_changed_config_is_a_mismatch_not_a_corrupt_checkpoint(tmp_path, tiny_bert_dir,
                                                               tiny_sentiment_files):
  # A good checkpoint that no longer fits (the LoRA rank changed) must never be set aside, even
  # with on_corrupt=previous: that would silently restart the run from an older step or scratch.
  cfg = tiny_config(tiny_bert_dir, tiny_sentiment_files, steps=3, method="lora")
  workdir = tmp_path / "run"
  train.train_and_evaluate(cfg, str(workdir))  # checkpoint at 3
  listing = lambda: sorted(str(p.relative_to(workdir)) for p in (workdir / "checkpoints").rglob("*"))
  before = listing()
  with cfg.unlocked():
    cfg.method.lora.rank *= 2
    cfg.checkpoint.on_corrupt = "previous"
    cfg.train.steps = 6
  with pytest.raises(UserError, match=r"checkpoint step 3 .* does not fit this run: '.*lora.*' "
                                      r"has shape \(.*\) in the checkpoint and shape \(.*\) in this run"):
    train.train_and_evaluate(cfg, str(workdir))
  assert listing() == before

def test_early_stopping_and_best_checkpoint(tmp_path, tiny_bert_dir, tiny_sentiment_files):
  cfg = tiny_config(tiny_bert_dir, tiny_sentiment_files, steps=30)
  with cfg.unlocked():
    cfg.optimizer.lr = 1e-9  # nothing improves: stop after `patience` evals
    cfg.eval.every_steps = 2
    cfg.eval.patience = 2
    cfg.eval.metric = "loss"
    cfg.eval.mode = "min"
    cfg.eval.min_delta = 1e-3
  summary = train.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert summary["stop_reason"] == "early_stopping"
  assert summary["best_step"] == 0 and summary["steps"] == 4
  exp = train.build_experiment(cfg)
  best, step = train.restore_state(exp, tmp_path / "run", "best")
  assert step == 0
  assert_trees_equal(best.params, exp.state.params)


def poisoned_files(tmp_path, files):
  """Training data with one row whose token makes the loss NaN (see `nan_on_poison`)."""
  rows = make_sentiment_rows(96, seed=0)
  rows[5]["text"] = "plot plot plot plot plot plot plot"
  return {"train": write_jsonl(tmp_path / "poisoned.jsonl", rows), "validation": files["validation"]}


@pytest.fixture
def nan_on_poison(monkeypatch):
  original = classification.train_loss

  def poisoned(model, batch, rngs):
    loss, aux = original(model, batch, rngs)
    plot_id = 20  # 'plot' in tiny_assets' vocabulary
    poison = jnp.any(jnp.sum(batch["input_ids"] == plot_id, axis=1) >= 6)
    return jnp.where(poison, jnp.nan, loss), aux

  monkeypatch.setattr(classification, "train_loss", poisoned)


def test_nan_halts_with_step_and_keeps_params_finite(tmp_path, tiny_bert_dir, tiny_sentiment_files, nan_on_poison):
  cfg = tiny_config(tiny_bert_dir, poisoned_files(tmp_path, tiny_sentiment_files), steps=24)
  cfg.logging.wandb, cfg.logging.wandb_mode = True, "offline"
  with pytest.raises(RunError, match=r"non-finite loss or gradients at step \d+"):
    train.train_and_evaluate(cfg, str(tmp_path / "halt"))
  steps = sorted(int(p.name) for p in (tmp_path / "halt" / "checkpoints").iterdir() if p.name.isdigit())
  for leaf in jax.tree.leaves(final_params(tmp_path / "halt", steps[-1])):
    assert np.isfinite(np.asarray(leaf)).all()
  # The error ended the trackers' run as failed: TensorBoard's session and W&B's exit code.
  kind, info = run_records.hparams_sessions(tmp_path / "halt")[-1]
  assert kind == "end" and info.status == 2  # STATUS_FAILURE
  (run_dir,) = (tmp_path / "halt" / "wandb").glob("offline-run-*")
  assert [r.exit.exit_code for r in run_records.wandb_records(run_dir) if r.exit.ByteSize()] == [1]


def test_nan_skip_counts_and_continues(tmp_path, tiny_bert_dir, tiny_sentiment_files, nan_on_poison):
  cfg = tiny_config(tiny_bert_dir, poisoned_files(tmp_path, tiny_sentiment_files), steps=24)
  with cfg.unlocked():
    cfg.train.on_nan = "skip"
  summary = train.train_and_evaluate(cfg, str(tmp_path / "skip"))
  assert summary["steps"] == 24 and summary["nonfinite_skipped"] == 2  # one poisoned batch per epoch
  for leaf in jax.tree.leaves(final_params(tmp_path / "skip", 24)):
    assert np.isfinite(np.asarray(leaf)).all()


def test_second_writer_gets_a_clear_error(tmp_path, tiny_bert_dir, tiny_sentiment_files):
  workdir = tmp_path / "run"
  workdir.mkdir()
  with WorkdirLock(workdir):
    result = subprocess.run(cli_args(tiny_bert_dir, tiny_sentiment_files, workdir), cwd=REPO,
                            capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 2
  assert f"in use by another ftjax run (pid {os.getpid()}" in result.stderr
  assert not (workdir / "checkpoints").exists()


def test_lock_names_holder_and_dies_with_a_killed_holder(tmp_path):
  # A holder in another process, SIGKILLed while holding: the next run gets the lock (no stale
  # lock), and while it lived a second lock named its pid and host.
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from ftjax.workdir_lock import WorkdirLock; "
       f"lock = WorkdirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
      cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=rf"in use by another ftjax run \(pid {holder.pid} on host "
                                        rf"{socket.gethostname()}\)"):
      WorkdirLock(tmp_path).acquire()
  finally:
    holder.kill()
    holder.wait()
  with WorkdirLock(tmp_path):  # acquired at once: SIGKILL released the dead run's lock
    with pytest.raises(UserError, match=rf"\(pid {os.getpid()} "):
      WorkdirLock(tmp_path).acquire()
  WorkdirLock(tmp_path).acquire().release()  # released on exit


def test_lock_is_skipped_with_a_warning_where_the_filesystem_has_none(tmp_path, monkeypatch, caplog):
  import errno
  import fcntl

  def no_flock(fd, operation):
    raise OSError(errno.ENOSYS, "Function not implemented")

  monkeypatch.setattr(fcntl, "flock", no_flock)
  with caplog.at_level("WARNING", logger="ftjax"):
    with WorkdirLock(tmp_path), WorkdirLock(tmp_path):  # neither locks, neither fails
      pass
  assert "not guarding against concurrent runs" in caplog.text
  assert not (tmp_path / ".ftjax.lock.holder").exists()


def test_test_split_uses_the_best_checkpoint_with_frozen_params(tmp_path, tiny_bert_dir, tiny_sentiment_files):
  # A method with frozen parameters whose best step is not the last: the test split is scored
  # on the best checkpoint's parameters combined with the (donated, then live) frozen ones.
  cfg = tiny_config(tiny_bert_dir, tiny_sentiment_files, method="linear_probe")
  with cfg.unlocked():
    cfg.data.files.test = str(tiny_sentiment_files["validation"])
    cfg.data.test_split = "test"
    cfg.optimizer.lr = 1e-9  # accuracy never strictly improves: the best step stays 0
  summary = train.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert summary["best_step"] == 0 and summary["test_step"] == 0 and summary["steps"] == 6
  assert summary["test"]["accuracy"] == summary["initial_eval"]["accuracy"]


def test_checkpoints_hold_what_changes_and_refuse_another_base(tmp_path, tiny_bert_dir,
                                                               tiny_sentiment_files):
  """A LoRA checkpoint leaves the frozen base out and records its fingerprint; a resume on a
  base whose weights changed is an error naming both, unless checkpoint.accept_base_change."""
  import shutil
  from ftjax.weights import safetensors_io

  cfg = tiny_config(tiny_bert_dir, tiny_sentiment_files, steps=3, method="lora")
  workdir = tmp_path / "run"
  train.train_and_evaluate(cfg, str(workdir))  # checkpoint at 3
  mngr = ocp.CheckpointManager(workdir / "checkpoints", item_handlers={
      "state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()})
  saved = mngr.item_metadata(3)["state"]
  data = mngr.restore(3, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]
  mngr.close()
  tree = getattr(saved, "tree", saved)
  assert tree["frozen"] == {} and tree["params"], "frozen variables were checkpointed"
  assert data["base"]["files"]["model.safetensors"]["size"] > 0

  changed = tmp_path / "changed_base"
  shutil.copytree(tiny_bert_dir, changed)
  tensors = safetensors_io.read_safetensors_dir(changed)
  name = sorted(tensors)[0]
  tensors[name] = tensors[name] + np.float32(1e-3)  # same shapes, other weights
  safetensors_io.write_safetensors(tensors, changed / "model.safetensors")
  with cfg.unlocked():
    cfg.model.checkpoint = str(changed)
    cfg.train.steps = 6
  with pytest.raises(UserError, match=r"the base checkpoint changed since checkpoint step 3 .*: "
                                      r"it was .*tiny_bert.* digest \w+\), it is now .*changed_base"):
    train.train_and_evaluate(cfg, str(workdir))
  with cfg.unlocked():
    cfg.checkpoint.accept_base_change = True
  assert train.train_and_evaluate(cfg, str(workdir))["resumed_from_step"] == 3


def test_sigkill_then_rerun_rebuilds_the_frozen_base_bit_identically(
    tmp_path, tiny_bert_dir, tiny_sentiment_files, method="qlora"):
  """QLoRA (LoRA's frozen-base path plus requantization; plain LoRA's in-process resume is
  test_train's and test_construct's): the checkpoint holds the adapter and optimizer state only; a run killed
  between checkpoints and rerun (the base rebuilt from model.checkpoint, QLoRA's codes
  requantized) ends with the uninterrupted run's trainable params bit for bit."""
  extra = [f"--config.method.name={method}", "--config.method.qlora.block_size=16"]
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  done = subprocess.run(cli_args(tiny_bert_dir, tiny_sentiment_files, straight, steps=8) + extra,
                        cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert done.returncode == 0, done.stderr[-2000:]
  proc = start(cli_args(tiny_bert_dir, tiny_sentiment_files, killed, steps=8) + extra)
  reached = wait_for(lambda: train_steps_logged(killed) >= 5, proc)
  proc.send_signal(signal.SIGKILL)
  out, _ = proc.communicate()
  assert reached, out[-3000:]
  final = subprocess.run(cli_args(tiny_bert_dir, tiny_sentiment_files, killed, steps=8) + extra,
                         cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert final.returncode == 0, final.stderr[-2000:]
  assert re.search(r"resumed from step [24]\b", final.stdout), final.stdout[-2000:]
  assert_trees_equal(final_params(straight, 8), final_params(killed, 8))
