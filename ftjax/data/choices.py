"""Multiple-choice data for the `multiple_choice` objective: questions -> (question, choice) rows.

The trainer calls only `load_choice_data(data_cfg, tokenizer, seed=...)`. Config keys read (under
`data.`): name (`choice_files`), files, train_split, max_length, padding, bucket_boundaries,
group_by_length, data_dir, max_train_examples.

Each choice is tokenised as a text pair with its question, `[CLS] question [SEP] choice [SEP]`
for BERT (as HF's SWAG example does), cut at `max_length` (the longer side first). Batches carry
a choice axis: `input_ids`, `attention_mask`, `token_type_ids` [B, C, T] int32 with C the most
choices any question of the dataset has, `choice_mask` [B, C] float32 (0 for the choices a
question lacks: they get no probability), `labels` [B] int32 and `weights` [B] float32.
"""

from collections.abc import Iterator
import json
import math

import grain
import numpy as np

from ftjax.data import builders
from ftjax.data import collate as collate_lib
from ftjax.data import epoch_shuffle
from ftjax.data import tokenization
from ftjax.errors import UserError

__all__ = ["ChoiceData", "load_choice_data"]


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class _Encoded:
  def __init__(self, items: list[dict]):
    self.items = items

  def __len__(self) -> int:
    return len(self.items)

  def __getitem__(self, i: int) -> dict:
    return self.items[i]

  def lengths(self) -> np.ndarray:
    return np.array([max(len(c["input_ids"]) for c in x["choices"]) for x in self.items], np.int64)


