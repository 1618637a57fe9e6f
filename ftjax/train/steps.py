"""The pure train and eval steps, and the Evaluator that runs the jitted eval step over a split.

The steps are pure functions of pytrees: the NNX model enters them only as a `graphdef` (static,
closed over) plus state pytrees, and `nnx.merge` rebuilds it inside `jax.jit`. Only the
method's trainable variables get gradients and optimizer state; everything else rides along
in `frozen` untouched.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ftjax import methods, optim, sharding
from ftjax.errors import UserError
from ftjax.models import moe
from ftjax.train.batches import Policy, stop_token_ids
from ftjax.train.state import Experiment, TrainState, local_batch_size


def _companions(graphdef, task, reference, frozen, teacher) -> dict:
  """The frozen models the objective's losses take besides the trained one, none of which gets
  a gradient: `reference=` (the state's step-0 parameters with the frozen ones, when
  `TrainState.reference` is set) and `teacher=` (`TrainState.teacher` on the objective's
  `teacher_graphdef`, when set)."""
  out = {}
  if reference is not None:
    out["reference"] = nnx.merge(graphdef, jax.lax.stop_gradient(reference), frozen)
  if teacher is not None:
    out["teacher"] = nnx.merge(task.teacher_graphdef, *jax.lax.stop_gradient(teacher))
  return out


def make_train_step(graphdef, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    task, accum_steps: int = 1) -> Callable:
  """Returns `train_step(state, batch) -> (state, metrics)`; pure, ready for `jax.jit`.

  With `accum_steps > 1` the batch is cut into microbatches run under `lax.scan`; each
  microbatch's loss is weighted by its `loss_weight` (real examples or loss tokens, from the
  task), so the accumulated loss and gradients equal the big batch's exactly, however unevenly
  padding falls.
  """

  def loss_fn(params, frozen, reference, batch, key, teacher=None):
    # One stream for the model's dropout sites and the method's own (`TrainRngs` layers).
    rngs = nnx.Rngs(dropout=key)
    model = methods.base.bind_train_rngs(nnx.merge(graphdef, params, frozen), rngs)
    companions = _companions(graphdef, task, reference, frozen, teacher)
    (loss, aux), recorded = nnx.capture(
        lambda model: task.train_loss(model, batch, rngs, **companions), nnx.Intermediate)(model)
    # A mixture of experts' load-balancing loss (already weighted) joins every objective's loss.
    routed = moe.recorded_terms(recorded)
    if routed:
      loss = loss + routed["aux_loss"]
      aux = {**aux, **{f"moe_{k}": v for k, v in routed.items()}}
    return loss, aux

  def weighted_loss(params, frozen, reference, batch, key, teacher=None):
    loss, aux = loss_fn(params, frozen, reference, batch, key, teacher)
    aux = dict(aux)
    weight = aux.pop("loss_weight", jnp.ones((), jnp.float32))
    return loss * weight, (loss, weight, aux)

  grad_fn = jax.value_and_grad(weighted_loss, has_aux=True)

  def loss_and_grads(state, batch, key):
    if accum_steps == 1:
      def mean_loss(params):
        loss, aux = loss_fn(params, state.frozen, state.reference, batch, key, state.teacher)
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
      (_, (loss, weight, aux)), grads = grad_fn(state.params, state.frozen, state.reference,
                                                microbatch, jax.random.fold_in(key, index),
                                                state.teacher)
      sums = {"grads": grads, "weight": weight, "loss": loss * weight,
              "aux": jax.tree.map(lambda a: a * weight, aux)}
      return jax.tree.map(jnp.add, carry, sums), None

    first = jax.tree.map(lambda x: x[0], micro)
    (_, (loss, weight, aux)), grads = jax.eval_shape(grad_fn, state.params, state.frozen,
                                                     state.reference, first, key, state.teacher)
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
    # The learning rates this update applied (or would have, when dropped), from the optimizer's
    # own state: its step count lags `state.step` by the updates skipped so far, and each
    # parameter group has its own. A `tx` without them (not `optim.make_optimizer`'s) logs
    # `schedule` at the step.
    lrs = optim.learning_rates(opt_state) or {"lr": schedule(state.step)}
    params, opt_state = jax.lax.cond(finite, lambda: (params, opt_state),
                                     lambda: (state.params, state.opt_state))
    metrics = {"loss": loss, "grad_norm": grad_norm, **lrs, **aux}
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
    return task.eval_sums(model, batch, dataset, **_companions(
        graphdef, task, state.reference, state.frozen, state.teacher))

  return eval_step


def make_rows_step(graphdef, task) -> Callable:
  """Returns `rows_step(state, batch) -> the task's per-row outputs` (its `row_outputs`)."""

  def rows_step(state: TrainState, batch):
    return task.row_outputs(nnx.merge(graphdef, state.params, state.frozen), batch)

  return rows_step


class Evaluator:
  """Runs the jitted eval step over a split and finalises metrics; sums stay on device.

  An objective whose metrics need the whole split at once, not sums (`metrics_from_rows`:
  retrieval over every row's embedding) gets its jitted `row_outputs` step's outputs for every
  batch instead, every process's rows of each global batch on every process, and computes its
  metrics from them.
  """

  def __init__(self, exp: Experiment):
    self.exp = exp
    self.batch_sharding = sharding.batch_sharding(exp.mesh)
    if hasattr(exp.task, "eval_generations"):  # its eval generates (no jitted eval step)
      self._stop_token_ids = stop_token_ids(exp)
      return
    make = (make_rows_step(exp.graphdef, exp.task) if hasattr(exp.task, "metrics_from_rows")
            else make_eval_step(exp.graphdef, exp.task, exp.dataset))
    self._step = jax.jit(make, in_shardings=(exp.state_shardings, self.batch_sharding),
                         out_shardings=sharding.replicated(exp.mesh))

  def _outputs(self, state: TrainState, split: str):
    """The jitted step's output for each global batch of the split, in order."""
    batch_size = local_batch_size(self.exp.cfg.eval.batch_size, self.exp.mesh)
    shard = dict(shard_index=jax.process_index(), shard_count=jax.process_count())
    longest = None
    if jax.process_count() > 1:  # every process pads batch b to the same (global) length
      longest = sharding.max_over_processes(
          self.exp.dataset.eval_batch_lengths(split, batch_size, **shard))
    for local in self.exp.dataset.eval_batches(split, batch_size, longest=longest, **shard):
      yield self._step(state, sharding.put_batch(local, self.batch_sharding))

  def __call__(self, state: TrainState, split: str) -> dict:
    task = self.exp.task
    if hasattr(task, "eval_generations"):  # an RL objective: generate and score
      return task.eval_generations(Policy(self.exp, state, self._stop_token_ids),
                                   self.exp.dataset, split, self.exp.cfg.eval.batch_size)
    if hasattr(task, "metrics_from_rows"):
      outputs = [jax.device_get(o) for o in self._outputs(state, split)]
      if not outputs:
        raise UserError(f"split '{split}' of data '{self.exp.cfg.data.name}' is empty")
      return task.metrics_from_rows(outputs, self.exp.dataset, split)
    totals = None
    for sums in self._outputs(state, split):
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
      raise UserError(f"split '{split}' of data '{self.exp.cfg.data.name}' is empty")
    return task.finalize(jax.device_get(totals))
