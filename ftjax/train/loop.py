"""The train-and-evaluate loop: resume, steps, logging, evaluations, checkpoints, early stopping,
preemption, the test split on the best checkpoint, and the end-of-run files."""

from __future__ import annotations

import contextlib
import os
import time

from etils import epath
import jax
import numpy as np

from ftjax import checkpoint as ckpt_lib
from ftjax import samples, sharding
from ftjax.config import ConfigDict
from ftjax.data.tokenization import load_tokenizer
from ftjax.early_stopping import EarlyStopping
from ftjax.errors import RunError, UserError
from ftjax.metric_writers import MetricWriter, write_json
from ftjax.paths import as_path, is_local
from ftjax.preemption import PreemptionGuard
from ftjax.progress import Progress
from ftjax.reports import data_quality, eval_results, run_report
from ftjax.train.restore import check_base, checkpointed, model_from_state, restore_state
from ftjax.train.state import load_experiment, local_batch_size, plan_experiment
from ftjax.train import batches, memory_plan
from ftjax.train.steps import Evaluator
from ftjax.workdir_lock import WorkdirLock


def _prepare_workdir(workdir: str) -> epath.Path:
  path = as_path(workdir)
  # An object store's client raises its own errors too (credentials, HTTP); each is the workdir's.
  errors = OSError if is_local(path) else Exception
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_test.{os.getpid()}"  # per process: several may share a workdir
    probe.write_text("")
    probe.unlink()
  except errors as e:
    raise UserError(f"workdir '{workdir}' is not writable: {_why(e)}") from None
  return path


def _why(e: Exception) -> str:
  if getattr(e, "strerror", None):
    return e.strerror
  if isinstance(e, FileNotFoundError):  # gcsfs: an upload into a bucket that is not there
    return "no such bucket"
  return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def _loop_state(iterator_state, window: list[dict], evals: list[dict], base: dict | None) -> dict:
  """The loop's host state for a checkpoint's `data` item: the data position, the open logging
  window's per-step metrics (values by key with their dtype, so a resumed row's means are
  bit-identical), the eval records so far (early stopping resumes alike on every process) and the
  base checkpoint's fingerprint (the frozen variables are rebuilt from it, `restore.checkpointed`)."""
  columns = {k: {"dtype": str(np.asarray(window[0][k]).dtype),
                 "values": [np.asarray(m[k]).item() for m in window]}
             for k in (window[0] if window else ())}
  return {"iterator": iterator_state, "log_window": columns, "evals": evals, "base": base}


def _read_loop_state(loop_state: dict | None):
  """(iterator state, logging window, eval records or None) of a checkpoint's `data` item;
  checkpoints written before the loop state was saved hold the iterator state alone."""
  if not loop_state or "iterator" not in loop_state:
    return loop_state, [], None
  values = {k: np.asarray(c["values"], dtype=c["dtype"])
            for k, c in (loop_state.get("log_window") or {}).items()}
  steps = len(next(iter(values.values()))) if values else 0
  window = [{k: v[i] for k, v in values.items()} for i in range(steps)]
  return loop_state["iterator"], window, loop_state.get("evals")


def _scalars(metrics: dict) -> dict:
  return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _headline(task, metrics: dict) -> str:
  return ", ".join(f"{k} {metrics[k]:.4f}" for k in task.HEADLINE_METRICS if k in metrics)


def train_and_evaluate(cfg: ConfigDict, workdir: str) -> dict:
  """Trains and evaluates; rerun on the same workdir to resume. Returns the summary."""
  workdir = _prepare_workdir(workdir)
  lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
  if lock:
    lock.acquire()
  try:
    with contextlib.ExitStack() as stack:  # the metric writer's, so an error ends its tracking
      return _train_and_evaluate(cfg, workdir, stack)
  finally:
    if lock:
      lock.release()


