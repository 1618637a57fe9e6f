"""Orbax checkpoints of the train state together with the data iterator's state.

Saving the Grain iterator state with the model means a resumed run continues from the exact next
batch instead of replaying or skipping data. Orbax writes each step into a temporary directory
and renames it when complete, so a crash mid-save never leaves an unreadable *latest* step;
leftover temporary directories are cleaned up on the next start.

Two managers share the workdir:
  checkpoints/        the last `keep` full states (params, optimizer, rng, data) for resuming;
  checkpoints/best/   the best `keep_best` parameter sets by the eval metric, for eval/export.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time

import jax
import orbax.checkpoint as ocp

from ftjax.errors import UserError

log = logging.getLogger("ftjax")

BEST_DIR = "best"


def _manager(directory: pathlib.Path, items, **options) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True, **options),
      item_names=items)


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
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=ocp.args.JsonRestore()))
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
    return self._manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract)))["params"]

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree):
  """ShapeDtypeStructs carrying each leaf's sharding: the restore target for Orbax."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
