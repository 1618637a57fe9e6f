"""TrainState, the pure train/eval steps, and the train-and-evaluate loop.

The steps are pure functions of pytrees: the NNX model enters them only as a `graphdef` (static,
closed over) plus state pytrees, and `nnx.merge` rebuilds it inside `jax.jit`. Only the
method's trainable variables get gradients and optimizer state; everything else rides along
in `frozen` untouched.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import time
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ftjax import checkpoint as ckpt_lib
from ftjax import data_report, evaluate, methods, optim, report, samples, sharding, sources, tasks
from ftjax.data.tokenization import load_tokenizer
from ftjax.config import ConfigDict
from ftjax.early_stopping import EarlyStopping
from ftjax.errors import RunError, UserError
from ftjax.metric_writers import MetricWriter, write_json
from ftjax.preemption import PreemptionGuard
from ftjax.models import attention
from ftjax.models import layer_stack
from ftjax.models import registry as model_registry
from ftjax.weights import gguf
from ftjax.progress import Progress
from ftjax.workdir_lock import WorkdirLock

log = logging.getLogger("ftjax")


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any  # trainable variables (nnx.State)
  frozen: Any  # every other variable of the model (nnx.State)
  opt_state: Any
  rng: jax.Array  # raw uint32 key; dropout keys are folded in per step
  nonfinite: jax.Array  # updates skipped because the loss or gradients were not finite
  first_nonfinite: jax.Array  # step of the first such update, -1 if none


def make_train_step(graphdef, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    task, accum_steps: int = 1) -> Callable:
  """Returns `train_step(state, batch) -> (state, metrics)`; pure, ready for `jax.jit`.

  With `accum_steps > 1` the batch is cut into microbatches run under `lax.scan`; each
  microbatch's loss is weighted by its `loss_weight` (real examples or loss tokens, from the
  task), so the accumulated loss and gradients equal the big batch's exactly, however unevenly
  padding falls.
  """

  def loss_fn(params, frozen, batch, key):
    # One stream for the model's dropout sites and the method's own (`TrainRngs` layers).
    rngs = nnx.Rngs(dropout=key)
    model = methods.base.bind_train_rngs(nnx.merge(graphdef, params, frozen), rngs)
    return task.train_loss(model, batch, rngs)

  def weighted_loss(params, frozen, batch, key):
    loss, aux = loss_fn(params, frozen, batch, key)
    aux = dict(aux)
    weight = aux.pop("loss_weight", jnp.ones((), jnp.float32))
    return loss * weight, (loss, weight, aux)

  grad_fn = jax.value_and_grad(weighted_loss, has_aux=True)

  def loss_and_grads(state, batch, key):
    if accum_steps == 1:
      def mean_loss(params):
        loss, aux = loss_fn(params, state.frozen, batch, key)
        aux = dict(aux)
        aux.pop("loss_weight", None)
        return loss, aux
      return jax.value_and_grad(mean_loss, has_aux=True)(state.params)

    # Microbatch j takes rows j, j+k, j+2k, ...: every device keeps its share of each
    # microbatch, so the split needs no communication under batch sharding.
    micro = jax.tree.map(
        lambda x: x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1),
        batch)

    def body(carry, inputs):
      index, microbatch = inputs
      (_, (loss, weight, aux)), grads = grad_fn(state.params, state.frozen, microbatch,
                                                jax.random.fold_in(key, index))
      sums = {"grads": grads, "weight": weight, "loss": loss * weight,
              "aux": jax.tree.map(lambda a: a * weight, aux)}
      return jax.tree.map(jnp.add, carry, sums), None

    first = jax.tree.map(lambda x: x[0], micro)
    (_, (loss, weight, aux)), grads = jax.eval_shape(grad_fn, state.params, state.frozen, first, key)
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                         {"grads": grads, "weight": weight, "loss": loss, "aux": aux})
    totals, _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
    denominator = jnp.maximum(totals["weight"], 1e-9)
    grads = jax.tree.map(lambda g: g / denominator, totals["grads"])
    aux = jax.tree.map(lambda a: a / denominator, totals["aux"])
    return (totals["loss"] / denominator, aux), grads

  def train_step(state: TrainState, batch):
    key = jax.random.fold_in(state.rng, state.step)
    (loss, aux), grads = loss_and_grads(state, batch, key)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A non-finite loss or gradient never reaches the parameters: the update is dropped here,
    # counted, and the host halts or carries on per `train.on_nan`.
    # `lax.cond`, not a `where` per leaf: a select reads both trees and writes a third (a pass
    # over params + both Adam moments every step); the branch picks the buffers without a copy.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    params, opt_state = jax.lax.cond(finite, lambda: (params, opt_state),
                                     lambda: (state.params, state.opt_state))
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step), **aux}
    return state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        nonfinite=state.nonfinite + (~finite).astype(jnp.int32),
        first_nonfinite=jnp.where(~finite & (state.first_nonfinite < 0), state.step,
                                  state.first_nonfinite)), metrics

  return train_step


def make_eval_step(graphdef, task, dataset) -> Callable:
  """Returns `eval_step(state, batch) -> sums` (see the task's `eval_sums`)."""

  def eval_step(state: TrainState, batch):
    model = nnx.merge(graphdef, state.params, state.frozen)
    return task.eval_sums(model, batch, dataset)

  return eval_step


@dataclasses.dataclass
class Experiment:
  """Everything a run builds before its first step; shared by training and evaluation."""
  cfg: ConfigDict
  task: Any  # a module of ftjax.tasks
  mesh: jax.sharding.Mesh
  dataset: Any
  graphdef: Any
  state: TrainState
  state_shardings: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  method: methods.base.Method
  model_path: pathlib.Path
  param_counts: dict


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _check_vocab(model_path: pathlib.Path, tokenizer) -> None:
  """A tokenizer that emits ids past the embedding table would index out of range silently."""
  vocab_size = model_registry.read_hf_config(model_path).get("vocab_size")
  if vocab_size is not None and len(tokenizer) > vocab_size:
    raise UserError(f"tokenizer in '{model_path}' has {len(tokenizer)} tokens but the model's "
                    f"config.json has vocab_size {vocab_size}")


def trainable_filter(method, freeze: str):
  """The method's trainable variables, minus any matching the `method.freeze` regex."""
  if not freeze:
    return method.trainable()
  return nnx.All(method.trainable(), nnx.Not(methods.base.path_matches(freeze)))


def build_experiment(cfg: ConfigDict) -> Experiment:
  task = tasks.get(cfg.model.task)
  if cfg.eval.metric not in task.METRICS:
    raise UserError(f"config key 'eval.metric' names '{cfg.eval.metric}', which task "
                    f"'{cfg.model.task}' does not report; choose from {', '.join(task.METRICS)}")
  mesh = sharding.make_mesh(cfg.mesh.shape)
  # A .gguf file is converted once into a cached HF-style directory (dequantized weights,
  # tokenizer and chat template from its metadata); directories pass through.
  model_path = sharding.process_zero_first(
      lambda: gguf.resolve_checkpoint_dir(sources.resolve(cfg.model.checkpoint)), "checkpoint")
  tokenizer = load_tokenizer(model_path)
  _check_vocab(model_path, tokenizer)
  dataset = sharding.process_zero_first(
      lambda: task.load_data(cfg.data, tokenizer, seed=cfg.seed), "data")

  rngs = nnx.Rngs(params=cfg.seed)
  model, newly_initialised = model_registry.build_model(
      model_path, task=task.MODEL_TASK, dtype=jnp.dtype(cfg.model.dtype),
      param_dtype=jnp.dtype(cfg.model.param_dtype), rngs=rngs, **task.model_kwargs(dataset))
  if newly_initialised:
    log.info("Newly initialised (not in the checkpoint): %s", ", ".join(newly_initialised))
  method = methods.get(cfg.method.name, cfg.method)
  method.check_config(cfg)
  model = method.apply(model, rngs=rngs)
  # Methods see the unscanned model; layers are stacked afterwards (every layer wrapped alike),
  # with the trainable split decided on the unscanned paths.
  layer_stack.set_remat(model, cfg.model.remat)
  if cfg.model.get("logits_chunk", 0):  # read by the causal-LM task's loss (validated a causal LM)
    model.logits_chunk = cfg.model.logits_chunk
  attention_impl = cfg.model.get("attention", "xla")
  if attention.set_implementation(model, attention_impl) == 0 and attention_impl != "xla":
    raise UserError(f"config key 'model.attention' = '{attention_impl}': "
                    f"{type(model).__name__} has no decoder attention (only Llama-family and "
                    "GPT-2 models run it); use 'xla'")
  trainable = trainable_filter(method, cfg.method.freeze)
  if cfg.model.scan_layers:
    model, trainable = layer_stack.stack_with_filter(
        model, trainable, why=f"method '{cfg.method.name}'"
        + (f", method.freeze '{cfg.method.freeze}'" if cfg.method.freeze else ""))
  graphdef, params, frozen = nnx.split(model, trainable, ...)
  del model  # its arrays now live in the state; the step donates them
  if not jax.tree.leaves(params):  # e.g. linear_probe on a causal LM: no classifier head
    raise UserError(f"method '{cfg.method.name}' trains no parameters of this "
                    f"{task.MODEL_TASK} model" + (f" after method.freeze '{cfg.method.freeze}'"
                                                  if cfg.method.freeze else ""))

  schedule = optim.make_schedule(cfg.optimizer, cfg.train.steps)
  tx = optim.make_optimizer(cfg.optimizer, cfg.train.steps)
  rules = tuple(tuple(r) for r in cfg.mesh.rules)
  param_shardings = sharding.variable_shardings(params, mesh, rules)
  params = sharding.put_global(params, param_shardings)
  frozen = sharding.put_global(frozen, sharding.variable_shardings(frozen, mesh, rules))
  abstract_opt = jax.eval_shape(tx.init, params)
  opt_shardings = sharding.follow_params(abstract_opt, params, param_shardings, mesh)
  opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
  scalar = lambda x: sharding.put_global(x, sharding.replicated(mesh))
  state = TrainState(step=scalar(jnp.zeros((), jnp.int32)), params=params, frozen=frozen,
                     opt_state=opt_state, rng=scalar(jax.random.key_data(jax.random.key(cfg.seed + 1))),
                     nonfinite=scalar(jnp.zeros((), jnp.int32)),
                     first_nonfinite=scalar(jnp.full((), -1, jnp.int32)))
  shardings = jax.tree.map(lambda x: x.sharding, state)
  counts = {"trainable": count_params(params), "frozen": count_params(frozen)}
  counts["total"] = counts["trainable"] + counts["frozen"]
  return Experiment(cfg, task, mesh, dataset, graphdef, state, shardings, tx, schedule, method,
                    model_path, counts)


def local_batch_size(global_batch: int, mesh, accum_steps: int = 1) -> int:
  divisor = sharding.batch_divisor(mesh) * accum_steps
  if global_batch % divisor:
    raise UserError(f"batch size {global_batch} is not divisible by the {divisor} data-parallel "
                    f"devices x microbatches of mesh {dict(mesh.shape)}")
  return global_batch // jax.process_count()


class Evaluator:
  """Runs the jitted eval step over a split and finalises metrics; sums stay on device."""

  def __init__(self, exp: Experiment):
    self.exp = exp
    self.batch_sharding = sharding.batch_sharding(exp.mesh)
    self._step = jax.jit(make_eval_step(exp.graphdef, exp.task, exp.dataset),
                         in_shardings=(exp.state_shardings, self.batch_sharding),
                         out_shardings=sharding.replicated(exp.mesh))

  def __call__(self, state: TrainState, split: str) -> dict:
    batch_size = local_batch_size(self.exp.cfg.eval.batch_size, self.exp.mesh)
    totals = None
    for local in self.exp.dataset.eval_batches(split, batch_size, shard_index=jax.process_index(),
                                               shard_count=jax.process_count()):
      sums = self._step(state, sharding.put_batch(local, self.batch_sharding))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
      raise UserError(f"split '{split}' of data '{self.exp.cfg.data.name}' is empty")
    return self.exp.task.finalize(jax.device_get(totals))


def _prepare_workdir(workdir: str) -> pathlib.Path:
  path = pathlib.Path(workdir).expanduser()
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_test.{os.getpid()}"  # per process: several may share a workdir
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise UserError(f"workdir '{workdir}' is not writable: {e.strerror}") from None
  return path


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
    return _train_and_evaluate(cfg, workdir)
  finally:
    if lock:
      lock.release()


def _train_and_evaluate(cfg: ConfigDict, workdir: pathlib.Path) -> dict:
  wall_start = time.time()
  is_main = jax.process_index() == 0
  exp = build_experiment(cfg)  # every input is checked before anything is written
  evaluate.configure(exp)
  if is_main:
    write_json(workdir / "config.json", cfg.to_dict())
    if not (workdir / data_report.JSON_FILE).exists():
      data_report.write(workdir, exp.dataset, load_tokenizer(exp.model_path), cfg)
  print(f"ftjax: method {cfg.method.name}, trainable parameters "
        f"{exp.param_counts['trainable']:,} / {exp.param_counts['total']:,} "
        f"({100 * exp.param_counts['trainable'] / max(exp.param_counts['total'], 1):.3f}%)", flush=True)
  print(f"ftjax: data '{cfg.data.name}': {exp.dataset.split_sizes}"
        + (f", duplicates removed: {exp.dataset.duplicates_removed}"
           if getattr(exp.dataset, "duplicates_removed", None) else ""), flush=True)

  batch_size = local_batch_size(cfg.train.batch_size, exp.mesh, cfg.train.grad_accum_steps)
  train_iter = exp.dataset.train_iterator(batch_size, seed=cfg.seed,
                                          shard_index=jax.process_index(),
                                          shard_count=jax.process_count())
  checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", every_steps=cfg.checkpoint.every_steps,
                                       keep=cfg.checkpoint.keep)
  best_checkpointer = None
  if cfg.checkpoint.keep_best:
    best_checkpointer = ckpt_lib.BestCheckpointer(
        workdir / "checkpoints" / ckpt_lib.BEST_DIR, metric=cfg.eval.metric, mode=cfg.eval.mode,
        keep=cfg.checkpoint.keep_best)
  writer = MetricWriter(workdir)
  state = exp.state
  history: list[dict] = []
  start_step = 0
  restored = checkpointer.restore_latest_good(ckpt_lib.abstract_like(state),
                                              on_corrupt=cfg.checkpoint.on_corrupt)
  if restored is not None:
    start_step, state, data_state = restored
    if data_state:
      train_iter.set_state(data_state)
    print(f"ftjax: resumed from step {start_step} in {checkpointer.directory}", flush=True)
  # Records past the restored step (or all, on a fresh start) are produced again.
  history = writer.truncate_after(start_step if restored is not None else -1)

  evaluator = Evaluator(exp)
  batch_sharding = sharding.batch_sharding(exp.mesh)
  train_step = jax.jit(make_train_step(exp.graphdef, exp.tx, exp.schedule, exp.task,
                                       cfg.train.grad_accum_steps),
                       in_shardings=(exp.state_shardings, batch_sharding),
                       out_shardings=(exp.state_shardings, sharding.replicated(exp.mesh)),
                       donate_argnums=0)

  eval_split = cfg.data.eval_split
  stopper = EarlyStopping(cfg.eval.metric, cfg.eval.mode, patience=cfg.eval.patience,
                          min_delta=cfg.eval.min_delta)
  evals = [r for r in history if r["split"] == "eval"]
  for record in evals:
    stopper.update(record)
  full_evals: dict[int, dict] = {}  # this invocation's complete eval results, for the report

  def run_eval(step: int) -> None:
    full = evaluate.evaluate_split(evaluator, exp, state, eval_split)
    metrics = _scalars(full)
    writer.write(step, "eval", {**metrics, **evaluate.slice_scalars(full)})
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
    if is_main:
      samples.write(workdir, exp, model_from_state(exp, state), "base", 0)

  progress = Progress(cfg.train.steps, start_step, enabled=is_main)
  pending: list[dict] = []
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
        local = next(train_iter)
        state, metrics = train_step(state, sharding.put_batch(local, batch_sharding))
        step += 1
        examples, tokens = exp.task.batch_counts(local)
        interval["examples"] += examples * jax.process_count()
        interval["tokens"] += tokens * jax.process_count()
        pending.append(metrics)
        progress.update(step)
        last = step == cfg.train.steps

        if step % cfg.train.log_every_steps == 0 or last or preemption.requested:
          fetched = jax.device_get(pending)  # one sync per logging interval, not per step
          elapsed = time.time() - interval["start"] - interval["paused"]
          for k in ("examples", "tokens"):
            totals[k] += interval[k]
          totals["time"] += elapsed
          means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
          means.update(examples_per_sec=interval["examples"] / elapsed,
                       tokens_per_sec=interval["tokens"] / elapsed, nonfinite_skipped=check_finite())
          writer.write(step, "train", means)
          progress.set_postfix(loss=means["loss"], ex_per_s=means["examples_per_sec"])
          pending = []
          interval = {"examples": 0, "tokens": 0, "start": time.time(), "paused": 0.0}

        if step % cfg.eval.every_steps == 0 or last:
          paused(run_eval, step)
          if stopper.should_stop and not last:
            stop_reason = "early_stopping"
            print(f"ftjax: early stopping at step {step}: no improvement of {cfg.eval.metric} in "
                  f"{cfg.eval.patience} evaluations (best {stopper.best[cfg.eval.metric]:.4f} at "
                  f"step {stopper.best['step']})", flush=True)
        if preemption.requested and stop_reason is None:
          stop_reason = "preempted"
        if checkpointer.should_save(step) or last or stop_reason:
          check_finite()  # never checkpoint past a non-finite update under on_nan=halt
          paused(checkpointer.save, step, state, train_iter.get_state())
        if stop_reason:
          break
    finally:
      progress.close()
      checkpointer.close()
      if best_checkpointer:
        best_checkpointer.close()

  if stop_reason == "preempted":
    writer.close()
    print(f"ftjax: preempted (signal {preemption.received}) at step {step}; checkpoint saved, "
          "rerun the same command to resume", flush=True)
    return {"steps": step, "preempted": True}

  test_metrics = test_full = None
  test_step = stopper.best["step"] if (best_checkpointer and stopper.best) else step
  if cfg.data.test_split and cfg.data.test_split in exp.dataset.split_sizes:
    test_state = state
    if test_step != step:
      test_state, _ = restore_state(exp, workdir, "best", live=state)
    test_full = evaluate.evaluate_split(evaluator, exp, test_state, cfg.data.test_split)
    test_metrics = _scalars(test_full)
    writer.write(step, "test", test_metrics)
    print(f"ftjax: test split '{cfg.data.test_split}' (checkpoint of step {test_step}): "
          f"{_headline(exp.task, test_metrics)}", flush=True)
  writer.close()
  if is_main:
    samples.write(workdir, exp, model_from_state(exp, state), "final", step)
    names = getattr(exp.dataset, "label_names", None)
    results = [("base", 0), ("final", step)]
    if stopper.best:
      results.append(("best", stopper.best["step"]))
    for label, at in results:
      if at in full_evals:
        evaluate.write_result(workdir, eval_split, label, full_evals[at], step=at, label_names=names)
    if test_full is not None:
      evaluate.write_result(workdir, cfg.data.test_split, "best", test_full, step=test_step,
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
    report.write(workdir)
  return summary


def restore_state(exp: Experiment, workdir, checkpoint: str | int = "latest",
                  live: TrainState | None = None) -> tuple[TrainState, int]:
  """The train state of a workdir's checkpoint: `latest`, `best`, `base` or a step number.

  `base` is the untouched pretrained model (with its freshly initialised head), i.e. step 0.
  `best` takes the trainable parameters from `checkpoints/best` (the frozen ones never change)
  and the rest from `live`, the training loop's current state (whose buffers are alive, unlike
  `exp.state`'s once a step has donated them), or from `exp.state` outside a training loop.
  Returns the state and its step.
  """
  if checkpoint == "base":
    return exp.state, 0
  directory = pathlib.Path(workdir) / "checkpoints"
  if checkpoint == "best":
    best = ckpt_lib.BestCheckpointer(directory / ckpt_lib.BEST_DIR, metric=exp.cfg.eval.metric,
                                     mode=exp.cfg.eval.mode, keep=max(exp.cfg.checkpoint.keep_best, 1))
    try:
      step = best.best_step()
      if step is None:
        raise UserError(f"no best checkpoint in {directory / ckpt_lib.BEST_DIR}")
      params = best.restore(step, ckpt_lib.abstract_like((live or exp.state).params))
    finally:
      best.close()
    return (live if live is not None else exp.state).replace(params=params), int(step)
  checkpointer = ckpt_lib.Checkpointer(directory, every_steps=1, keep=1 << 30)
  try:
    available = checkpointer.all_steps()
    step = checkpointer.latest_step() if checkpoint == "latest" else int(checkpoint)
    if step is None or step not in available:
      raise UserError(f"checkpoint '{checkpoint}' not found in {directory}; available steps: {available}")
    try:
      state, _ = checkpointer.restore(step, ckpt_lib.abstract_like(exp.state))
    except ckpt_lib.CorruptCheckpointError as e:
      raise UserError(str(e)) from None
  finally:
    checkpointer.close()
  return state, int(step)


def model_from_state(exp: Experiment, state: TrainState) -> nnx.Module:
  """The NNX model (method applied) holding the state's parameters, its layers unscanned (a list,
  as methods, generation, weight tables and export expect) whatever `model.scan_layers` is."""
  return layer_stack.unstack_layers(nnx.merge(exp.graphdef, state.params, state.frozen))
