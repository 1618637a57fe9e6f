"""Orbax checkpoints of the train state together with the data iterator's state.

Saving the Grain iterator state with the model means a resumed run continues from the exact next
batch instead of replaying or skipping data. Orbax writes each step into a temporary directory
and renames it when complete (on `gs://`, where a rename is a copy, it writes a
`commit_success.txt` marker instead), so a crash mid-save never leaves an unreadable *latest* step;
leftover temporary directories are cleaned up on the next start.

Two managers share the workdir:
  checkpoints/        the last `keep` train states for resuming: trainable params, optimizer,
                      rng, step, data state; the frozen variables are left out (the caller
                      passes them, `train.restore.checkpointed`) and rebuilt from the base;
  checkpoints/best/   the best `keep_best` trainable parameter sets by the eval metric.

Layer layouts (`model.scan_layers`): a checkpoint holds the layout it was trained with (layer
arrays `model.layers.{i}.*`, or stacked `model.layers.*` with a leading layer axis, in params,
frozen and the optimizer state alike). Restoring onto the other layout converts automatically:
the checkpoint's own tree (from its metadata) is restored, with shardings derived from the
target's, and its layer arrays are stacked or sliced into the target's paths
(`layer_stack.plan_conversion`), so a run can switch `model.scan_layers` and resume.

Integrity versus mismatch: before a restore the checkpoint's tree (its metadata) is compared with
the target's. A good checkpoint that does not fit this run (a changed `method.lora.rank`, another
method or model) is a `CheckpointMismatchError`, a `UserError` naming the first differing key and
both shapes, and is never set aside. Only a checkpoint that fits but cannot be read (missing,
truncated or corrupt files) is a `CorruptCheckpointError`, which `checkpoint.on_corrupt=previous`
moves aside; process 0 alone renames, the others wait for it. Dtypes are not compared: Orbax casts
a restored array to the target's dtype.
"""

from __future__ import annotations

import logging
import os
import time

from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from ftjax.errors import UserError
from ftjax.models import layer_stack
from ftjax.paths import as_path, is_local

log = logging.getLogger("ftjax")

BEST_DIR = "best"


def _manager(directory: epath.Path, items, barrier_prefix: str, **options) -> ocp.CheckpointManager:
  # Each manager's own barrier names: Orbax names a save's cross-process barriers by its step
  # alone, so the state and best managers saving the same step on several processes would
  # otherwise join (or refuse, "already ongoing") each other's barriers.
  # Handlers named up front (the ones the save/restore args imply) so that `item_metadata`
  # reads a checkpoint's tree before restoring it (the layer-layout check needs it).
  handlers = {name: ocp.JsonCheckpointHandler() if name == "data" else ocp.StandardCheckpointHandler()
              for name in items}
  return ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True, **options,
                                           multiprocessing_options=ocp.options.MultiprocessingOptions(
                                               barrier_sync_key_prefix=barrier_prefix)),
      item_handlers=handlers)


def _absolute(directory: os.PathLike) -> epath.Path:
  """Orbax wants an absolute path; a URL (`gs://`) is one already."""
  path = as_path(directory)
  return path.absolute() if is_local(path) else path


