"""Classification data for the trainer: TFDS build -> pre-tokenised split -> Grain batches.

The trainer calls only `load_classification_data(data_cfg, tokenizer, seed=...)`.
Config keys read (under `data.`): name, files, text_field, text_pair_field, label_field,
label_names, train_split, max_length, padding, bucket_boundaries, group_by_length, data_dir,
max_train_examples.
"""

from collections.abc import Iterator
import functools
import math

import grain
import numpy as np

from ftjax.data import builders
from ftjax.data import collate as collate_lib
from ftjax.data import epoch_shuffle
from ftjax.data import tokenization
from ftjax.data.tokenization import load_tokenizer  # Re-exported for the trainer.
from ftjax.errors import UserError

__all__ = ["ClassificationData", "load_classification_data", "load_tokenizer"]


class ClassificationData:
  """One prepared classification dataset, tokenised lazily per (split, shard)."""

  def __init__(self, builder, tokenizer, *, max_length: int, padding: str,
               bucket_boundaries=(), train_split: str = "train",
               max_train_examples: int = 0, seed: int = 0, group_by_length: int = 0):
    if padding not in collate_lib.PADDINGS:
      raise UserError(f"data.padding={padding!r} is not one of {list(collate_lib.PADDINGS)}")
    if max_length < 2:
      raise UserError(f"data.max_length={max_length} must be >= 2")
    self._builder = builder
    self._tokenizer = tokenizer
    self._max_length = int(max_length)
    self._train_split = train_split
    self._max_train = int(max_train_examples)
    # Batches are a gather + pad of pre-tokenised ids (~80k examples/s on one core): in-process,
    # since worker processes would only add IPC (hence no `data.num_workers` for text).
    self._subset_seed = int(seed)
    self._group_by_length = int(group_by_length)
    self._has_pair = "text_pair" in builder.info.features
    self._cache = {}
    self._collate = functools.partial(
        collate_lib.collate, pad_id=tokenization.pad_id(tokenizer), max_length=self._max_length,
        padding=padding, boundaries=tuple(int(b) for b in bucket_boundaries))
    self.label_names: list[str] = list(builder.info.features["label"].names)
    self.num_classes: int = len(self.label_names)
    self.split_sizes: dict[str, int] = {
        split: len(self._records(split)) for split in builder.info.splits}
    metadata = builder.info.metadata or {}
    self.duplicates_removed: dict | None = (
        dict(metadata["duplicates_removed"]) if "duplicates_removed" in metadata else None)
    # Optional eval slicing (set by `ftjax.evaluate.configure`): `eval_slices(split)` returns a
    # [split size, num slices] 0/1 membership matrix that `eval_batches` adds as `slices`.
    self.eval_slices = None

  def _records(self, split: str) -> grain.MapDataset:
    """The split's records; the training split cut to `max_train_examples` if set."""
    return builders.split_records(self._builder, split, train_split=self._train_split,
                                  max_train=self._max_train, seed=self._subset_seed)

  def _encoded(self, split: str, shard_index: int, shard_count: int):
    """Tokenises (once, then cached) the examples of one shard of a split."""
    if not 0 <= shard_index < shard_count:
      raise ValueError(f"shard_index={shard_index} not in [0, {shard_count})")
    key = (split, shard_index, shard_count)
    if key not in self._cache:
      # Each process reads and tokenises only its own shard.
      shard = self._records(split)[shard_index::shard_count]
      rows = [shard[i] for i in range(len(shard))]
      self._cache[key] = tokenization.encode(
          self._tokenizer, [_text(r["text"]) for r in rows],
          [_text(r["text_pair"]) for r in rows] if self._has_pair else None,
          [r["label"] for r in rows], self._max_length)
    return self._cache[key]

  def train_iterator(self, batch_size: int, *, seed: int, shard_index: int = 0,
                     shard_count: int = 1) -> grain.DatasetIterator:
    """Endless shuffled batches: this process's `batch_size` rows of each global batch.

    Every epoch is reshuffled (seeded); batches may span epoch boundaries. The global batch
    (all processes' rows together) does not depend on the number of processes, so a 2-process
    run trains exactly like a 1-process run. Each host tokenises the training split once
    (fine-tuning sets are small: Rotten Tomatoes' 10.5k rows take ~1 s) and gathers only its
    rows. The iterator's `get_state()` is a small JSON-serialisable dict; `set_state()`
    resumes exactly.
    """
    if not 0 <= shard_index < shard_count:
      raise ValueError(f"shard_index={shard_index} not in [0, {shard_count})")
    encoded = self._encoded(self._train_split, 0, 1)
    if len(encoded) == 0:
      raise UserError(f"training split {self._train_split!r} is empty")
    dataset = epoch_shuffle.GlobalBatchSlices(
        encoded, encoded.lengths(), seed=seed, batch_size=batch_size, shard_index=shard_index,
        shard_count=shard_count, collate=self._collate, group_by_length=self._group_by_length)
    # The data is in memory and a batch is a cheap gather + pad: prefetch threads only
    # add locking overhead (measured 2x slower), so read in the calling thread.
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))

  def _num_eval_batches(self, split: str, batch_size: int, shard_count: int) -> int:
    return math.ceil(math.ceil(self.split_sizes[split] / shard_count) / batch_size)

  def eval_batch_lengths(self, split: str, batch_size: int, *, shard_index: int = 0,
                         shard_count: int = 1) -> np.ndarray:
    """The longest example of each of this shard's eval batches (0: an all-padding one);
    processes agree on each batch's padded length from the maximum over all shards."""
    lengths = self._encoded(split, shard_index, shard_count).lengths()
    return np.array([int(lengths[b * batch_size:(b + 1) * batch_size].max(initial=0))
                     for b in range(self._num_eval_batches(split, batch_size, shard_count))],
                    np.int64)

  def eval_batches(self, split: str, batch_size: int, *, shard_index: int = 0,
                   shard_count: int = 1, longest=None) -> Iterator[dict]:
    """One pass over a split in a fixed order; padding examples have weight 0.

    Every shard yields the same number of batches (ceil(ceil(N / shards) / batch_size)),
    so processes stay in lock-step for collective eval steps. `longest` (one per batch, from
    `eval_batch_lengths` maximised over the processes) pads every process's batch b to the
    same length.
    """
    encoded = self._encoded(split, shard_index, shard_count)
    membership = self.eval_slices(split) if self.eval_slices is not None else None
    for b in range(self._num_eval_batches(split, batch_size, shard_count)):
      positions = range(b * batch_size, min((b + 1) * batch_size, len(encoded)))
      batch = self._collate([encoded[i] for i in positions], batch_size=batch_size,
                            longest=None if longest is None else max(int(longest[b]), 1))
      if membership is not None:  # shard position i is record shard_index + i * shard_count
        batch["slices"] = np.zeros((batch_size, membership.shape[1]), np.float32)
        batch["slices"][:len(positions)] = membership[[shard_index + i * shard_count
                                                       for i in positions]]
      yield batch

  def texts(self, split: str) -> list[str]:
    """Raw texts of a split, in `eval_batches` order when unsharded (pairs joined by " || ")."""
    records = self._records(split)
    out = []
    for i in range(len(records)):
      r = records[i]
      text = _text(r["text"])
      out.append(f"{text} || {_text(r['text_pair'])}" if self._has_pair else text)
    return out

  def token_lengths(self, split: str):
    """Token count (after truncation at max_length) of each record, in `texts` order."""
    return self._encoded(split, 0, 1).lengths()

  def rows(self, split: str) -> list[dict]:
    """A split's examples as `{"text", ["text_pair",] "label"}` dicts, in `texts` order."""
    records = self._records(split)
    keys = ("text", "text_pair") if self._has_pair else ("text",)
    return [{**{k: _text(records[i][k]) for k in keys}, "label": int(records[i]["label"])}
            for i in range(len(records))]


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def load_classification_data(data_cfg, tokenizer, *, seed: int) -> ClassificationData:
  """Prepares the dataset named by `data_cfg` (building it once) and wraps it for training."""
  builder = builders.prepare(data_cfg)
  return ClassificationData(
      builder, tokenizer,
      max_length=data_cfg.max_length,
      padding=data_cfg.padding,
      bucket_boundaries=tuple(data_cfg.bucket_boundaries or ()),
      train_split=data_cfg.train_split,
      max_train_examples=data_cfg.max_train_examples,
      seed=seed,
      group_by_length=data_cfg.get("group_by_length", 0),
  )
