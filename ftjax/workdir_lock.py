"""One workdir, one writer: an exclusive lock held for the life of a run.

`fcntl.flock` is released by the kernel when the process dies, even on SIGKILL, so a crashed
run never leaves a stale lock behind; the file's content (pid and host) names the holder in the
error a second process gets. Local and NFS-like filesystems only (object stores such as GCS
have no locks; there the lock is skipped with a warning).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pathlib
import socket

from ftjax.errors import UserError

log = logging.getLogger("ftjax")
LOCK_FILE = ".ftjax.lock"


class WorkdirLock:
  def __init__(self, workdir: os.PathLike):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self._fd = None

  def acquire(self) -> "WorkdirLock":
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
      except ValueError:
        holder = {}
      os.close(fd)
      raise UserError(
          f"workdir '{self.path.parent}' is in use by another ftjax run (pid {holder.get('pid', '?')} "
          f"on host {holder.get('host', '?')}); wait for it to finish or use another --workdir") from None
    except OSError as e:  # a filesystem without locks
      log.warning("cannot lock %s (%s); not guarding against concurrent runs", self.path, e)
      os.close(fd)
      return self
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
