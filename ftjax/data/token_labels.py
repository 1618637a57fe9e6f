"""Token-classification data (NER): TFDS tagged sentences -> subword-aligned labels -> batches.

The trainer calls only `load_token_data(data_cfg, tokenizer, seed=...)` (through
`ftjax.tasks.token_classification.load_data`). Config keys read (under `data.`): name
(`token_files`), files, tokens_field, tags_field, label_names, train_split, max_length, padding,
bucket_boundaries, group_by_length, data_dir, max_train_examples.

Word-to-token alignment: a sentence's words are joined with single spaces and tokenised with
the checkpoint's (fast) tokenizer and its special tokens; each token belongs to the word its
characters start in (`return_offsets_mapping`), which works alike for WordPiece, byte-level BPE
and SentencePiece. The first token of each word carries the word's tag; the word's other
tokens and the special tokens carry none (HF's `label_all_tokens=False`). Words cut off by
`max_length` have no token: evaluation counts them as predicted `O`, so their gold entities
count as missed (`truncated_words` per split, in the data report).

Batches: `input_ids`, `attention_mask`, `token_type_ids`, `labels` [B, T] int32 (the tag index at
each word's first token, else 0), `label_mask` [B, T] float32 (1 at those tokens), `index` [B]
int32 (the sentence's row in its split; -1 on a padding row) and `weights` [B] float32.
"""

import json

import grain
import numpy as np

from ftjax.data import builders
from ftjax.data import collate as collate_lib
from ftjax.data import iob2
from ftjax.data import row_batches
from ftjax.data import tokenization
from ftjax.errors import UserError

__all__ = ["TokenData", "load_token_data"]


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def align(tokenizer, words: list[str], max_length: int):
  """(token ids, token type ids, the word index each token starts, or -1 for special tokens and
  a word's later tokens)."""
  spans, text = [], ""
  for word in words:
    start = len(text) + (1 if text else 0)
    text = f"{text} {word}" if text else word
    spans.append((start, start + len(word)))
  enc = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True,
                  return_token_type_ids=True)
  first = np.full(len(enc["input_ids"]), -1, np.int32)
  word, seen = 0, set()
  for t, (a, b) in enumerate(enc["offset_mapping"]):
    if b <= a:  # a special token (or an empty piece)
      continue
    while word < len(spans) and a >= spans[word][1]:
      word += 1
    # byte-level BPE offsets may include the leading space: the word starts at a or a + 1
    if word < len(spans) and word not in seen and b > spans[word][0]:
      first[t] = word
      seen.add(word)
  types = enc.get("token_type_ids") or [0] * len(enc["input_ids"])
  return np.asarray(enc["input_ids"], np.int32), np.asarray(types, np.int32), first


