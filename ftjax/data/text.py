"""Plain-text causal-LM data (code, notes, manuals): documents -> token windows -> LM batches.

The trainer calls only `load_text_data(data_cfg, tokenizer, seed=...)` (through
`ftjax.tasks.causal_lm.load_data`, for `data.name == "text_files"`). Unlike chat data there is
no template and no mask: every token is learnt.

* Each document is tokenised without special tokens and ends with the document separator
  (`data.document_separator`, one token; default the tokenizer's eos), so the model learns
  where a document ends.
* A document longer than `data.max_length` is cut into windows of `max_length` tokens that
  overlap by one (stride `max_length - 1`): every next-token target of the document lies in
  exactly one window; a cut costs only the context before it.
* Training rows pack windows first-fit into rows of `max_length` with `data.packing` (segment
  ids keep attention inside a window, as for packed chat), else hold one window each. Eval rows
  hold one window each, in document order; each process encodes the whole eval split to count
  its windows and takes every `shard_count`-th, so all processes run the same number of
  batches.
* `prompts(split)`: each document's first `data.text_prompt_tokens` tokens, with the text
  that follows as the reference (generation samples before and after fine-tuning).
"""

import math

import numpy as np

from ftjax.data import builders
from ftjax.data import lm_rows
from ftjax.data import packing as packing_lib
from ftjax.data import templated
from ftjax.errors import UserError

__all__ = ["TextData", "load_text_data"]

NAMES = ("text_files",)  # data.name values this pipeline reads


def windows(ids: np.ndarray, length: int) -> list[np.ndarray]:
  """`ids` cut into windows of at most `length` tokens that overlap by one token, so each
  transition ids[t] -> ids[t + 1] is inside exactly one window. A last window of a single
  token (no transition left) is dropped."""
  if len(ids) <= length:
    return [ids]
  stride = length - 1
  return [ids[start:start + length] for start in range(0, len(ids) - 1, stride)]


class TextData(lm_rows.LMRows):
  """One prepared plain-text dataset, tokenised lazily per split."""

  RENDERS_CHATS = False

  def __init__(self, builder, tokenizer, *, max_length: int, document_separator: str = "",
               prompt_tokens: int = 64, **options):
    super().__init__(builder, tokenizer, max_length=max_length, **options)
    separator = document_separator or tokenizer.eos_token
    if not separator:
      raise UserError("the tokenizer has no eos token: set data.document_separator")
    vocab = tokenizer.get_vocab()
    if separator not in vocab:
      raise UserError(f"data.document_separator={separator!r} is not a token of the vocabulary")
    self.separator_id = int(vocab[separator])
    self.stop_ids = (self.separator_id,)  # generation ends where a document would
    self.prompt_tokens = int(prompt_tokens)

  def documents(self, split: str) -> list[tuple[str, str]]:
    """`(id, text)` of the split's documents, in eval order."""
    records = self._records(split)
    return [(templated.text(records[i]["id"]), templated.text(records[i]["text"]))
            for i in range(len(records))]

  def texts(self, split: str) -> list[str]:
    return [text for _, text in self.documents(split)]

  def _token_ids(self, split: str) -> list[np.ndarray]:
    """Each document's token ids, separator appended (cached)."""
    key = ("ids", split)
    if key not in self._cache:
      texts = self.texts(split)
      encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
      self._cache[key] = [np.asarray(list(ids) + [self.separator_id], np.int32)
                          for ids in encoded]
    return self._cache[key]

  def token_lengths(self, split: str) -> np.ndarray:
    """Token count of each document (separator included), in `documents` order."""
    return np.array([len(ids) for ids in self._token_ids(split)], np.int64)

  def _all_windows(self, split: str) -> list[packing_lib.Example]:
    """Every window of the split with its all-ones loss mask (cached)."""
    key = ("windows", split)
    if key not in self._cache:
      self._cache[key] = [(w, np.ones(len(w), np.float32)) for ids in self._token_ids(split)
                          for w in windows(ids, self.max_length)]
    return self._cache[key]

  def num_windows(self, split: str) -> int:
    return len(self._all_windows(split))

  def _encoded(self, split: str, shard_index: int, shard_count: int
               ) -> list[packing_lib.Example]:
    if not 0 <= shard_index < shard_count:
      raise ValueError(f"shard_index={shard_index} not in [0, {shard_count})")
    return self._all_windows(split)[shard_index::shard_count]

  def _num_eval_batches(self, split: str, batch_size: int, shard_count: int) -> int:
    """The same on every shard: ceil(ceil(windows / shards) / batch_size)."""
    return math.ceil(math.ceil(self.num_windows(split) / shard_count) / batch_size)

  def prompts(self, split: str, limit: int | None = None) -> list[dict]:
    """Generation prompts: the first `prompt_tokens` tokens of each document long enough to
    have a continuation; `reference` is the text of the next `prompt_tokens` tokens."""
    out = []
    n = self.prompt_tokens
    for (doc_id, _), ids in zip(self.documents(split), self._token_ids(split)):
      if limit is not None and len(out) >= limit:
        break
      if len(ids) <= n + 1:
        continue
      out.append({"id": doc_id, "text": self.tokenizer.decode(ids[:n]),
                  "reference": self.tokenizer.decode(ids[n:2 * n], skip_special_tokens=True),
                  "input_ids": ids[:n]})
    return out


def load_text_data(data_cfg, tokenizer, *, seed: int) -> TextData:
  """Prepares the dataset named by `data_cfg` (building it once) and wraps it for training."""
  builder = builders.prepare(data_cfg)
  return TextData(builder, tokenizer, packing=data_cfg.get("packing", False),
                  document_separator=data_cfg.get("document_separator", ""),
                  prompt_tokens=data_cfg.get("text_prompt_tokens", 64),
                  **templated.options(data_cfg, seed=seed))
