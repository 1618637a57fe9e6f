"""Device mesh and shardings.

The mesh has the axes of `config.MESH_AXES` (data, fsdp, tensor). Batches are split over
`data` and `fsdp`; for now parameters and optimizer state are replicated (logical-axis rules
that shard them over `fsdp`/`tensor` plug in at `state_shardings`).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from ftjax.config import MESH_AXES
from ftjax.errors import UserError

BATCH_AXES = ("data", "fsdp")


def resolve_mesh_shape(shape, num_devices: int) -> tuple[int, ...]:
  shape = list(shape)
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise UserError(f"config key 'mesh.shape' {tuple(shape)} does not divide {num_devices} devices")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise UserError(f"config key 'mesh.shape' {tuple(shape)} needs {math.prod(shape)} devices, "
                    f"there are {num_devices}")
  return tuple(shape)


def make_mesh(shape) -> jax.sharding.Mesh:
  """A mesh over all global devices (every process), GSPMD-style (Auto) axes."""
  shape = resolve_mesh_shape(shape, jax.device_count())
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_shardings(state, mesh):
  """Shardings for the train state: replicated for now."""
  return jax.tree.map(lambda _: replicated(mesh), state)


def batch_divisor(mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def put_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles the global batch from each process's local slice (no cross-host copies)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
