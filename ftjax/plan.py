"""What a run needs per device, before any weight is read.

  python -m ftjax.plan --config configs/x.py[:arg] [--config.K=V ...]

Builds the experiment abstractly (`train.build_experiment(cfg, abstract=True)`: the model, the
method and the optimizer state as shapes with their shardings; the data is loaded, no weight is
read), compiles the train step on it for the largest batch the data can give, and prints per
device: the bytes of the parameters (trainable and frozen), of the optimizer state, and the
compiled step's arguments, outputs and temporaries (`memory_analysis()`), the mesh, and whether
that fits the device's memory where the backend reports it (GPUs and TPUs do; CPUs do not). A
config that cannot fit is an error naming the largest consumer and the config keys that shrink
it, before any weight has been read.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from ftjax import cli, sharding, train
from ftjax.errors import UserError

SHRINK = {
    "frozen params": "mesh.shape (more fsdp), model.param_dtype=bfloat16, method (LoRA/QLoRA)",
    "trainable params": "mesh.shape (more fsdp), model.trainable_dtype, method",
    "optimizer state": "mesh.shape (more fsdp), optimizer.name (adafactor, sgd), method",
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
  size = train.local_batch_size(cfg.train.batch_size, exp.mesh, cfg.train.grad_accum_steps)
  batch = next(iter(exp.dataset.train_iterator(size, seed=cfg.seed, shard_index=0,
                                               shard_count=1)))
  length = cfg.data.max_length
  spec = sharding.batch_sharding(exp.mesh)
  global_rows = size * jax.process_count()
  return {k: jax.ShapeDtypeStruct((global_rows,) + ((length,) if v.ndim >= 2 else ())
                                  + v.shape[2:], v.dtype, sharding=spec)
          for k, v in batch.items()}


def make_plan(cfg) -> Plan:
  exp = train.build_experiment(cfg, abstract=True)
  state = exp.state
  per_device = {"trainable params": _device_bytes(state.params),
                "frozen params": _device_bytes(state.frozen),
                "optimizer state": _device_bytes(state.opt_state)}
  step = jax.jit(train.make_train_step(exp.graphdef, exp.tx, exp.schedule, exp.task,
                                       cfg.train.grad_accum_steps),
                 in_shardings=(exp.state_shardings, sharding.batch_sharding(exp.mesh)),
                 out_shardings=(exp.state_shardings, sharding.replicated(exp.mesh)),
                 donate_argnums=0)
  analysis = step.lower(state, _largest_batch(exp)).compile().memory_analysis()
  compiled = {"argument": analysis.argument_size_in_bytes, "output": analysis.output_size_in_bytes,
              "alias": analysis.alias_size_in_bytes, "temp": analysis.temp_size_in_bytes,
              "code": analysis.generated_code_size_in_bytes}
  per_device["step temporaries"] = compiled["temp"]
  return Plan(dict(exp.mesh.shape), per_device, compiled, device_limit())


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


def _plan(cfg) -> None:
  sharding.initialize_distributed(cli.FLAGS.coordinator_address, cli.FLAGS.num_processes,
                                  cli.FLAGS.process_id)
  plan = make_plan(cfg)
  if jax.process_index() == 0:
    print(report(plan), flush=True)
  check_fits(plan)


def run() -> None:
  cli.run_config_command(_plan, optional_workdir=True)


if __name__ == "__main__":
  run()
