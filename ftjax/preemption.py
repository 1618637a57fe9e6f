"""SIGTERM handling: finish the current step, checkpoint, exit 0 (Cloud TPU / spot preemption)."""

from __future__ import annotations

import signal
import threading


class PreemptionGuard:
  """Records a SIGTERM; the training loop polls `requested` after each step."""

  def __init__(self, signals=(signal.SIGTERM,)):
    self.signals = signals
    self.received: int | None = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # signal handlers live there only
      for sig in self.signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, unused_frame):
    self.received = signum

  @property
  def requested(self) -> bool:
    return self.received is not None

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
