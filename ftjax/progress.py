"""A progress bar for the training loop: step, loss, examples/s and ETA (tqdm)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


class Progress:
  def __init__(self, total_steps: int, start_step: int, *, enabled: bool):
    self._bar = None
    if enabled:
      self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                       file=sys.stderr, dynamic_ncols=True, mininterval=1.0)
    self._step = start_step

  def update(self, step: int) -> None:
    if self._bar is not None:
      self._bar.update(step - self._step)
    self._step = step

  def set_postfix(self, **values) -> None:
    if self._bar is not None:
      self._bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
