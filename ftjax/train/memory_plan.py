"""A run's memory per device from its compiled train step: what `ftjax.plan` prints and what
every training run prints and checks before it reads its weights.

The step is compiled ahead of time for the largest batch the data can give (`data.max_length`)
on the state's shapes and shardings; `memory_analysis()` gives its arguments, outputs and
temporaries per device. The same executable serves the real state (it depends on shapes and
shardings only), so a training run compiles that batch shape once.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from ftjax import checkpoint, sharding
from ftjax.errors import UserError
from ftjax.train.state import Experiment, local_batch_size
from ftjax.train.steps import make_train_step

SHRINK = {
    "frozen params": "mesh.shape (more fsdp), model.param_dtype=bfloat16, method (LoRA/QLoRA)",
    "trainable params": "mesh.shape (more fsdp), model.trainable_dtype, method",
    "optimizer state": "mesh.shape (more fsdp), optimizer.name (adafactor, sgd), method",
    "teacher params": "mesh.shape (more fsdp), model.param_dtype=bfloat16, a smaller teacher",
    "step temporaries": "train.batch_size, data.max_length, model.remat, model.scan_layers, "
                        "model.logits_chunk, train.grad_accum_steps",
}


@dataclasses.dataclass
class Plan:
  mesh: dict
  per_device: dict  # consumer -> bytes on one device
  compiled: dict  # memory_analysis fields, bytes per device
  device_limit: int | None  # the device's memory, where the backend reports it

  @property
  def peak(self) -> int:
    c = self.compiled
    return c["argument"] + c["output"] - c["alias"] + c["temp"]

  def fits(self) -> bool | None:
    return None if self.device_limit is None else self.peak <= self.device_limit


def _device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += math.prod(shape) * np.dtype(x.dtype).itemsize
  return total


def device_limit() -> int | None:
  """The first local device's memory in bytes, None where the backend does not say (CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("bytes_limit")


def _largest_batch(exp) -> dict:
  """One train batch's arrays at the longest length the data can give (data.max_length)."""
  cfg = exp.cfg
  size = local_batch_size(cfg.train.batch_size, exp.mesh, cfg.train.grad_accum_steps)
  template = getattr(exp.task, "train_batch_template", None)  # a rollout batch's shapes
  batch = template(exp.dataset, size) if template else next(iter(exp.dataset.train_iterator(
      size, seed=cfg.seed, shard_index=0, shard_count=1)))
  length = cfg.data.max_length
  spec = sharding.batch_sharding(exp.mesh)
  global_rows = len(next(iter(batch.values()))) * jax.process_count()
  # Rows lead, the sequence is last ([B, T]; a preference batch's [B, 2, T]) in the arrays shaped
  # like `input_ids`; others keep their own trailing axes (a multiple-choice batch's [B, C] mask).
  ids = batch["input_ids"]
  is_sequence = lambda v: v.ndim == ids.ndim >= 2 and v.shape[-1] == ids.shape[-1]
  return {k: jax.ShapeDtypeStruct((global_rows,) + v.shape[1:-1] + (
      (length,) if is_sequence(v) else v.shape[-1:] if v.ndim >= 2 else ()), v.dtype,
                                  sharding=spec)
          for k, v in batch.items()}


def jit_train_step(exp: Experiment):
  """The trainer's jitted step: state and batch shardings fixed, the state donated."""
  return jax.jit(make_train_step(exp.graphdef, exp.tx, exp.schedule, exp.task,
                                 exp.cfg.train.grad_accum_steps),
                 in_shardings=(exp.state_shardings, sharding.batch_sharding(exp.mesh)),
                 out_shardings=(exp.state_shardings, sharding.replicated(exp.mesh)),
                 donate_argnums=0)


def compile_step(exp: Experiment, step=None):
  """(the train step compiled for the largest batch, the batch's shapes, the Plan). `exp` may be
  planned (`plan_experiment`) or loaded: the executable is the same."""
  state = exp.state
  abstract = checkpoint.abstract_like(state)
  per_device = {"trainable params": _device_bytes(abstract.params),
                "frozen params": _device_bytes(abstract.frozen),
                "optimizer state": _device_bytes(abstract.opt_state)}
  if abstract.teacher is not None:  # a distillation teacher, frozen
    per_device["teacher params"] = _device_bytes(abstract.teacher)
  batch = _largest_batch(exp)
  compiled = (step or jit_train_step(exp)).lower(abstract, batch).compile()
  analysis = compiled.memory_analysis()
  compiled_bytes = {"argument": analysis.argument_size_in_bytes,
                    "output": analysis.output_size_in_bytes,
                    "alias": analysis.alias_size_in_bytes, "temp": analysis.temp_size_in_bytes,
                    "code": analysis.generated_code_size_in_bytes}
  per_device["step temporaries"] = compiled_bytes["temp"]
  shapes = {k: tuple(v.shape) for k, v in batch.items()}
  return compiled, shapes, Plan(dict(exp.mesh.shape), per_device, compiled_bytes, device_limit())


def _gib(n: int) -> str:
  return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def report(plan: Plan) -> str:
  lines = [f"mesh {plan.mesh} ({math.prod(plan.mesh.values())} devices); per device:"]
  for name, n in plan.per_device.items():
    lines.append(f"  {name:<18} {_gib(n)}")
  lines.append(f"  {'peak (compiled)':<18} {_gib(plan.peak)} (arguments {_gib(plan.compiled['argument'])}"
               f" + outputs not aliased to them {_gib(plan.compiled['output'] - plan.compiled['alias'])}"
               f" + temporaries {_gib(plan.compiled['temp'])})")
  if plan.device_limit is None:
    lines.append("  device memory: not reported by this backend; fit not checked")
  else:
    lines.append(f"  device memory {_gib(plan.device_limit)}: "
                 + ("fits" if plan.fits() else "DOES NOT FIT"))
  return "\n".join(lines)


def check_fits(plan: Plan) -> None:
  """A UserError naming the largest consumer and the keys that shrink it when it cannot fit."""
  if plan.fits() is False:
    name, n = max(plan.per_device.items(), key=lambda kv: kv[1])
    raise UserError(f"the run needs {_gib(plan.peak)} per device and the device has "
                    f"{_gib(plan.device_limit)}; the largest consumer is {name} ({_gib(n)}); "
                    f"shrink it with {SHRINK[name]}")
