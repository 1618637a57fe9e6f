"""Batching shared by the datasets whose rows are tokenised once per (split, shard): endless
shuffled training batches and lock-step evaluation batches.

A dataset class mixes in `RowBatches` and provides `_batch_rows(split, shard_index,
shard_count)` (its pre-tokenised rows, a `Rows`), `_collate(items, *, batch_size=None,
longest=None)` (a numpy batch of them, padding rows weighted 0), `_train_split` and
`_group_by_length`; the number of rows of a split is `split_sizes[split]` unless `_num_rows`
says otherwise (QA's context windows).
"""

from collections.abc import Iterator
import math

import grain
import numpy as np

from ftjax.data import epoch_shuffle
from ftjax.errors import UserError


class Rows:
  """A split's (or shard's) tokenised rows for `_collate`, each with its token length."""

  def __init__(self, items: list, lengths):
    self.items, self._lengths = items, np.asarray(lengths, np.int64)

  def __len__(self) -> int:
    return len(self.items)

  def __getitem__(self, i: int):
    return self.items[i]

  def lengths(self) -> np.ndarray:
    return self._lengths


class RowBatches:
  """`train_iterator`, `eval_batch_lengths` and `eval_batches` over a dataset's `_batch_rows`."""

  def _num_rows(self, split: str) -> int:
    return self.split_sizes[split]

  def train_iterator(self, batch_size: int, *, seed: int, shard_index: int = 0,
                     shard_count: int = 1) -> grain.DatasetIterator:
    """Endless shuffled batches: this process's rows of each global batch.

    Each epoch is reshuffled (seeded); the global batch does not depend on the number of
    processes (each host tokenises the whole training split and gathers its rows), and
    `get_state()` / `set_state()` resume exactly (`epoch_shuffle.GlobalBatchSlices`).
    """
    rows = self._batch_rows(self._train_split, 0, 1)
    if len(rows) == 0:
      raise UserError(f"training split {self._train_split!r} is empty")
    dataset = epoch_shuffle.GlobalBatchSlices(
        rows, rows.lengths(), seed=seed, batch_size=batch_size, shard_index=shard_index,
        shard_count=shard_count, collate=self._collate, group_by_length=self._group_by_length)
    # In memory and cheap to gather: prefetch threads would only add locking.
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))

  def _num_eval_batches(self, split: str, batch_size: int, shard_count: int) -> int:
    return math.ceil(math.ceil(self._num_rows(split) / shard_count) / batch_size)

  def eval_batch_lengths(self, split: str, batch_size: int, *, shard_index: int = 0,
                         shard_count: int = 1) -> np.ndarray:
    """The longest row of each of this shard's eval batches (0: an all-padding one)."""
    lengths = self._batch_rows(split, shard_index, shard_count).lengths()
    return np.array([int(lengths[b * batch_size:(b + 1) * batch_size].max(initial=0))
                     for b in range(self._num_eval_batches(split, batch_size, shard_count))],
                    np.int64)

  def eval_batches(self, split: str, batch_size: int, *, shard_index: int = 0,
                   shard_count: int = 1, longest=None) -> Iterator[dict]:
    """One pass over this shard of a split in row order. Every shard yields the same number of
    batches (processes stay in lock-step); `longest` pads batch b alike on every process."""
    rows = self._batch_rows(split, shard_index, shard_count)
    for b in range(self._num_eval_batches(split, batch_size, shard_count)):
      items = [rows[i] for i in range(b * batch_size, min((b + 1) * batch_size, len(rows)))]
      yield self._collate(items, batch_size=batch_size,
                          longest=None if longest is None else max(int(longest[b]), 1))


def check_shard(shard_index: int, shard_count: int) -> None:
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} not in [0, {shard_count})")
