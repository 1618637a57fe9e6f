"""Device mesh and shardings, declared by logical axis names (DESIGN.md principle 6).

The mesh has the axes of `config.MESH_AXES` (data, fsdp, tensor). Batches are split over
`data` and `fsdp`. Parameters carry logical axis names (`out_sharding` metadata such as
('embed', 'heads')); `config.mesh.rules` maps each logical name to mesh axes, so FSDP (shard
'embed' over `fsdp`) and tensor parallelism (shard 'heads'/'mlp'/'vocab' over `tensor`) are a
config change. A dimension that a mesh axis does not divide stays replicated along it, so one
config runs unchanged from 1 CPU to a pod slice. Optimizer state follows its parameter.
"""

from __future__ import annotations

import logging
import math

import jax
import numpy as np
from jax._src import clusters as jax_clusters
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from ftjax.config import MESH_AXES
from ftjax.errors import UserError

log = logging.getLogger("ftjax")

BATCH_AXES = ("data", "fsdp")


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None) -> None:
  """Joins a multi-process run: explicit coordinator flags, or the launcher's environment.

  Without flags, jax.distributed's own cluster detection decides (SLURM `srun`, Open MPI
  `mpirun`, Kubernetes Job/JobSet, Cloud TPU VMs and GKE TPU slices), and the run joins when
  the detected launcher started more than one process. Must run before anything touches a
  device. Outside a launcher, or with one process, it does nothing.
  """
  explicit = coordinator_address is not None
  if explicit and (num_processes is None or process_id is None):
    raise UserError("--coordinator_address needs --num_processes and --process_id")
  if explicit:
    jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)
    return
  cluster = detected_cluster()
  if cluster is None or cluster[1] <= 1:
    return
  jax.distributed.initialize()  # jax detects the same environment and reads its topology
  print(f"ftjax: joined a {jax.process_count()}-process run ({cluster[0]}) as process "
        f"{jax.process_index()}", flush=True)


def detected_cluster() -> tuple[str, int] | None:
  """(name, process count) of the launcher environment `jax.distributed.initialize()` would
  use, or None outside one. The same choice as jax's (first present, opt-in-only ones skipped),
  read from its registry of `ClusterEnv`s, which has no public API."""
  env = next((env for env in jax_clusters.ClusterEnv._cluster_types  # pylint: disable=protected-access
              if not env.opt_in_only_method and env.is_env_present()), None)
  if env is None:
    return None
  name = env.name or env.__name__
  try:
    return name, env.get_process_count()
  except Exception as e:  # pylint: disable=broad-except  (e.g. a Kubernetes pod outside a Job)
    log.warning("%s environment without a readable process count (%s); running as one process", name, e)
    print(f"ftjax: warning: jax detected a {name} environment but cannot read its process count "
          f"({type(e).__name__}: {e}); running as one process (--coordinator_address, "
          "--num_processes and --process_id join explicitly)", flush=True)
    return None


def max_over_processes(values: np.ndarray) -> np.ndarray:
  """The elementwise maximum of a host array of the same shape on every process."""
  return np.asarray(multihost_utils.process_allgather(np.asarray(values))).max(axis=0)


def process_zero_first(fn, name: str):
  """Runs `fn` on process 0, then on the others (e.g. a dataset build into a shared cache)."""
  if jax.process_count() == 1:
    return fn()
  if jax.process_index() != 0:
    multihost_utils.sync_global_devices(f"ftjax:{name}")
  result = fn()
  if jax.process_index() == 0:
    multihost_utils.sync_global_devices(f"ftjax:{name}")
  return result


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


# Logical axis -> mesh axes. The defaults give FSDP over `fsdp` and Megatron-style tensor
# parallelism over `tensor`; a mesh axis of size 1 makes the rule a no-op.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("expert", "fsdp"),  # a mixture of experts' experts: expert parallelism over the fsdp axis
)


def _as_axes(value) -> tuple[str, ...]:
  if value is None:
    return ()
  return (value,) if isinstance(value, str) else tuple(value)


def mesh_spec(logical: tuple, shape: tuple[int, ...], mesh, rules) -> P:
  """Maps a logical PartitionSpec onto `mesh`, replicating dims the mesh axes don't divide."""
  rules = dict(rules)
  used: set[str] = set()
  out = []
  for i, dim in enumerate(shape):
    name = logical[i] if i < len(logical) else None
    axes = tuple(a for a in _as_axes(rules.get(name)) if a not in used and mesh.shape[a] > 1)
    if axes and dim % math.prod(mesh.shape[a] for a in axes) == 0:
      used.update(axes)
      out.append(axes[0] if len(axes) == 1 else axes)
    else:
      out.append(None)
  return P(*out)


def variable_shardings(state, mesh, rules):
  """NamedShardings for an NNX state from its variables' logical-axis metadata."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  logical = nnx.get_partition_spec(state)
  return jax.tree.map(
      lambda spec, x: NamedSharding(mesh, mesh_spec(tuple(spec or ()), x.shape, mesh, rules)),
      logical, state)


def variable_sharding(variable, mesh, rules) -> NamedSharding:
  """The NamedSharding of one NNX variable (real or abstract) from its logical-axis metadata."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  spec = nnx.get_partition_spec(variable).get_value()
  shape = variable.get_value().shape
  return NamedSharding(mesh, mesh_spec(tuple(spec or ()), shape, mesh, rules))


def follow_params(tree, params, param_shardings, mesh):
  """Shardings for an optimizer state: each leaf follows the parameter whose path it ends with.

  Optax states hold per-parameter trees (mu, nu, ...) under their own prefixes; matching by
  key-path suffix finds each leaf's parameter without knowing the optimizer. Scalars (step
  counts) and unmatched leaves are replicated.
  """
  by_path = {}
  for (path, param), sharding in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                     jax.tree.leaves(param_shardings)):
    by_path[tuple(path)] = (sharding, param.shape)
  lengths = sorted({len(p) for p in by_path}, reverse=True)

  def find(path, leaf):
    for n in lengths:
      match, shape = by_path.get(tuple(path[-n:]), (None, None)) if len(path) >= n else (None, None)
      # Only a leaf of its parameter's shape: Adafactor's factored rows/columns are not.
      if match is not None and tuple(leaf.shape) == tuple(shape) and getattr(leaf, "ndim", 0):
        return match
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(find, tree)


def batch_divisor(mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def put_global(tree, shardings):
  """Places host values (identical on every process) onto global shardings.

  Every process holds the whole value (e.g. weights read from the checkpoint); each fills only
  its addressable shards, so no cross-host transfer is needed.
  """
  def put(x, s):
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, s, lambda index: host[index])
  return jax.tree.map(put, tree, shardings)


def put_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles the global batch from each process's local slice (no cross-host copies)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