class Checkpointer:
  """Keeps the last `keep` checkpoints under `WORKDIR/checkpoints`, saved every `every_steps`."""

  def __init__(self, directory: os.PathLike, *, every_steps: int, keep: int):
    self.directory = _absolute(directory)
    self.every_steps = every_steps
    self._manager = _manager(self.directory, ("state", "data"), "ftjax_state", max_to_keep=keep)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return step % self.every_steps == 0

  def save(self, step: int, state, data_state: dict | None) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state or {})), force=True)

  def restore(self, step: int, abstract_state):
    """Restores onto `abstract_state` (ShapeDtypeStructs with shardings): any topology works.

    Raises `CheckpointMismatchError` when the checkpoint's tree does not fit the target and
    `CorruptCheckpointError` when it fits but cannot be read.
    """
    try:
      restored = _restore(self._manager, step, "state", abstract_state,
                          data=ocp.args.JsonRestore())
    except CheckpointMismatchError:
      raise
    except Exception as e:  # Orbax raises many types for missing/truncated/corrupt files.
      raise _unreadable(f"checkpoint step {step} in {self.directory}", e) from e
    return restored["state"], restored["data"] or None

  def restore_part(self, step: int, abstract_part: dict):
    """Restores only the top-level entries of `abstract_part` (e.g. the params and step, without
    the optimizer state an evaluation has no use for), reading nothing else, and the data item.
    The layer layout must be the checkpoint's own (the run's config)."""
    where = f"checkpoint step {step} in {self.directory}"
    saved = _saved_leaves(self._manager, step, "state")
    if saved is not None:
      names = set(abstract_part)
      kept = [(n, m) for n, m in zip(saved[1], saved[2]) if n[0] in names]
      _check_fits([n for n, _ in kept], [m for _, m in kept], abstract_part, where)
    reader = ocp.CheckpointManager(self.directory, item_handlers={
        "state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler()})
    try:
      restored = reader.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
              item=abstract_part, partial_restore=True,
              restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_part)),
          data=ocp.args.JsonRestore()))
    except CheckpointMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (as in `restore`)
      raise _unreadable(where, e) from e
    finally:
      reader.close()
    return restored["state"], restored["data"] or None

  def restore_latest_good(self, abstract_state, *, on_corrupt: str):
    """The newest readable checkpoint; older ones only with `on_corrupt='previous'`.

    Returns (step, state, data_state) or None when there is no checkpoint.
    """
    for step in reversed(self.all_steps()):
      error = None
      try:  # A mismatch (a UserError) propagates: the checkpoint is good, the config changed.
        state, data = self.restore(step, abstract_state)
      except CorruptCheckpointError as e:
        error = e
      # Each process reads its own shards: the step is good only if it was good everywhere.
      if _all_processes(error is None):
        return step, state, data
      error = error or CorruptCheckpointError(
          f"checkpoint step {step} in {self.directory} is unreadable on another process")
      if on_corrupt != "previous":
        raise UserError(f"{error}; rerun with --config.checkpoint.on_corrupt=previous to fall "
                        "back to the previous checkpoint") from None
      self._set_aside(step, error)
    if self.all_steps():
      raise UserError(f"no readable checkpoint in {self.directory}")
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    """Moves an unreadable step aside (kept for inspection, ignored by Orbax) so the rerun can
    save that step again; process 0 renames, the others wait for it and then reload."""
    stamp = _broadcast_int(int(time.time()))
    aside = self.directory / f"corrupt_step_{step}_{stamp}"
    if jax.process_index() == 0:
      (self.directory / str(step)).rename(aside)  # on an object store a copy, then a delete
      log.warning("%s; moved to %s, falling back to the previous checkpoint", error, aside)
      print(f"ftjax: warning: {error}; moved to {aside.name}, falling back to the previous "
            "checkpoint", flush=True)
    _barrier(f"ftjax:set_aside_{step}")
    self._manager.reload()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


class CorruptCheckpointError(Exception):
  """A checkpoint step exists, fits the target, but cannot be read (an integrity error)."""


def _unreadable(where: str, e: Exception) -> "CorruptCheckpointError":
  return CorruptCheckpointError(
      f"{where} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")


class CheckpointMismatchError(UserError):
  """A readable checkpoint whose tree does not fit this run's state (the config changed)."""


