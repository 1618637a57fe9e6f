"""XLA:CPU's per-step temporaries under glibc: transparent huge pages, set up by one re-exec.

XLA:CPU allocates each execution's temporaries as one block (753 MB for the quickstart's
step), which glibc serves from a fresh `mmap` and unmaps after it: every step faults the block
in again, 4 KiB at a time (~200k page faults per quickstart step, 26 of its 105 CPU seconds
over 60 steps spent in the kernel). glibc's `glibc.malloc.hugetlb=1` tunable marks those
mappings for transparent huge pages (2 MiB: 512x fewer faults), which took the quickstart from
49 to 58 examples/s with the same peak memory (2026-12-07, 2-core AMD EPYC). Tunables are read
only at process start, so a command's entry point re-executes itself once with the tunable set,
before its heavy imports. Skipped where it cannot help (not Linux + glibc >= 2.35, or
transparent huge pages not in `madvise` mode), when GLIBC_TUNABLES already names it, and with
FTJAX_MALLOC_TUNING=0.
"""

import os
import pathlib
import platform
import sys

_TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _helps() -> bool:
  if sys.platform != "linux" or os.environ.get("FTJAX_MALLOC_TUNING", "1") == "0":
    return False
  if "glibc.malloc.hugetlb" in os.environ.get("GLIBC_TUNABLES", ""):
    return False  # already set (by us, before the re-exec, or by the user)
  libc, version = platform.libc_ver()
  if libc != "glibc" or tuple(int(p) for p in version.split(".")[:2]) < (2, 35):
    return False
  try:  # "always" needs no hint; "never" ignores it
    return "[madvise]" in _THP_MODE.read_text()
  except OSError:
    return False


def reexec_with_huge_pages() -> None:
  """Re-executes this process (same pid, argv and open files) with the tunable, if it helps."""
  if not _helps():
    return
  tunables = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), _TUNABLE]))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, {**os.environ, "GLIBC_TUNABLES": tunables})
