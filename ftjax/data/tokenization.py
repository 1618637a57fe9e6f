"""Loads a checkpoint's tokenizer and pre-tokenises a split into compact arrays."""

from collections.abc import Sequence
import json
import os
import pathlib

import numpy as np
import transformers

from ftjax.errors import UserError

# Texts per tokenizer call: large enough for the Rust tokenizer's batching to pay off.
_CHUNK = 4096
# End-of-turn tokens of common chat templates (Llama 3, ChatML, Gemma, Phi-3): a chat reply ends
# with one of these, which is often not the tokenizer's `eos_token`.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>")


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


def _eos_ids(file: pathlib.Path) -> list[int]:
  """`eos_token_id` (an int or a list) of a JSON config file; [] when absent."""
  if not file.is_file():
    return []
  try:
    eos = json.loads(file.read_text()).get("eos_token_id")
  except (OSError, ValueError, AttributeError) as e:
    raise UserError(f"{file}: cannot read eos_token_id ({e})") from None
  return [int(t) for t in (eos if isinstance(eos, list) else [eos]) if t is not None]


def stop_token_ids(path: str | os.PathLike, tokenizer,
                   chat_template: str | None = None, extra=()) -> list[int]:
  """Every token id that ends a generation for the checkpoint folder `path` (sorted).

  The tokenizer's `eos_token_id`, the `eos_token_id` (int or list) of `generation_config.json`
  (else of `config.json`, as transformers falls back to), and the end-of-turn tokens
  (`END_OF_TURN_TOKENS`) that the chat template (`chat_template`, else the tokenizer's) uses and
  the vocabulary holds: Llama 3 Instruct declares `<|eot_id|>` only in its generation config,
  and a ChatML reply ends with `<|im_end|>` whatever the eos token is.
  """
  path = pathlib.Path(path)
  ids = set(_eos_ids(path / "generation_config.json") or _eos_ids(path / "config.json"))
  if tokenizer.eos_token_id is not None:
    ids.add(int(tokenizer.eos_token_id))
  template = chat_template or getattr(tokenizer, "chat_template", None) or ""
  if isinstance(template, dict):  # named templates ("default", "tool_use", ...)
    template = "".join(template.values())
  vocab = tokenizer.get_vocab()
  ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in template and t in vocab)
  ids.update(int(i) for i in extra)  # e.g. plain text's document separator
  return sorted(ids)


def dataset_stop_token_ids(path: str | os.PathLike, dataset) -> list[int]:
  """`stop_token_ids` for a run's dataset: its tokenizer, its chat template (if any) and the
  extra stops it declares in `stop_ids` (plain text's document separator)."""
  return stop_token_ids(path, dataset.tokenizer, getattr(dataset, "template", None),
                        extra=getattr(dataset, "stop_ids", ()))


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
