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

import json

import grain
import numpy as np

from ftjax.data import builders
from ftjax.data import collate as collate_lib
from ftjax.data import row_batches
from ftjax.data import tokenization
from ftjax.errors import UserError

__all__ = ["ChoiceData", "load_choice_data"]


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class ChoiceData(row_batches.RowBatches):
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

  def _batch_rows(self, split: str, shard_index: int, shard_count: int) -> row_batches.Rows:
    """This shard's questions, each choice tokenised as a pair with its question."""
    row_batches.check_shard(shard_index, shard_count)
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
      self._cache[key] = row_batches.Rows(
          items, [max(len(c["input_ids"]) for c in x["choices"]) for x in items])
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
