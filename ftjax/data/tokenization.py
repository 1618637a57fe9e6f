"""Loads a checkpoint's tokenizer and pre-tokenises a split into compact arrays."""

from collections.abc import Sequence
import os
import pathlib

import numpy as np
import transformers

from ftjax.errors import UserError

# Texts per tokenizer call: large enough for the Rust tokenizer's batching to pay off.
_CHUNK = 4096


def load_tokenizer(path: str | os.PathLike) -> transformers.PreTrainedTokenizerBase:
  """Loads the fast tokenizer saved in a local checkpoint folder."""
  path = pathlib.Path(path).expanduser()
  if not path.is_dir():
    raise UserError(f"tokenizer folder not found: {path}")
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: cannot load a tokenizer ({e})") from None
  if not tokenizer.is_fast:
    raise UserError(f"{path}: no fast tokenizer (tokenizer.json) found")
  return tokenizer


def pad_id(tokenizer) -> int:
  for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
    if token_id is not None:
      return int(token_id)
  return 0


class EncodedSplit:
  """Token ids of many examples stored flat (one array + offsets); indexable by grain.

  Pre-tokenising once and keeping the ids in memory makes the training input pipeline
  a cheap gather + pad, so the train loop never waits on tokenisation.
  """

  def __init__(self, ids: np.ndarray, type_ids: np.ndarray, offsets: np.ndarray,
               labels: np.ndarray):
    self.ids, self.type_ids, self.offsets, self.labels = ids, type_ids, offsets, labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict:
    start, end = self.offsets[index], self.offsets[index + 1]
    return {"input_ids": self.ids[start:end], "token_type_ids": self.type_ids[start:end],
            "label": self.labels[index]}

  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)


def encode(tokenizer, texts: Sequence[str], text_pairs: Sequence[str] | None,
           labels: Sequence[int], max_length: int) -> EncodedSplit:
  """Tokenises (text[, pair]) with the tokenizer's special tokens, truncated at max_length."""
  ids, type_ids, lengths = [], [], []
  for start in range(0, len(texts), _CHUNK):
    stop = start + _CHUNK
    enc = tokenizer(
        list(texts[start:stop]),
        list(text_pairs[start:stop]) if text_pairs is not None else None,
        truncation=True, max_length=max_length, padding=False,
        return_attention_mask=False, return_token_type_ids=True)
    types = enc.get("token_type_ids") or [[0] * len(x) for x in enc["input_ids"]]
    for row, row_types in zip(enc["input_ids"], types):
      ids.extend(row)
      type_ids.extend(row_types)
      lengths.append(len(row))
  offsets = np.zeros(len(lengths) + 1, np.int64)
  np.cumsum(lengths, out=offsets[1:])
  return EncodedSplit(np.asarray(ids, np.int32), np.asarray(type_ids, np.int32), offsets,
                      np.asarray(labels, np.int32))