def _all_processes(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _broadcast_int(value: int) -> int:
  """Process 0's value on every process (so all name the set-aside directory alike)."""
  if jax.process_count() == 1:
    return value
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


class BestCheckpointer:
  """Keeps the `keep` best parameter sets (trainable + frozen) by an eval metric."""

  def __init__(self, directory: os.PathLike, *, metric: str, mode: str, keep: int):
    self.directory = _absolute(directory)
    self.metric = metric
    self._manager = _manager(
        self.directory, ("params",), "ftjax_best", max_to_keep=keep, best_mode=mode,
        best_fn=lambda metrics: metrics[metric], keep_checkpoints_without_metrics=False)

  def save(self, step: int, params_and_frozen, metrics: dict) -> None:
    if step in self._manager.all_steps():
      return  # a resumed run recomputed this step bit-identically: the saved one stands
    self._manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params_and_frozen)),
                       metrics={self.metric: float(metrics[self.metric])}, force=True)

  def best_step(self) -> int | None:
    return self._manager.best_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def restore(self, step: int, abstract):
    return _restore(self._manager, step, "params", abstract)["params"]

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree):
  """ShapeDtypeStructs carrying each leaf's sharding: the restore target for Orbax."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _restore(manager: ocp.CheckpointManager, step: int, item: str, abstract, **other_args):
  """`manager.restore` of `item` onto `abstract` (plus `other_args` items), converting a
  checkpoint saved in the other layer layout (see the module docstring); a checkpoint whose tree
  fits neither layout is a `CheckpointMismatchError`."""
  saved = _saved_leaves(manager, step, item)
  converted = None if saved is None else _layout_conversion(saved, abstract)
  if converted is None:
    if saved is not None:
      _check_fits(saved[1], saved[2], abstract, f"checkpoint step {step} in {manager.directory}")
    return manager.restore(step, args=ocp.args.Composite(
        **{item: ocp.args.StandardRestore(abstract)}, **other_args))
  saved_target, finish = converted
  restored = manager.restore(step, args=ocp.args.Composite(
      **{item: ocp.args.StandardRestore(saved_target)}, **other_args))
  out = {name: restored[name] for name in (item, *other_args)}
  out[item] = finish(restored[item])
  log.info("converted checkpoint step %d in %s to this run's layer layout", step, manager.directory)
  if jax.process_index() == 0:
    print(f"ftjax: converted checkpoint step {step} in {manager.directory} to this run's layer "
          "layout (model.scan_layers)", flush=True)
  return out


def _is_meta(x) -> bool:
  return hasattr(x, "shape") and hasattr(x, "dtype")


def _saved_leaves(manager, step: int, item: str):
  """(tree metadata, leaf names, leaf metadata) of a saved item, or None when its metadata is
  unreadable or has no shapes (then the plain restore reports what is wrong)."""
  try:
    metadata = manager.item_metadata(step)[item]
  except Exception:  # pylint: disable=broad-except
    return None
  tree = getattr(metadata, "tree", metadata)
  if tree is None:
    return None
  saved_names, saved_meta, _ = layer_stack.named_leaves(tree, is_leaf=_is_meta)
  if not all(_is_meta(m) for m in saved_meta):
    return None
  return tree, saved_names, saved_meta


def _check_fits(saved_names, saved_meta, abstract, where: str) -> None:
  """Raises `CheckpointMismatchError` naming the first key whose presence or shape differs."""
  saved = {n: tuple(m.shape) for n, m in zip(saved_names, saved_meta)}
  target_names, target_leaves, _ = layer_stack.named_leaves(abstract)
  target = {n: tuple(x.shape) for n, x in zip(target_names, target_leaves)}
  if any(n[0] == "frozen" for n in saved) and not any(n[0] == "frozen" for n in target):
    raise CheckpointMismatchError(
        f"{where} holds the frozen variables: an ftjax from before checkpoints left them out "
        "(rebuilding them from the base checkpoint) wrote it; resume it with that version, or "
        "start a new workdir")
  for name in sorted(set(saved) | set(target)):
    if saved.get(name) != target.get(name):
      shape = lambda s: "absent" if s is None else f"shape {s}"
      raise CheckpointMismatchError(
          f"{where} does not fit this run: '{'.'.join(name)}' has {shape(saved.get(name))} in "
          f"the checkpoint and {shape(target.get(name))} in this run (did the config change, "
          "e.g. method.* or model.*?); rerun with the checkpoint's config or another workdir")


def _layout_conversion(saved_leaves, abstract):
  """(restore target in the checkpoint's own layout, function converting what it restores to
  `abstract`'s layout), or None when the layouts agree or do not correspond. `saved_leaves` is
  `_saved_leaves`' answer."""
  tree, saved_names, saved_meta = saved_leaves
  target_names, target_leaves, target_def = layer_stack.named_leaves(abstract)
  plan = layer_stack.plan_conversion(
      {n: tuple(x.shape) for n, x in zip(target_names, target_leaves)},
      {n: tuple(m.shape) for n, m in zip(saved_names, saved_meta)})
  if plan is None:
    return None
  feeds = {}  # saved name -> (target leaf, plan step) it feeds
  for name, leaf in zip(target_names, target_leaves):
    plan_step = plan[name]
    for saved in (plan_step[1] if plan_step[0] == "stack" else (plan_step[1],)):
      feeds[saved] = (leaf, plan_step)
  index = {name: i for i, name in enumerate(saved_names)}

  def abstract_saved(path, meta):
    leaf, plan_step = feeds[tuple(layer_stack.key_name(k) for k in path)]
    return jax.ShapeDtypeStruct(tuple(meta.shape), leaf.dtype,
                                sharding=layer_stack.saved_sharding(plan_step, leaf.sharding))

  saved_target = jax.tree_util.tree_map_with_path(abstract_saved, tree, is_leaf=_is_meta)

  def finish(restored):
    names, values, _ = layer_stack.named_leaves(restored)
    by_name = dict(zip(names, values))
    ordered = [by_name[n] for n in sorted(index, key=index.get)]

    def convert(values):
      return layer_stack.convert_leaves(plan, dict(zip(sorted(index, key=index.get), values)),
                                        target_names)

    out = jax.jit(convert, out_shardings=[x.sharding for x in target_leaves])(ordered)
    return jax.tree_util.tree_unflatten(target_def, out)

  return saved_target, finish
