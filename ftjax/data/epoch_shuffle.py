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


class GlobalBatchSlices(grain.MapDataset):
  """Element b is this process's rows of global batch b of an endless reshuffled stream.

  The stream is the same on every process (one seeded permutation of the whole split per
  epoch), global batch b is stream elements [b*G, (b+1)*G) with G = per-process batch x
  processes, and process i takes rows [i*B, (i+1)*B) of it. So the global batch, and with it
  every loss and update, is the same whatever the number of processes; each process gathers
  only its rows, and pads them to the length of the longest example of the whole global batch
  so that every process produces the same shape. State is one integer (the batch index).

  `group_by_length=k` (HF's `group_by_length`, with Megatron's name for the pool): each run of
  k global batches of the stream (a megabatch) is sorted by length and cut into k batches,
  which are then visited in a seeded random order; so a batch holds examples of similar length
  and pads to a short bucket (Rotten Tomatoes at batch 32, buckets 16/32/48/64: 36 padded tokens
  per row at k=16 against 60 ungrouped; the mean example is 27), while each example is still
  seen once per epoch in a seeded random megabatch. Batch b stays a pure function of (seed, b). 0 or 1: off.
  """

  def __init__(self, examples, lengths: np.ndarray, *, seed: int, batch_size: int,
               shard_index: int, shard_count: int, collate, group_by_length: int = 0):
    super().__init__()
    self._examples, self._lengths = examples, np.asarray(lengths)
    self._order = EpochShuffleMapDataset(grain.MapDataset.range(len(examples)), seed=seed)
    self._batch_size, self._shard_index, self._shard_count = batch_size, shard_index, shard_count
    self._collate = collate
    self._seed, self._group = int(seed), max(int(group_by_length), 1)
    self._megabatch = (-1, None)  # the last megabatch's batches (consecutive batches share it)

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    global_size = self._batch_size * self._shard_count
    if self._group > 1:
      stream = self._grouped_batch(index, global_size)
    else:
      stream = [int(self._order[index * global_size + k]) for k in range(global_size)]
    mine = stream[self._shard_index * self._batch_size:(self._shard_index + 1) * self._batch_size]
    return self._collate([self._examples[i] for i in mine],
                         longest=int(self._lengths[stream].max()))

  def _grouped_batch(self, index: int, global_size: int) -> list[int]:
    """Global batch `index` under length grouping: its megabatch sorted, cut, and permuted."""
    megabatch, position = divmod(index, self._group)
    if self._megabatch[0] != megabatch:
      start = megabatch * self._group * global_size
      pool = np.array([int(self._order[start + k]) for k in range(self._group * global_size)])
      pool = pool[np.argsort(-self._lengths[pool], kind="stable")]  # longest first; ties keep order
      batches = pool.reshape(self._group, global_size)
      visit = np.random.default_rng([self._seed, megabatch, 1]).permutation(self._group)
      self._megabatch = (megabatch, batches[visit])
    return [int(i) for i in self._megabatch[1][position]]

  def __str__(self) -> str:
    return f"GlobalBatchSlices(shard {self._shard_index} of {self._shard_count})"