class TokenData(row_batches.RowBatches):
  """One prepared token-classification dataset, tokenised lazily per (split, shard)."""

  def __init__(self, builder, tokenizer, *, max_length: int, padding: str, label_names=(),
               bucket_boundaries=(), train_split: str = "train", max_train_examples: int = 0,
               seed: int = 0, group_by_length: int = 0):
    if padding not in collate_lib.PADDINGS:
      raise UserError(f"data.padding={padding!r} is not one of {list(collate_lib.PADDINGS)}")
    if max_length < 2:
      raise UserError(f"data.max_length={max_length} must be >= 2")
    if not getattr(tokenizer, "is_fast", False):
      raise UserError("token classification needs a fast tokenizer (tokenizer.json): word "
                      "alignment reads its offsets")
    self._builder, self._tokenizer = builder, tokenizer
    self._max_length, self._train_split = int(max_length), train_split
    self._max_train, self._seed = int(max_train_examples), int(seed)
    self._group_by_length = int(group_by_length)
    self._pad_id = tokenization.pad_id(tokenizer)
    self._boundaries = tuple(int(b) for b in bucket_boundaries)
    self._padding = padding
    self._rows, self._cache = {}, {}
    self.split_sizes = {s: len(self._records(s)) for s in builder.info.splits}
    self.label_names = list(label_names) or iob2.label_names(
        set(r["tags"]) for r in self.rows(train_split))
    if "O" not in self.label_names:
      raise UserError(f"data.label_names {self.label_names} has no 'O' tag")
    self._label_index = {name: i for i, name in enumerate(self.label_names)}
    self.num_classes = len(self.label_names)
    for split in self.split_sizes:
      for r in self.rows(split):
        unknown = [t for t in r["tags"] if t not in self._label_index]
        if unknown:
          raise UserError(f"{r['id']} (split {split!r}): tag {unknown[0]!r} is not among the "
                          f"labels {self.label_names} (from the training split or "
                          "data.label_names)")

  def _records(self, split: str) -> grain.MapDataset:
    return builders.split_records(self._builder, split, train_split=self._train_split,
                                  max_train=self._max_train, seed=self._seed)

  def rows(self, split: str) -> list[dict]:
    """A split's sentences as `{"id", "tokens", "tags"}`, in row order."""
    if split not in self._rows:
      records = self._records(split)
      self._rows[split] = [{"id": _text(r["id"]), "tokens": json.loads(_text(r["tokens_json"])),
                            "tags": json.loads(_text(r["tags_json"]))}
                           for r in (records[i] for i in range(len(records)))]
    return self._rows[split]

  def _batch_rows(self, split: str, shard_index: int, shard_count: int) -> row_batches.Rows:
    """This shard's sentences, tokenised, with each word's first token labelled."""
    row_batches.check_shard(shard_index, shard_count)
    key = (split, shard_index, shard_count)
    if key not in self._cache:
      rows = self.rows(split)
      index = np.arange(len(rows), dtype=np.int32)[shard_index::shard_count]
      items = []
      for i in index:
        ids, types, first = align(self._tokenizer, rows[i]["tokens"], self._max_length)
        labels = np.zeros(len(ids), np.int32)
        kept = first >= 0
        labels[kept] = [self._label_index[rows[i]["tags"][w]] for w in first[kept]]
        items.append({"input_ids": ids, "token_type_ids": types, "labels": labels,
                      "label_mask": kept.astype(np.float32), "index": int(i)})
      self._cache[key] = row_batches.Rows(items, [len(x["input_ids"]) for x in items])
    return self._cache[key]

  def _collate(self, items, *, batch_size: int | None = None, longest: int | None = None):
    size = batch_size or len(items)
    if longest is None:
      longest = max((len(x["input_ids"]) for x in items), default=1)
    length = collate_lib.padded_length(longest, self._max_length, self._padding,
                                       self._boundaries)
    batch = {"input_ids": np.full((size, length), self._pad_id, np.int32),
             "attention_mask": np.zeros((size, length), np.int32),
             "token_type_ids": np.zeros((size, length), np.int32),
             "labels": np.zeros((size, length), np.int32),
             "label_mask": np.zeros((size, length), np.float32),
             "index": np.full((size,), -1, np.int32), "weights": np.zeros((size,), np.float32)}
    for row, x in enumerate(items):
      n = len(x["input_ids"])
      for key in ("input_ids", "token_type_ids", "labels", "label_mask"):
        batch[key][row, :n] = x[key]
      batch["attention_mask"][row, :n] = 1
      batch["index"][row], batch["weights"][row] = x["index"], 1.0
    batch["attention_mask"][len(items):, 0] = 1  # padding rows attend to one token
    return batch

  def truncated_words(self, split: str) -> int:
    """Words of the split that `max_length` cuts off (they have no labelled token)."""
    labelled = sum(int(x["label_mask"].sum()) for x in self._batch_rows(split, 0, 1).items)
    return sum(len(r["tokens"]) for r in self.rows(split)) - labelled

  def token_lengths(self, split: str) -> np.ndarray:
    """Token counts (after truncation at max_length) of each sentence, in row order."""
    return self._batch_rows(split, 0, 1).lengths()


def load_token_data(data_cfg, tokenizer, *, seed: int) -> TokenData:
  """Prepares the dataset named by `data_cfg` (building it once) and wraps it for training."""
  builder = builders.prepare(data_cfg)
  if "tags_json" not in builder.info.features:
    raise UserError(f"data.name={data_cfg.name!r} holds no tagged sentences; token "
                    "classification reads data.name=token_files")
  return TokenData(builder, tokenizer, max_length=data_cfg.max_length, padding=data_cfg.padding,
                   label_names=tuple(data_cfg.label_names or ()),
                   bucket_boundaries=tuple(data_cfg.bucket_boundaries or ()),
                   train_split=data_cfg.train_split,
                   max_train_examples=data_cfg.max_train_examples, seed=seed,
                   group_by_length=data_cfg.get("group_by_length", 0))