def _train_and_evaluate(cfg: ConfigDict, workdir: epath.Path, stack: contextlib.ExitStack) -> dict:
  wall_start = time.time()
  is_main = jax.process_index() == 0
  exp = plan_experiment(cfg)  # every input is checked before anything is written or read
  # The step compiled once ahead of time, on the planned state, for the largest batch: its
  # memory per device is printed and checked against the device's (where the backend reports
  # it) before any weight is read, and the executable serves every batch of that shape; other
  # shapes (smaller buckets) compile as usual.
  jitted_step = memory_plan.jit_train_step(exp)
  planned_step, planned_shapes, plan = memory_plan.compile_step(exp, jitted_step)
  if is_main:
    print("ftjax: " + memory_plan.report(plan).replace("\n", "\nftjax: "), flush=True)
  memory_plan.check_fits(plan)
  eval_results.configure(exp)
  if is_main:
    write_json(workdir / "config.json", cfg.to_dict())
    if not (workdir / data_quality.JSON_FILE).exists():
      data_quality.write(workdir, exp.dataset, load_tokenizer(exp.model_path), cfg)
  exp = load_experiment(exp)
  print(f"ftjax: method {cfg.method.name}, trainable parameters "
        f"{exp.param_counts['trainable']:,} / {exp.param_counts['total']:,} "
        f"({100 * exp.param_counts['trainable'] / max(exp.param_counts['total'], 1):.3f}%)", flush=True)
  if jax.process_count() > 1:  # each process reads only the slices its devices hold
    print(f"ftjax: process {jax.process_index()} read {exp.checkpoint_bytes_read:,} bytes of the "
          f"base checkpoint", flush=True)
  print(f"ftjax: data '{cfg.data.name}': {exp.dataset.split_sizes}"
        + (f", duplicates removed: {exp.dataset.duplicates_removed}"
           if getattr(exp.dataset, "duplicates_removed", None) else ""), flush=True)

  batch_size = local_batch_size(cfg.train.batch_size, exp.mesh, cfg.train.grad_accum_steps)
  train_iter = exp.dataset.train_iterator(batch_size, seed=cfg.seed,
                                          shard_index=jax.process_index(),
                                          shard_count=jax.process_count())
  source = batches.batch_source(exp, train_iter)  # the data, or the objective's rollouts
  checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", every_steps=cfg.checkpoint.every_steps,
                                       keep=cfg.checkpoint.keep)
  best_checkpointer = None
  if cfg.checkpoint.keep_best:
    best_checkpointer = ckpt_lib.BestCheckpointer(
        workdir / "checkpoints" / ckpt_lib.BEST_DIR, metric=cfg.eval.metric, mode=cfg.eval.mode,
        keep=cfg.checkpoint.keep_best)
  writer = stack.enter_context(MetricWriter(workdir, cfg.logging, cfg.to_dict()))
  state = exp.state
  start_step = 0
  restored = checkpointer.restore_latest_good(ckpt_lib.abstract_like(checkpointed(state)),
                                              on_corrupt=cfg.checkpoint.on_corrupt)
  window, evals = [], None  # the open logging window's per-step metrics; the eval records
  if restored is not None:
    start_step, saved, loop_state = restored
    check_base(exp, loop_state, f"checkpoint step {start_step} in {checkpointer.directory}")
    state = saved.replace(frozen=state.frozen, reference=state.reference, teacher=state.teacher)
    iterator_state, window, evals = _read_loop_state(loop_state)
    if iterator_state:
      source.set_state(iterator_state)
    print(f"ftjax: resumed from step {start_step} in {checkpointer.directory}", flush=True)
  # Records past the restored step (or all, on a fresh start) are produced again.
  history = writer.truncate_after(start_step if restored is not None else -1)
  if evals is None:  # a fresh start, or a checkpoint from before evals were saved (process 0's)
    evals = [r for r in history if r["split"] == "eval"]

  evaluator = Evaluator(exp)
  batch_sharding = sharding.batch_sharding(exp.mesh)
  def train_step(state, batch):
    if {k: tuple(v.shape) for k, v in batch.items()} == planned_shapes:
      return planned_step(state, batch)
    return jitted_step(state, batch)

  eval_split = cfg.data.eval_split
  stopper = EarlyStopping(cfg.eval.metric, cfg.eval.mode, patience=cfg.eval.patience,
                          min_delta=cfg.eval.min_delta)
  for record in evals:
    stopper.update(record)
  full_evals: dict[int, dict] = {}  # this invocation's complete eval results, for the report

  def run_eval(step: int) -> None:
    full = eval_results.evaluate_split(evaluator, exp, state, eval_split)
    metrics = _scalars(full)
    writer.write(step, "eval", {**metrics, **eval_results.slice_scalars(full)})
    full_evals[step] = full
    record = {"step": step, **metrics}
    evals.append(record)
    is_best = stopper.update(record)
    if is_best and best_checkpointer:
      best_checkpointer.save(step, state.params, metrics)
    print(f"ftjax: step {step}: eval on '{eval_split}': {_headline(exp.task, metrics)}"
          + (" (best)" if is_best else ""), flush=True)

  if start_step == 0 and cfg.eval.at_start:
    run_eval(0)
    samples.write(workdir, exp, model_from_state(exp, state), "base", 0)

  progress = Progress(cfg.train.steps, start_step, enabled=is_main)
  pending: list[dict] = []  # device metrics of the steps since the last fetch
  interval = {"examples": 0, "tokens": 0, "start": time.time(), "paused": 0.0}
  totals = {"examples": 0, "tokens": 0, "time": 0.0}
  step = start_step
  stop_reason = None

  def paused(fn, *args):
    """Runs eval or a checkpoint save outside the throughput clock."""
    jax.block_until_ready(state)  # finish queued train steps on the clock first
    t = time.time()
    fn(*args)
    interval["paused"] += time.time() - t

  def check_finite() -> int:
    """Halts (exit 1) on skipped non-finite updates per `train.on_nan`; returns their count."""
    skipped, first = (int(x) for x in jax.device_get((state.nonfinite, state.first_nonfinite)))
    limit = 0 if cfg.train.on_nan == "halt" else cfg.train.max_nonfinite
    if skipped > limit:
      raise RunError(
          f"non-finite loss or gradients at step {first + 1} ({skipped} update(s) skipped, "
          f"train.on_nan={cfg.train.on_nan}); the last checkpoint "
          f"({checkpointer.latest_step()}) holds parameters from before it")
    return skipped

  with PreemptionGuard() as preemption:
    try:
      while step < cfg.train.steps:
        local, host_metrics = source.next(state)
        state, metrics = train_step(state, sharding.put_batch(local, batch_sharding))
        step += 1
        examples, tokens = exp.task.batch_counts(local)
        interval["examples"] += examples * jax.process_count()
        interval["tokens"] += tokens * jax.process_count()
        pending.append({**metrics, **host_metrics})
        progress.update(step)
        last = step == cfg.train.steps
        preempted = preemption.reached(step)  # every step, on every process: the sync point

        if step % cfg.train.log_every_steps == 0 or last or preempted:
          fetched = window + jax.device_get(pending)  # one sync per logging interval
          elapsed = time.time() - interval["start"] - interval["paused"]
          for k in ("examples", "tokens"):
            totals[k] += interval[k]
          totals["time"] += elapsed
          means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
          means.update(examples_per_sec=interval["examples"] / elapsed,
                       tokens_per_sec=interval["tokens"] / elapsed, nonfinite_skipped=check_finite())
          writer.write(step, "train", means)
          progress.set_postfix(loss=means["loss"], ex_per_s=means["examples_per_sec"])
          pending, window = [], []
          interval = {"examples": 0, "tokens": 0, "start": time.time(), "paused": 0.0}

        if step % cfg.eval.every_steps == 0 or last:
          paused(run_eval, step)
          if stopper.should_stop and not last:
            stop_reason = "early_stopping"
            print(f"ftjax: early stopping at step {step}: no improvement of {cfg.eval.metric} in "
                  f"{cfg.eval.patience} evaluations (best {stopper.best[cfg.eval.metric]:.4f} at "
                  f"step {stopper.best['step']})", flush=True)
        if preempted and stop_reason is None:
          stop_reason = "preempted"
        if checkpointer.should_save(step) or last or stop_reason:
          check_finite()  # never checkpoint past a non-finite update under on_nan=halt
          window, pending = window + jax.device_get(pending), []
          paused(checkpointer.save, step, checkpointed(state),
                 _loop_state(source.get_state(), window, evals, exp.base_fingerprint))
        if stop_reason:
          break
    finally:
      progress.close()
      checkpointer.close()
      if best_checkpointer:
        best_checkpointer.close()

  if stop_reason == "preempted":
    writer.finish(None, {}, status="preempted")
    print(f"ftjax: preempted (signal {preemption.received}) at step {step}; checkpoint saved, "
          "rerun the same command to resume", flush=True)
    return {"steps": step, "preempted": True}

  test_metrics = test_full = None
  test_step = stopper.best["step"] if (best_checkpointer and stopper.best) else step
  if cfg.data.test_split and cfg.data.test_split in exp.dataset.split_sizes:
    test_state = state
    if test_step != step:
      test_state, _ = restore_state(exp, workdir, "best", live=state)
    test_full = eval_results.evaluate_split(evaluator, exp, test_state, cfg.data.test_split)
    test_metrics = _scalars(test_full)
    writer.write(step, "test", test_metrics)
    print(f"ftjax: test split '{cfg.data.test_split}' (checkpoint of step {test_step}): "
          f"{_headline(exp.task, test_metrics)}", flush=True)
  samples.write(workdir, exp, model_from_state(exp, state), "final", step)  # on every process
  if is_main:
    names = getattr(exp.dataset, "label_names", None)
    results = [("base", 0), ("final", step)]
    if stopper.best:
      results.append(("best", stopper.best["step"]))
    for label, at in results:
      if at in full_evals:
        eval_results.write_result(workdir, eval_split, label, full_evals[at], step=at, label_names=names)
    if test_full is not None:
      eval_results.write_result(workdir, cfg.data.test_split, "best", test_full, step=test_step,
                            label_names=names)

  summary = {
      "steps": step,
      "stop_reason": stop_reason or "completed",
      "resumed_from_step": start_step or None,
      "method": cfg.method.name,
      "params": exp.param_counts,
      "initial_eval": next((r for r in evals if r["step"] == 0), None),
      "final_eval": evals[-1] if evals else None,
      "best_eval": stopper.best,
      "best_step": stopper.best["step"] if stopper.best else None,
      "best_metric": cfg.eval.metric,
      "test": test_metrics,
      "test_step": test_step if test_metrics else None,
      "nonfinite_skipped": int(jax.device_get(state.nonfinite)),
      "train_examples": totals["examples"],  # this invocation's, when resumed
      "train_time_sec": totals["time"],  # step time only: evals and saves excluded
      "examples_per_sec": totals["examples"] / totals["time"] if totals["time"] else None,
      "tokens_per_sec": totals["tokens"] / totals["time"] if totals["time"] else None,
      "wall_time_sec": time.time() - wall_start,
      "split_sizes": exp.dataset.split_sizes,
  }
  if is_main:
    write_json(workdir / "summary.json", summary)
    run_report.write(workdir)
  writer.finish(summary, run_report.plots(workdir), status="completed")
  return summary
