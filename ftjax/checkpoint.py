"""Orbax checkpoints of the train state together with the data iterator's state.

Saving the Grain iterator state with the model means a resumed run continues from the exact next
batch instead of replaying or skipping data.
"""

from __future__ import annotations

import os
import pathlib

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Keeps the last `keep` checkpoints under `WORKDIR/checkpoints`, saved every `every_steps`."""

  def __init__(self, directory: os.PathLike, *, every_steps: int, keep: int):
    self.directory = pathlib.Path(directory).absolute()
    self.every_steps = every_steps
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True),
        item_names=("state", "data"),
    )

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
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"] or None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree):
  """ShapeDtypeStructs carrying each leaf's sharding: the restore target for Orbax."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
