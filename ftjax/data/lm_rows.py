"""Language-model batches from tokenised examples: what chat data and plain-text data share.

A subclass provides `_encoded(split, shard_index, shard_count)`, the `(ids, loss mask)` examples
of one shard (see `ftjax.data.packing`), each at most `max_length` tokens, and, when its eval
rows are not one per record, `_num_eval_batches`. This base makes the endless shuffled training
stream (packed or one example per row) and the fixed-order eval batches from them.
"""

from collections.abc import Iterator

from absl import logging
import grain
import numpy as np

from ftjax.data import epoch_shuffle
from ftjax.data import packing as packing_lib
from ftjax.data import templated
from ftjax.errors import UserError


class LMRows(templated.TemplatedSplits):
  """Training and eval batches of a split's encoded examples."""

  def __init__(self, builder, tokenizer, *, max_length: int, packing: bool = False, **options):
    super().__init__(builder, tokenizer, max_length=max_length, **options)
    self.packing = bool(packing)
    self.packed_fill: float | None = None  # share of packed rows' token slots in use

  def _encoded(self, split: str, shard_index: int, shard_count: int
               ) -> list[packing_lib.Example]:
    raise NotImplementedError

  def _collate_single(self, examples, batch_size=None, longest=None):
    """One example per row, padded to a bucket (or max_length) of the longest one, or of
    `longest` when the length is agreed beyond these rows (across processes)."""
    if longest is None:
      longest = max((len(ids) for ids, _ in examples), default=1)
    length = self._padded_length(longest)
    return packing_lib.collate_rows([[e] for e in examples], length=length, pad_id=self.pad_id,
                                    batch_size=batch_size)

  def train_iterator(self, batch_size: int, *, seed: int, shard_index: int = 0,
                     shard_count: int = 1) -> grain.DatasetIterator:
    """Endless shuffled batches: this process's `batch_size` rows of each global batch.

    As for classification (`epoch_shuffle.GlobalBatchSlices`), the stream of rows is the same
    on every process and global batch b is the same whatever the number of processes: each
    host encodes the whole training split (and, with packing, packs it once, seeded
    first-fit, into rows of `max_length`), takes its slice of every global batch, and pads it
    to the global batch's bucket. With one process this is the plain reshuffled stream.
    `get_state()` / `set_state()` resume exactly.
    """
    examples = self._encoded(self._train_split, 0, 1)
    if not examples:
      raise UserError(f"training split {self._train_split!r} is empty")
    if self.packing:
      rows = packing_lib.pack(examples, self.max_length, seed=seed)
      self.packed_fill = rows.fill(self.max_length)
      logging.info("%s: packed %d examples into %d rows of %d tokens (%.1f%% filled)",
                   self._builder.name, len(examples), len(rows), self.max_length,
                   100 * self.packed_fill)
      source, lengths = rows, np.full(len(rows), self.max_length)
      collate = lambda chunk, longest: packing_lib.collate_rows(  # every row is max_length long
          chunk, length=self.max_length, pad_id=self.pad_id)
    else:
      source, lengths = examples, np.array([len(ids) for ids, _ in examples])
      collate = lambda chunk, longest: self._collate_single(chunk, longest=longest)
    dataset = epoch_shuffle.GlobalBatchSlices(
        source, lengths, seed=seed, batch_size=batch_size, shard_index=shard_index,
        shard_count=shard_count, collate=collate,
        group_by_length=0 if self.packing else self._group_by_length)
    # In-memory data and a cheap collate: reading in the calling thread is fastest.
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=0,
                                                          prefetch_buffer_size=0)))

  def eval_batch_lengths(self, split: str, batch_size: int, *, shard_index: int = 0,
                         shard_count: int = 1) -> np.ndarray:
    """The longest example of each of this shard's eval batches (0: an all-padding one);
    processes agree on each batch's padded length from the maximum over all shards."""
    examples = self._encoded(split, shard_index, shard_count)
    return np.array([max((len(ids) for ids, _ in examples[b * batch_size:(b + 1) * batch_size]),
                         default=0)
                     for b in range(self._num_eval_batches(split, batch_size, shard_count))],
                    np.int64)

  def eval_batches(self, split: str, batch_size: int, *, shard_index: int = 0,
                   shard_count: int = 1, longest=None) -> Iterator[dict]:
    """One pass over a split in a fixed order, one example per row.

    Every shard yields `_num_eval_batches` batches, so processes stay in lock-step; missing
    rows are all padding (loss_mask 0, segment_ids 0). `longest` (one per batch, from
    `eval_batch_lengths` maximised over the processes) pads every process's batch b to the
    same length.
    """
    examples = self._encoded(split, shard_index, shard_count)
    for chunk, length in self._eval_chunks(examples, split, batch_size, shard_count, longest):
      yield self._collate_single(chunk, batch_size=batch_size, longest=length)
