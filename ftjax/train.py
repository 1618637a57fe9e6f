"""TrainState, the pure train/eval steps, and the train-and-evaluate loop.

The steps are pure functions of pytrees: the NNX model enters them only as a `graphdef` (static,
closed over) plus state pytrees, and `nnx.merge` rebuilds it inside `jax.jit`. Only the
method's trainable variables get gradients and optimizer state; everything else rides along
in `frozen` untouched.
"""

from __future__ import annotations

import dataclasses
import json
import logging
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
from ftjax import methods, optim, sharding, sources, tasks
from ftjax.data.tokenization import load_tokenizer
from ftjax.config import ConfigDict
from ftjax.errors import UserError
from ftjax.metric_writers import MetricWriter, write_json
from ftjax.models import registry as model_registry
from ftjax.progress import Progress

log = logging.getLogger("ftjax")


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any  # trainable variables (nnx.State)
  frozen: Any  # every other variable of the model (nnx.State)
  opt_state: Any
  rng: jax.Array  # raw uint32 key; dropout keys are folded in per step


def make_train_step(graphdef, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    task) -> Callable:
  """Returns `train_step(state, batch) -> (state, metrics)`; pure, ready for `jax.jit`."""

  def train_step(state: TrainState, batch):
    dropout_key = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      model = nnx.merge(graphdef, params, state.frozen)
      return task.train_loss(model, batch, nnx.Rngs(dropout=dropout_key))

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "lr": schedule(state.step), **aux}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

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


def trainable_filter(method, freeze: str):
  """The method's trainable variables, minus any matching the `method.freeze` regex."""
  if not freeze:
    return method.trainable()
  return nnx.All(method.trainable(), nnx.Not(methods.base.path_matches(freeze)))


def build_experiment(cfg: ConfigDict) -> Experiment:
  task = tasks.get(cfg.model.task)
  mesh = sharding.make_mesh(cfg.mesh.shape)
  model_path = sources.resolve(cfg.model.checkpoint)
  tokenizer = load_tokenizer(model_path)
  dataset = task.load_data(cfg.data, tokenizer, seed=cfg.seed)

  rngs = nnx.Rngs(params=cfg.seed)
  model, newly_initialised = model_registry.build_model(
      model_path, task=task.MODEL_TASK, dtype=jnp.dtype(cfg.model.dtype),
      param_dtype=jnp.dtype(cfg.model.param_dtype), rngs=rngs, **task.model_kwargs(dataset))
  if newly_initialised:
    log.info("Newly initialised (not in the checkpoint): %s", ", ".join(newly_initialised))
  method = methods.get(cfg.method.name, cfg.method)
  model = method.apply(model, rngs=rngs)
  graphdef, params, frozen = nnx.split(model, trainable_filter(method, cfg.method.freeze), ...)
  del model  # its arrays now live in the state; the step donates them

  schedule = optim.make_schedule(cfg.optimizer, cfg.train.steps)
  tx = optim.make_optimizer(cfg.optimizer, cfg.train.steps)
  rng = jax.random.key_data(jax.random.key(cfg.seed + 1))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen=frozen,
                     opt_state=tx.init(params), rng=rng)
  shardings = sharding.state_shardings(state, mesh)
  state = jax.device_put(state, shardings)
  counts = {"trainable": count_params(params), "frozen": count_params(frozen)}
  counts["total"] = counts["trainable"] + counts["frozen"]
  return Experiment(cfg, task, mesh, dataset, graphdef, state, shardings, tx, schedule, method,
                    model_path, counts)


def local_batch_size(global_batch: int, mesh) -> int:
  divisor = sharding.batch_divisor(mesh)
  if global_batch % divisor:
    raise UserError(f"batch size {global_batch} is not divisible by the {divisor} data-parallel "
                    f"devices of mesh {dict(mesh.shape)}")
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
    probe = path / ".write_test"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise UserError(f"workdir '{workdir}' is not writable: {e.strerror}") from None
  return path


