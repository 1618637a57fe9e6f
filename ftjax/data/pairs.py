"""Pair data for the `embedding` objective: TFDS (anchor, positive) pairs -> tokenised -> batches.

The trainer calls only `load_pair_data(data_cfg, tokenizer, seed=...)` (through
`ftjax.tasks.embedding.load_data`). Config keys read (under `data.`): name (`pair_files`,
`rotten_tomatoes_pairs` or `hf_datasets`), files, train_split, max_length, padding,
bucket_boundaries, group_by_length, data_dir, max_train_examples.

Both sides of a pair are tokenised on their own (each with the tokenizer's special tokens, cut
at `max_length`), and a batch lays them out with a pair axis, as preference batches do:
`input_ids`, `attention_mask`, `token_type_ids` [B, 2, T] int32 (index 0 the anchor, 1 the
positive; both padded to the longer), `groups` [B] int32 (the pair's relevance group, numbered
per split), `index` [B] int32 (the pair's row in its split; -1 on a padding row) and `weights`
[B] float32 (1 for a pair, 0 for a padding row). Batch sharding cuts the leading axis only.
"""

import functools

import grain
import numpy as np

from ftjax.data import builders
from ftjax.data import collate as collate_lib
from ftjax.data import row_batches
from ftjax.data import tokenization
from ftjax.errors import UserError

__all__ = ["PairData", "load_pair_data"]

_SIDES = ("anchor", "positive")


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class PairData(row_batches.RowBatches):
  """One prepared pair dataset, tokenised lazily per (split, shard)."""

  def __init__(self, builder, tokenizer, *, max_length: int, padding: str,
               bucket_boundaries=(), train_split: str = "train", max_train_examples: int = 0,
               seed: int = 0, group_by_length: int = 0):
    if padding not in collate_lib.PADDINGS:
      raise UserError(f"data.padding={padding!r} is not one of {list(collate_lib.PADDINGS)}")
    if max_length < 2:
      raise UserError(f"data.max_length={max_length} must be >= 2")
    self._builder, self._tokenizer = builder, tokenizer
    self._max_length, self._train_split = int(max_length), train_split
    self._max_train, self._seed = int(max_train_examples), int(seed)
    self._group_by_length = int(group_by_length)
    self._collate_side = functools.partial(
        collate_lib.collate, pad_id=tokenization.pad_id(tokenizer), max_length=self._max_length,
        padding=padding, boundaries=tuple(int(b) for b in bucket_boundaries))
    self._cache, self._rows = {}, {}
    self.split_sizes: dict[str, int] = {s: len(self._records(s)) for s in builder.info.splits}
    metadata = builder.info.metadata or {}
    self.skipped: dict = dict(metadata.get("skipped", {}) or {})
    self.duplicates_removed: dict | None = (
        dict(metadata["duplicates_removed"]) if "duplicates_removed" in metadata else None)

  def _records(self, split: str) -> grain.MapDataset:
    return builders.split_records(self._builder, split, train_split=self._train_split,
                                  max_train=self._max_train, seed=self._seed)

  def rows(self, split: str) -> list[dict]:
    """A split's pairs as `{"id", "anchor", "positive", "group", "score"}` (group "" made the
    row's own: `#<row>`), in row order."""
    if split not in self._rows:
      records = self._records(split)
      rows = []
      for i in range(len(records)):
        r = records[i]
        group = _text(r["group"])
        rows.append({"id": _text(r["id"]), "anchor": _text(r["anchor"]),
                     "positive": _text(r["positive"]), "group": group or f"#{i}",
                     "score": float(r["score"])})
      self._rows[split] = rows
    return self._rows[split]

  def groups(self, split: str) -> np.ndarray:
    """Each row's relevance group as an int32 number (first appearance order)."""
    numbers: dict[str, int] = {}
    return np.array([numbers.setdefault(r["group"], len(numbers)) for r in self.rows(split)],
                    np.int32)

  def scores(self, split: str) -> np.ndarray:
    """Each row's graded similarity (NaN where the row has none)."""
    return np.array([r["score"] for r in self.rows(split)], np.float32)

  def _batch_rows(self, split: str, shard_index: int, shard_count: int) -> row_batches.Rows:
    """This shard's pairs, each (anchor, positive, group, row index), both sides tokenised."""
    row_batches.check_shard(shard_index, shard_count)
    key = (split, shard_index, shard_count)
    if key not in self._cache:
      rows = self.rows(split)[shard_index::shard_count]
      index = np.arange(len(self.rows(split)), dtype=np.int32)[shard_index::shard_count]
      groups = self.groups(split)[shard_index::shard_count]
      a, p = (tokenization.encode(self._tokenizer, [r[side] for r in rows], None,
                                  [0] * len(rows), self._max_length) for side in _SIDES)
      self._cache[key] = row_batches.Rows(
          [(a[i], p[i], int(groups[i]), int(index[i])) for i in range(len(rows))],
          np.maximum(a.lengths(), p.lengths()))
    return self._cache[key]

  def _collate(self, items, *, batch_size: int | None = None, longest: int | None = None):
    """[B, 2, T] batch of pairs; both sides padded to one length."""
    size = batch_size or len(items)
    if longest is None:
      longest = max((max(len(a["input_ids"]), len(p["input_ids"])) for a, p, _, _ in items),
                    default=1)
    sides = [self._collate_side([item[k] for item in items], batch_size=size, longest=longest)
             for k in (0, 1)]
    batch = {key: np.stack([sides[0][key], sides[1][key]], axis=1)
             for key in ("input_ids", "attention_mask", "token_type_ids")}
    batch["groups"] = np.full((size,), -1, np.int32)
    batch["index"] = np.full((size,), -1, np.int32)
    batch["groups"][:len(items)] = [g for _, _, g, _ in items]
    batch["index"][:len(items)] = [i for _, _, _, i in items]
    batch["weights"] = sides[0]["weights"]
    return batch


def load_pair_data(data_cfg, tokenizer, *, seed: int) -> PairData:
  """Prepares the dataset named by `data_cfg` (building it once) and wraps it for training."""
  builder = builders.prepare(data_cfg)
  if "positive" not in builder.info.features:
    raise UserError(f"data.name={data_cfg.name!r} holds no (anchor, positive) pairs; the "
                    "embedding objective reads pair_files, rotten_tomatoes_pairs or "
                    "hf_datasets with anchor/positive columns")
  return PairData(builder, tokenizer, max_length=data_cfg.max_length, padding=data_cfg.padding,
                  bucket_boundaries=tuple(data_cfg.bucket_boundaries or ()),
                  train_split=data_cfg.train_split, max_train_examples=data_cfg.max_train_examples,
                  seed=seed, group_by_length=data_cfg.get("group_by_length", 0))
