"""Best-step tracking and early stopping over the eval history."""

from __future__ import annotations

from ftjax.errors import UserError


class EarlyStopping:
  """Tracks the best eval metric; `should_stop` after `patience` evals without improvement.

  The state is a pure function of the eval history, so a resumed run rebuilds it exactly by
  replaying the eval records from metrics.jsonl.
  """

  def __init__(self, metric: str, mode: str, *, patience: int = 0, min_delta: float = 0.0):
    self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
    self.best: dict | None = None
    self.bad_evals = 0

  def improved(self, value: float) -> bool:
    if self.best is None:
      return True
    best = self.best[self.metric]
    return value > best + self.min_delta if self.mode == "max" else value < best - self.min_delta

  def update(self, record: dict) -> bool:
    """Feeds one eval record (`step` + metrics); returns whether it is the new best."""
    if self.metric not in record:
      raise UserError(f"eval metric '{self.metric}' (config key eval.metric) not among "
                     f"{sorted(k for k in record if k not in ('step', 'split'))}")
    if self.improved(record[self.metric]):
      self.best, self.bad_evals = dict(record), 0
      return True
    self.bad_evals += 1
    return False

  @property
  def should_stop(self) -> bool:
    return self.patience > 0 and self.bad_evals >= self.patience