def _scalars(metrics: dict) -> dict:
  return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def _is_better(value: float, best: float | None, mode: str) -> bool:
  return best is None or (value > best if mode == "max" else value < best)


def train_and_evaluate(cfg: ConfigDict, workdir: str) -> dict:
  """Trains and evaluates; rerun on the same workdir to resume. Returns the summary."""
  wall_start = time.time()
  workdir = _prepare_workdir(workdir)
  is_main = jax.process_index() == 0
  if is_main:
    write_json(workdir / "config.json", cfg.to_dict())

  exp = build_experiment(cfg)
  log.info("Method '%s': %s trainable of %s parameters (%.3f%%).", cfg.method.name,
           f"{exp.param_counts['trainable']:,}", f"{exp.param_counts['total']:,}",
           100 * exp.param_counts["trainable"] / max(exp.param_counts["total"], 1))
  print(f"ftjax: method {cfg.method.name}, trainable parameters "
        f"{exp.param_counts['trainable']:,} / {exp.param_counts['total']:,}", flush=True)

  batch_size = local_batch_size(cfg.train.batch_size, exp.mesh)
  train_iter = exp.dataset.train_iterator(batch_size, seed=cfg.seed,
                                          shard_index=jax.process_index(),
                                          shard_count=jax.process_count())
  checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", every_steps=cfg.checkpoint.every_steps,
                                       keep=cfg.checkpoint.keep)
  writer = MetricWriter(workdir)
  state = exp.state
  history: list[dict] = []
  start_step = 0
  latest = checkpointer.latest_step()
  if latest is not None:
    state, data_state = checkpointer.restore(latest, ckpt_lib.abstract_like(state))
    if data_state:
      train_iter.set_state(data_state)
    start_step = int(latest)
    history = writer.truncate_after(start_step)
    print(f"ftjax: resumed from step {start_step} in {checkpointer.directory}", flush=True)

  evaluator = Evaluator(exp)
  batch_sharding = sharding.batch_sharding(exp.mesh)
  train_step = jax.jit(make_train_step(exp.graphdef, exp.tx, exp.schedule, exp.task),
                       in_shardings=(exp.state_shardings, batch_sharding),
                       out_shardings=(exp.state_shardings, sharding.replicated(exp.mesh)),
                       donate_argnums=0)

  eval_split = cfg.data.eval_split
  evals = [r for r in history if r["split"] == "eval"]

  def run_eval(step: int) -> dict:
    metrics = evaluator(state, eval_split)
    writer.write(step, "eval", _scalars(metrics))
    evals.append({"step": step, **_scalars(metrics)})
    shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in exp.task.HEADLINE_METRICS if k in metrics)
    print(f"ftjax: step {step}: eval on '{eval_split}': {shown}", flush=True)
    return metrics

  if start_step == 0 and cfg.eval.at_start:
    run_eval(0)

  progress = Progress(cfg.train.steps, start_step, enabled=is_main)
  pending: list[dict] = []
  interval = {"examples": 0, "tokens": 0, "start": time.time(), "paused": 0.0}
  totals = {"examples": 0, "tokens": 0, "time": 0.0}
  step = start_step

  def paused(fn, *args):
    """Runs eval or a checkpoint save outside the throughput clock."""
    jax.block_until_ready(state)  # finish queued train steps on the clock first
    t = time.time()
    fn(*args)
    interval["paused"] += time.time() - t

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

      if step % cfg.train.log_every_steps == 0 or last:
        fetched = jax.device_get(pending)  # one sync per logging interval, not per step
        elapsed = time.time() - interval["start"] - interval["paused"]
        for k in ("examples", "tokens"):
          totals[k] += interval[k]
        totals["time"] += elapsed
        means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        means.update(examples_per_sec=interval["examples"] / elapsed,
                     tokens_per_sec=interval["tokens"] / elapsed)
        writer.write(step, "train", means)
        progress.set_postfix(loss=means["loss"], ex_per_s=means["examples_per_sec"])
        pending = []
        interval = {"examples": 0, "tokens": 0, "start": time.time(), "paused": 0.0}
        if not np.isfinite(means["loss"]):
          raise FloatingPointError(f"non-finite training loss at step {step}")

      if step % cfg.eval.every_steps == 0 or last:
        paused(run_eval, step)
      if checkpointer.should_save(step) or last:
        paused(checkpointer.save, step, state, train_iter.get_state())
  finally:
    progress.close()
    checkpointer.close()

  test_metrics = None
  if cfg.data.test_split and cfg.data.test_split in exp.dataset.split_sizes:
    test_metrics = evaluator(state, cfg.data.test_split)
    writer.write(step, "test", _scalars(test_metrics))
    shown = ", ".join(f"{k} {test_metrics[k]:.4f}" for k in exp.task.HEADLINE_METRICS if k in test_metrics)
    print(f"ftjax: final eval on '{cfg.data.test_split}': {shown}", flush=True)
  writer.close()

  summary = _summary(cfg, exp, evals, test_metrics, step, start_step, totals, wall_start)
  if is_main:
    write_json(workdir / "summary.json", summary)
  return summary


