"""An endless, per-epoch reshuffled view of a finite Grain `MapDataset`.

Grain's own `shuffle().repeat()` computes every index with a Feistel `index_shuffle`; on
this machine that costs ~0.4 ms per element for small datasets (2.5k examples/s at 40
rows) and ~40 us at 10k rows. A numpy permutation per epoch costs O(n) once per epoch and
O(1) per element, so the pipeline stays far ahead of the train step. Like Grain's, it is
index-based: element k is a pure function of (seed, k), so iterator state is one integer.
"""

import sys

import grain
import numpy as np


class EpochShuffleMapDataset(grain.MapDataset):
  """Element k is item `perm_e[k % n]` of the parent, where e = k // n."""

  def __init__(self, parent: grain.MapDataset, *, seed: int):
    super().__init__(parent)
    self._seed = int(seed)
    self._n = len(parent)
    self._perms = {}  # epoch -> permutation; at most two epochs are live at a time.

  def __len__(self) -> int:
    return sys.maxsize

  def _permutation(self, epoch: int) -> np.ndarray:
    perm = self._perms.get(epoch)
    if perm is None:
      perm = np.random.default_rng([self._seed, epoch]).permutation(self._n)
      self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
      self._perms[epoch] = perm
    return perm

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, position = divmod(index, self._n)
    return self._parent[int(self._permutation(epoch)[position])]

  def __str__(self) -> str:
    return f"EpochShuffleMapDataset(seed={self._seed})"
