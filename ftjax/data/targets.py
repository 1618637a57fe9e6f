"""Multi-label and regression data (objectives `multi_label`, `regression`): texts -> batches.

The trainer calls only `load_target_data(data_cfg, tokenizer, seed=..., kind=...)`. Config keys
read (under `data.`): name (`target_files`), files, text_field, text_pair_field, label_field,
label_names, train_split, max_length, padding, bucket_boundaries, group_by_length, data_dir,
max_train_examples.

Texts (and pairs) are tokenised as for single-label classification. Batches are the
classification batch (`ftjax.data.collate`: `input_ids`, `attention_mask`, `token_type_ids`
[B, T], `weights` [B]) plus `targets`: [B, labels] float32 0/1 for multi-label (label order
`label_names`: `data.label_names`, else the training split's labels sorted), [B] float32 for
regression, and `index` [B] int32 (the row in its split; -1 on padding rows).
"""

import functools
import json

import grain
import numpy as np

from ftjax.data import builders
from ftjax.data import collate as collate_lib
from ftjax.data import row_batches
from ftjax.data import tokenization
from ftjax.errors import UserError

__all__ = ["TargetData", "load_target_data"]


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TargetData(row_batches.RowBatches):
  """One prepared multi-label or regression dataset, tokenised lazily per (split, shard)."""

  def __init__(self, builder, tokenizer, *, kind: str, max_length: int, padding: str,
               label_names=(), bucket_boundaries=(), train_split: str = "train",
               max_train_examples: int = 0, seed: int = 0, group_by_length: int = 0):
    if padding not in collate_lib.PADDINGS:
      raise UserError(f"data.padding={padding!r} is not one of {list(collate_lib.PADDINGS)}")
    held = (builder.info.metadata or {}).get("kind")
    if held != kind:
      raise UserError(f"data '{builder.name}' holds {str(held).replace('_', '-')} targets; "
                      f"objective '{kind}' needs {kind.replace('_', '-')} ones")
    self.kind = kind
    self._builder, self._tokenizer = builder, tokenizer
    self._max_length, self._train_split = int(max_length), train_split
    self._max_train, self._seed = int(max_train_examples), int(seed)
    self._group_by_length = int(group_by_length)
    self._collate_texts = functools.partial(
        collate_lib.collate, pad_id=tokenization.pad_id(tokenizer), max_length=self._max_length,
        padding=padding, boundaries=tuple(int(b) for b in bucket_boundaries))
    self._rows_cache, self._cache = {}, {}
    self.split_sizes = {s: len(self._records(s)) for s in builder.info.splits}
    self.label_names: list[str] = []
    if kind == "multi_label":
      self.label_names = list(label_names) or sorted(
          {name for r in self.rows(train_split) for name in r["labels"]})
      if not self.label_names:
        raise UserError(f"training split {train_split!r} has no labels at all")
      known = set(self.label_names)
      for split in self.split_sizes:
        for r in self.rows(split):
          unknown = [n for n in r["labels"] if n not in known]
          if unknown:
            raise UserError(f"{r['id']} (split {split!r}): label {unknown[0]!r} is not among "
                            f"{self.label_names} (the training split's, or data.label_names)")
    self.num_classes = len(self.label_names) if kind == "multi_label" else 1

  def _records(self, split: str) -> grain.MapDataset:
    return builders.split_records(self._builder, split, train_split=self._train_split,
                                  max_train=self._max_train, seed=self._seed)

  def rows(self, split: str) -> list[dict]:
    """A split's examples as `{"id", "text", "text_pair", "labels", "target"}`, in row order."""
    if split not in self._rows_cache:
      records = self._records(split)
      self._rows_cache[split] = [
          {"id": _text(r["id"]), "text": _text(r["text"]), "text_pair": _text(r["text_pair"]),
           "labels": json.loads(_text(r["labels_json"])), "target": float(r["target"])}
          for r in (records[i] for i in range(len(records)))]
    return self._rows_cache[split]

  def targets(self, split: str) -> np.ndarray:
    """[rows, labels] 0/1 (multi-label) or [rows] (regression) float32 targets in row order."""
    rows = self.rows(split)
    if self.kind == "regression":
      return np.array([r["target"] for r in rows], np.float32)
    index = {n: i for i, n in enumerate(self.label_names)}
    out = np.zeros((len(rows), len(self.label_names)), np.float32)
    for i, r in enumerate(rows):
      out[i, [index[n] for n in r["labels"]]] = 1.0
    return out

  def _batch_rows(self, split: str, shard_index: int, shard_count: int) -> row_batches.Rows:
    row_batches.check_shard(shard_index, shard_count)
    key = (split, shard_index, shard_count)
    if key not in self._cache:
      rows = self.rows(split)[shard_index::shard_count]
      pairs = any(r["text_pair"] for r in self.rows(split))
      enc = tokenization.encode(self._tokenizer, [r["text"] for r in rows],
                                [r["text_pair"] for r in rows] if pairs else None,
                                [0] * len(rows), self._max_length)
      targets = self.targets(split)[shard_index::shard_count]
      index = np.arange(len(self.rows(split)), dtype=np.int32)[shard_index::shard_count]
      self._cache[key] = row_batches.Rows(
          [(enc[i], targets[i], int(index[i])) for i in range(len(rows))], enc.lengths())
    return self._cache[key]

  def _collate(self, items, *, batch_size: int | None = None, longest: int | None = None):
    size = batch_size or len(items)
    batch = self._collate_texts([x for x, _, _ in items], batch_size=size, longest=longest)
    del batch["labels"]
    shape = (size, len(self.label_names)) if self.kind == "multi_label" else (size,)
    batch["targets"] = np.zeros(shape, np.float32)
    batch["index"] = np.full((size,), -1, np.int32)
    for row, (_, target, index) in enumerate(items):
      batch["targets"][row], batch["index"][row] = target, index
    return batch


def load_target_data(data_cfg, tokenizer, *, seed: int, kind: str) -> TargetData:
  builder = builders.prepare(data_cfg)
  if "labels_json" not in builder.info.features:
    raise UserError(f"data.name={data_cfg.name!r} holds no multi-label or regression targets; "
                    f"objective '{kind}' reads data.name=target_files")
  return TargetData(builder, tokenizer, kind=kind, max_length=data_cfg.max_length,
                    padding=data_cfg.padding, label_names=tuple(data_cfg.label_names or ()),
                    bucket_boundaries=tuple(data_cfg.bucket_boundaries or ()),
                    train_split=data_cfg.train_split,
                    max_train_examples=data_cfg.max_train_examples, seed=seed,
                    group_by_length=data_cfg.get("group_by_length", 0))