def _summary(cfg, exp, evals, test_metrics, step, start_step, totals, wall_start) -> dict:
  best = None
  for record in evals:
    if _is_better(record[cfg.eval.metric], best and best[cfg.eval.metric], cfg.eval.mode):
      best = record
  return {
      "steps": step,
      "resumed_from_step": start_step or None,
      "method": cfg.method.name,
      "params": exp.param_counts,
      "initial_eval": next((r for r in evals if r["step"] == 0), None),
      "final_eval": evals[-1] if evals else None,
      "best_eval": best,
      "best_step": best["step"] if best else None,
      "best_metric": cfg.eval.metric,
      "test": _scalars(test_metrics) if test_metrics else None,
      "train_examples": totals["examples"],  # this invocation's, when resumed
      "train_time_sec": totals["time"],  # step time only: evals and saves excluded
      "examples_per_sec": totals["examples"] / totals["time"] if totals["time"] else None,
      "tokens_per_sec": totals["tokens"] / totals["time"] if totals["time"] else None,
      "wall_time_sec": time.time() - wall_start,
      "split_sizes": exp.dataset.split_sizes,
  }


def restore_state(exp: Experiment, workdir: str, checkpoint: str | int = "latest") -> tuple[TrainState, int]:
  """The train state of a finished or running workdir: `latest`, `best`, `base` or a step.

  `base` is the untouched pretrained model (with its freshly initialised head), i.e. step 0.
  Returns the state and its step.
  """
  if checkpoint == "base":
    return exp.state, 0
  directory = pathlib.Path(workdir) / "checkpoints"
  checkpointer = ckpt_lib.Checkpointer(directory, every_steps=1, keep=1 << 30)
  try:
    available = checkpointer.all_steps()
    if checkpoint == "latest":
      step = checkpointer.latest_step()
    elif checkpoint == "best":
      summary_path = pathlib.Path(workdir) / "summary.json"
      if not summary_path.exists():
        raise UserError(f"no summary.json in workdir '{workdir}' to find the best step")
      step = json.loads(summary_path.read_text()).get("best_step")
    else:
      step = int(checkpoint)
    if step is None or step not in available:
      raise UserError(f"checkpoint '{checkpoint}' (step {step}) not found in {directory}; "
                      f"available steps: {available}")
    state, _ = checkpointer.restore(step, ckpt_lib.abstract_like(exp.state))
  finally:
    checkpointer.close()
  return state, int(step)


def model_from_state(exp: Experiment, state: TrainState) -> nnx.Module:
  """The NNX model (method applied) holding the state's parameters."""
  return nnx.merge(exp.graphdef, state.params, state.frozen)
