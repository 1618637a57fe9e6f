"""SIGTERM handling: finish the current step, checkpoint, exit 0 (Cloud TPU / spot preemption).

One process: a Python SIGTERM handler records the signal and the loop stops after the step.
Several processes: a SIGTERM reaches one host (or some), but all must save the same step, so
JAX's preemption sync manager (started by `jax.distributed.initialize`, with its own SIGTERM
handler) propagates the notice and `multihost_utils.reached_preemption_sync_point(step)` turns
true on every process at the same step. No Python handler is installed then: it would replace
JAX's and keep the notice from the other processes.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


def _multihost_sync() -> bool:
  """A multi-process run whose `jax.distributed.initialize` started the sync manager."""
  return jax.process_count() > 1 and bool(jax.config.jax_enable_preemption_service)


class PreemptionGuard:
  """The training loop asks `reached(step)` after every step, on every process."""

  def __init__(self, signals=(signal.SIGTERM,)):
    self.signals = signals
    self.received: int | None = None
    self._previous = {}
    self._multihost = False

  def __enter__(self):
    self._multihost = _multihost_sync()
    if not self._multihost and threading.current_thread() is threading.main_thread():
      for sig in self.signals:  # signal handlers live in the main thread only
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, unused_frame):
    self.received = signum

  def reached(self, step: int) -> bool:
    """True when the run should save and stop after `step` (the same step on every process)."""
    if self._multihost and self.received is None:
      if multihost_utils.reached_preemption_sync_point(step):
        self.received = signal.SIGTERM
    return self.received is not None

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
