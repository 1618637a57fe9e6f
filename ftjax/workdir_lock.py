"""One workdir, one writer: an exclusive `filelock.FileLock` held for the life of a run.

The lock is an `flock`, which the kernel releases when the process dies, even on SIGKILL, so a
crashed run never leaves a stale lock behind. The holder's pid and host go in a file of their own
(the lock file's content is filelock's) and name the holder in the error a second run gets.
Filesystems without locks skip the lock with a warning: an object store (a `gs://` workdir) has
none at all, and filelock's soft fallback is off because a soft lock outlives a killed run.
"""

from __future__ import annotations

import json
import logging
import os
import socket

import filelock

from ftjax.errors import UserError
from ftjax.paths import as_path, is_local

log = logging.getLogger("ftjax")
LOCK_FILE = ".ftjax.lock"
HOLDER_FILE = ".ftjax.lock.holder"


class WorkdirLock:
  def __init__(self, workdir: os.PathLike):
    self.path = as_path(workdir) / LOCK_FILE
    self._lock = None
    if is_local(self.path):
      self._lock = filelock.FileLock(self.path, timeout=0, fallback_to_soft=False)

  def acquire(self) -> "WorkdirLock":
    if self._lock is None:
      log.warning("workdir '%s' is on an object store, which has no locks; not guarding against "
                  "concurrent runs", self.path.parent)
      return self
    holder = self.path.with_name(HOLDER_FILE)
    try:
      self._lock.acquire()
    except filelock.Timeout:
      try:
        who = json.loads(holder.read_text())
      except (OSError, ValueError):
        who = {}
      raise UserError(
          f"workdir '{self.path.parent}' is in use by another ftjax run (pid {who.get('pid', '?')} "
          f"on host {who.get('host', '?')}); wait for it to finish or use another --workdir") from None
    except OSError as e:  # a filesystem without locks
      log.warning("cannot lock %s (%s); not guarding against concurrent runs", self.path, e)
      return self
    holder.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    return self

  def release(self) -> None:
    if self._lock is not None and self._lock.is_locked:
      self._lock.release()

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
