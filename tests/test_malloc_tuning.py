"""ftjax.malloc_tuning: the entry points re-execute once with glibc's huge-page tunable, which
cuts the page faults of XLA:CPU-sized allocations (a fresh mmap per block) by orders of magnitude."""

import os
import pathlib
import subprocess
import sys

import pytest

from ftjax import malloc_tuning

REPO = pathlib.Path(__file__).resolve().parents[1]
# Allocates and frees a 256 MB block 8 times, touching every page: what XLA:CPU does with a
# step's temporaries. Prints the tunable it ran with and its minor page faults.
# Through libc's malloc, as XLA's allocator does (numpy asks for huge pages itself).
CHILD = """
import ctypes, os, resource
from ftjax import malloc_tuning
malloc_tuning.reexec_with_huge_pages()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
  block = libc.malloc(256 * 2**20)
  ctypes.memset(block, 1, 256 * 2**20)
  libc.free(block)
print(os.environ.get("GLIBC_TUNABLES"), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def run_child(**env):
  out = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True,
                       env={**{k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}, **env},
                       timeout=120, check=True).stdout.split()
  return (None if out[0] == "None" else out[0]), int(out[1])


@pytest.mark.skipif(not malloc_tuning._helps(), reason="needs Linux, glibc >= 2.35 and THP in madvise mode")
def test_reexec_sets_the_tunable_once_and_cuts_page_faults():
  tunables, faults = run_child()
  assert tunables == "glibc.malloc.hugetlb=1"
  untuned_tunables, untuned_faults = run_child(FTJAX_MALLOC_TUNING="0")
  assert untuned_tunables is None
  assert untuned_faults > 8 * 60_000  # 4 KiB pages: ~65k faults per 256 MB block
  assert faults < untuned_faults / 4, (faults, untuned_faults)
  # A user's own tunables are kept, and no second re-exec happens once it is set.
  kept, _ = run_child(GLIBC_TUNABLES="glibc.malloc.arena_max=4")
  assert kept == "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"


def test_helps_only_where_the_tunable_exists(monkeypatch):
  monkeypatch.setenv("FTJAX_MALLOC_TUNING", "0")
  assert not malloc_tuning._helps()
  monkeypatch.delenv("FTJAX_MALLOC_TUNING")
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")  # the user's choice stands
  assert not malloc_tuning._helps()
  monkeypatch.delenv("GLIBC_TUNABLES")
  monkeypatch.setattr(malloc_tuning.platform, "libc_ver", lambda: ("glibc", "2.31"))
  assert not malloc_tuning._helps()