class ChoiceData:
  """One prepared multiple-choice dataset, tokenised lazily per (split, shard)."""

  def __init__(self, builder, tokenizer, *, max_length: int, padding: str, bucket_boundaries=(),
               train_split: str = "train", max_train_examples: int = 0, seed: int = 0,
               group_by_length: int = 0):
    if padding not in collate_lib.PADDINGS:
      raise UserError(f"data.padding={padding!r} is not one of {list(collate_lib.PADDINGS)}")
    if max_length < 2:
      raise UserError(f"data.max_length={max_length} must be >= 2")
    self._builder, self._tokenizer = builder, tokenizer
    self._max_length, self._train_split = int(max_length), train_split
    self._max_train, self._seed = int(max_train_examples), int(seed)
    self._group_by_length = int(group_by_length)
    self._pad_id, self._padding = tokenization.pad_id(tokenizer), padding
    self._boundaries = tuple(int(b) for b in bucket_boundaries)
    self._rows, self._cache = {}, {}
    self.split_sizes = {s: len(self._records(s)) for s in builder.info.splits}
    self.num_choices = max(len(r["choices"]) for s in self.split_sizes for r in self.rows(s))

  def _records(self, split: str) -> grain.MapDataset:
    return builders.split_records(self._builder, split, train_split=self._train_split,
                                  max_train=self._max_train, seed=self._seed)

  def rows(self, split: str) -> list[dict]:
    """A split's questions as `{"id", "question", "choices", "label"}`, in row order."""
    if split not in self._rows:
      records = self._records(split)
      self._rows[split] = [{"id": _text(r["id"]), "question": _text(r["question"]),
                            "choices": json.loads(_text(r["choices_json"])),
                            "label": int(r["label"])}
                           for r in (records[i] for i in range(len(records)))]
    return self._rows[split]

  def _encoded(self, split: str, shard_index: int, shard_count: int) -> _Encoded:
    if not 0 <= shard_index < shard_count:
      raise ValueError(f"shard_index={shard_index} not in [0, {shard_count})")
    key = (split, shard_index, shard_count)
    if key not in self._cache:
      rows = self.rows(split)[shard_index::shard_count]
      flat = [(r["question"], c) for r in rows for c in r["choices"]]
      enc = tokenization.encode(self._tokenizer, [q for q, _ in flat], [c for _, c in flat],
                                [0] * len(flat), self._max_length)
      items, k = [], 0
      for r in rows:
        items.append({"choices": [enc[k + j] for j in range(len(r["choices"]))],
                      "label": r["label"]})
        k += len(r["choices"])
      self._cache[key] = _Encoded(items)
    return self._cache[key]

  def _collate(self, items, *, batch_size: int | None = None, longest: int | None = None):
    size = batch_size or len(items)
    if longest is None:
      longest = max((max(len(c["input_ids"]) for c in x["choices"]) for x in items), default=1)
    length = collate_lib.padded_length(longest, self._max_length, self._padding,
                                       self._boundaries)
    shape = (size, self.num_choices, length)
    batch = {"input_ids": np.full(shape, self._pad_id, np.int32),
             "attention_mask": np.zeros(shape, np.int32),
             "token_type_ids": np.zeros(shape, np.int32),
             "choice_mask": np.zeros((size, self.num_choices), np.float32),
             "labels": np.zeros((size,), np.int32), "weights": np.zeros((size,), np.float32)}
    for row, x in enumerate(items):
      for j, choice in enumerate(x["choices"]):
        n = len(choice["input_ids"])
        batch["input_ids"][row, j, :n] = choice["input_ids"]
        batch["token_type_ids"][row, j, :n] = choice["token_type_ids"]
        batch["attention_mask"][row, j, :n] = 1
        batch["choice_mask"][row, j] = 1.0
      batch["labels"][row], batch["weights"][row] = x["label"], 1.0
    empty = batch["attention_mask"].sum(-1) == 0  # missing choices and padding rows: one token
    batch["attention_mask"][..., 0] = np.where(empty, 1, batch["attention_mask"][..., 0])
    return batch

  def train_iterator(self, batch_size: int, *, seed: int, shard_index: int = 0,
                     shard_count: int = 1) -> grain.DatasetIterator:
    """Endless shuffled batches of this process's rows of each global batch (process-count
    independent, exact resume, as the other datasets)."""
    encoded = self._encoded(self._train_split, 0, 1)
    if len(encoded) == 0:
      raise UserError(f"training split {self._train_split!r} is empty")
    dataset = epoch_shuffle.GlobalBatchSlices(
        encoded, encoded.lengths(), seed=seed, batch_size=batch_size, shard_index=shard_index,
        shard_count=shard_count, collate=self._collate, group_by_length=self._group_by_length)
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))

  def _num_eval_batches(self, split: str, batch_size: int, shard_count: int) -> int:
    return math.ceil(math.ceil(self.split_sizes[split] / shard_count) / batch_size)

  def eval_batch_lengths(self, split: str, batch_size: int, *, shard_index: int = 0,
                         shard_count: int = 1) -> np.ndarray:
    lengths = self._encoded(split, shard_index, shard_count).lengths()
    return np.array([int(lengths[b * batch_size:(b + 1) * batch_size].max(initial=0))
                     for b in range(self._num_eval_batches(split, batch_size, shard_count))],
                    np.int64)

  def eval_batches(self, split: str, batch_size: int, *, shard_index: int = 0,
                   shard_count: int = 1, longest=None) -> Iterator[dict]:
    encoded = self._encoded(split, shard_index, shard_count)
    for b in range(self._num_eval_batches(split, batch_size, shard_count)):
      items = [encoded[i] for i in range(b * batch_size, min((b + 1) * batch_size, len(encoded)))]
      yield self._collate(items, batch_size=batch_size,
                          longest=None if longest is None else max(int(longest[b]), 1))


def load_choice_data(data_cfg, tokenizer, *, seed: int) -> ChoiceData:
  builder = builders.prepare(data_cfg)
  if "choices_json" not in builder.info.features:
    raise UserError(f"data.name={data_cfg.name!r} holds no multiple-choice questions; the "
                    "multiple_choice objective reads data.name=choice_files")
  return ChoiceData(builder, tokenizer, max_length=data_cfg.max_length, padding=data_cfg.padding,
                    bucket_boundaries=tuple(data_cfg.bucket_boundaries or ()),
                    train_split=data_cfg.train_split,
                    max_train_examples=data_cfg.max_train_examples, seed=seed,
                    group_by_length=data_cfg.get("group_by_length", 0))
