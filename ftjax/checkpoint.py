"""Orbax checkpoints of the train state together with the data iterator's state.

Saving the Grain iterator state with the model means a resumed run continues from the exact next
batch instead of replaying or skipping data. Orbax writes each step into a temporary directory
and renames it when complete, so a crash mid-save never leaves an unreadable *latest* step;
leftover temporary directories are cleaned up on the next start.

Two managers share the workdir:
  checkpoints/        the last `keep` full states (params, optimizer, rng, data) for resuming;
  checkpoints/best/   the best `keep_best` parameter sets by the eval metric, for eval/export.

Layer layouts (`model.scan_layers`): a checkpoint holds the layout it was trained with (layer
arrays `model.layers.{i}.*`, or stacked `model.layers.*` with a leading layer axis, in params,
frozen and the optimizer state alike). Restoring onto the other layout converts automatically:
the checkpoint's own tree (from its metadata) is restored, with shardings derived from the
target's, and its layer arrays are stacked or sliced into the target's paths
(`layer_stack.plan_conversion`), so a run can switch `model.scan_layers` and resume.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time

import jax
import orbax.checkpoint as ocp

from ftjax.errors import UserError
from ftjax.models import layer_stack

log = logging.getLogger("ftjax")

BEST_DIR = "best"


def _manager(directory: pathlib.Path, items, **options) -> ocp.CheckpointManager:
  # Handlers named up front (the ones the save/restore args imply) so that `item_metadata`
  # reads a checkpoint's tree before restoring it (the layer-layout check needs it).
  handlers = {name: ocp.JsonCheckpointHandler() if name == "data" else ocp.StandardCheckpointHandler()
              for name in items}
  return ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True, **options),
      item_handlers=handlers)


class Checkpointer:
  """Keeps the last `keep` checkpoints under `WORKDIR/checkpoints`, saved every `every_steps`."""

  def __init__(self, directory: os.PathLike, *, every_steps: int, keep: int):
    self.directory = pathlib.Path(directory).absolute()
    self.every_steps = every_steps
    self._manager = _manager(self.directory, ("state", "data"), max_to_keep=keep)

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
    """Restores onto `abstract_state` (ShapeDtypeStructs with shardings): any topology works."""
    try:
      restored = _restore(self._manager, step, "state", abstract_state,
                          data=ocp.args.JsonRestore())
    except Exception as e:  # Orbax raises many types for missing/truncated/corrupt files.
      raise CorruptCheckpointError(
          f"checkpoint step {step} in {self.directory} is unreadable "
          f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from e
    return restored["state"], restored["data"] or None

  def restore_latest_good(self, abstract_state, *, on_corrupt: str):
    """The newest readable checkpoint; older ones only with `on_corrupt='previous'`.

    Returns (step, state, data_state) or None when there is no checkpoint.
    """
    for step in reversed(self.all_steps()):
      try:
        state, data = self.restore(step, abstract_state)
        return step, state, data
      except CorruptCheckpointError as e:
        if on_corrupt != "previous":
          raise UserError(f"{e}; rerun with --config.checkpoint.on_corrupt=previous to fall back "
                          "to the previous checkpoint") from None
        # Set the bad step aside (kept for inspection, ignored by Orbax) so the rerun can
        # save that step again.
        aside = self.directory / f"corrupt_step_{step}_{int(time.time())}"
        os.rename(self.directory / str(step), aside)
        self._manager.reload()
        log.warning("%s; moved to %s, falling back to the previous checkpoint", e, aside)
        print(f"ftjax: warning: {e}; moved to {aside.name}, falling back to the previous "
              "checkpoint", flush=True)
    if self.all_steps():
      raise UserError(f"no readable checkpoint in {self.directory}")
    return None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


class CorruptCheckpointError(Exception):
  """A checkpoint step exists but cannot be restored."""


class BestCheckpointer:
  """Keeps the `keep` best parameter sets (trainable + frozen) by an eval metric."""

  def __init__(self, directory: os.PathLike, *, metric: str, mode: str, keep: int):
    self.directory = pathlib.Path(directory).absolute()
    self.metric = metric
    self._manager = _manager(
        self.directory, ("params",), max_to_keep=keep, best_mode=mode,
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


def _key_name(key) -> str:
  return jax.tree_util.keystr((key,), simple=True, separator="")


def _names(tree, is_leaf=None):
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return [tuple(_key_name(k) for k in path) for path, _ in leaves], [x for _, x in leaves], treedef


def _restore(manager: ocp.CheckpointManager, step: int, item: str, abstract, **other_args):
  """`manager.restore` of `item` onto `abstract` (plus `other_args` items), converting a
  checkpoint saved in the other layer layout (see the module docstring)."""
  converted = _layout_conversion(manager, step, item, abstract)
  if converted is None:
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


def _layout_conversion(manager, step: int, item: str, abstract):
  """(restore target in the checkpoint's own layout, function converting what it restores to
  `abstract`'s layout), or None when the layouts agree or do not correspond."""
  try:
    metadata = manager.item_metadata(step)[item]
  except Exception:  # pylint: disable=broad-except  (unreadable: the plain restore reports it)
    return None
  tree = getattr(metadata, "tree", metadata)
  if tree is None:
    return None
  is_meta = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")
  saved_names, saved_meta, _ = _names(tree, is_leaf=is_meta)
  if not all(is_meta(m) for m in saved_meta):
    return None
  target_names, target_leaves, target_def = _names(abstract)
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
    leaf, plan_step = feeds[tuple(_key_name(k) for k in path)]
    return jax.ShapeDtypeStruct(tuple(meta.shape), leaf.dtype,
                                sharding=layer_stack.saved_sharding(plan_step, leaf.sharding))

  saved_target = jax.tree_util.tree_map_with_path(abstract_saved, tree, is_leaf=is_meta)

  def finish(restored):
    names, values, _ = _names(restored)
    by_name = dict(zip(names, values))
    ordered = [by_name[n] for n in sorted(index, key=index.get)]

    def convert(values):
      return layer_stack.convert_leaves(plan, dict(zip(sorted(index, key=index.get), values)),
                                        target_names)

    out = jax.jit(convert, out_shardings=[x.sharding for x in target_leaves])(ordered)
    return jax.tree_util.tree_unflatten(target_def, out)

  return saved_target, finish
