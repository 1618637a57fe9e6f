"""Extractive-QA data for the `question_answering` objective: questions -> context windows.

The trainer calls only `load_qa_data(data_cfg, tokenizer, seed=...)`. Config keys read (under
`data.`): name (`qa_files`), files, train_split, max_length, doc_stride, padding,
bucket_boundaries, group_by_length, data_dir, max_train_examples.

Each (question, context) pair is tokenised as a text pair cut into windows of `max_length`
tokens over the context (the question is repeated in every window), consecutive windows
sharing `data.doc_stride` context tokens, so an answer near a window's edge is whole in the
next (HF's `return_overflowing_tokens` with `stride`, as its run_qa example). A window holds the
answer when the answer's characters all fall in it: its start and end tokens are then the
targets; otherwise (and for unanswerable questions) both point at token 0. Training uses every
window; evaluation scores every window and picks each question's best span across them
(`ftjax.tasks.question_answering`), mapping tokens back to context characters through the
tokenizer's offsets.

Batches: `input_ids`, `attention_mask`, `token_type_ids` [B, T] int32, `start_positions`,
`end_positions` [B] int32, `window` [B] int32 (the window's number in its split; -1 on padding
rows) and `weights` [B] float32.
"""

import json

import grain
import numpy as np

from ftjax.data import builders
from ftjax.data import collate as collate_lib
from ftjax.data import row_batches
from ftjax.data import tokenization
from ftjax.errors import UserError

__all__ = ["QAData", "load_qa_data"]


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def answer_tokens(offsets, in_context, start_char: int, end_char: int) -> tuple[int, int]:
  """(start token, end token) of characters [start_char, end_char) in one window, or (0, 0) when
  the window does not hold all of them."""
  context = [t for t, c in enumerate(in_context) if c]
  if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
    return 0, 0
  start = next(t for t in context if offsets[t][1] > start_char)
  end = next(t for t in reversed(context) if offsets[t][0] < end_char)
  return start, end


def windows(tokenizer, question: str, context: str, answers, *, max_length: int, stride: int,
            name: str) -> list[dict]:
  """One example's windows: token ids, type ids, per-token context character offsets ((-1, -1)
  off the context) and the first answer's target tokens."""
  try:
    enc = tokenizer(question, context, truncation="only_second", max_length=max_length,
                    stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                    return_token_type_ids=True)
  except Exception as e:  # pylint: disable=broad-except  (tokenizers' errors vary by backend)
    raise UserError(f"example {name!r}: cannot fit its question into data.max_length="
                    f"{max_length} with data.doc_stride={stride} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''})") from None
  out = []
  for w in range(len(enc["input_ids"])):
    ids = enc["input_ids"][w]
    in_context = [s == 1 for s in enc.sequence_ids(w)]
    offsets = [tuple(o) if c else (-1, -1) for o, c in zip(enc["offset_mapping"][w], in_context)]
    start, end = (0, 0)
    if answers:
      text, char = answers[0]
      start, end = answer_tokens(offsets, in_context, char, char + len(text))
    types = enc["token_type_ids"][w] if "token_type_ids" in enc else [0] * len(ids)
    out.append({"input_ids": np.asarray(ids, np.int32), "token_type_ids": np.asarray(types, np.int32),
                "offsets": offsets, "start": start, "end": end})
  return out


class QAData(row_batches.RowBatches):
  """One prepared extractive-QA dataset: each split's windows, made once per split."""

  def __init__(self, builder, tokenizer, *, max_length: int, doc_stride: int, padding: str,
               bucket_boundaries=(), train_split: str = "train", max_train_examples: int = 0,
               seed: int = 0, group_by_length: int = 0):
    if padding not in collate_lib.PADDINGS:
      raise UserError(f"data.padding={padding!r} is not one of {list(collate_lib.PADDINGS)}")
    if not 0 <= doc_stride < max_length // 2:
      raise UserError(f"data.doc_stride={doc_stride} must be in [0, data.max_length / 2 = "
                      f"{max_length // 2})")
    if not getattr(tokenizer, "is_fast", False):
      raise UserError("question answering needs a fast tokenizer (tokenizer.json): spans map "
                      "back to the context through its offsets")
    self._builder, self._tokenizer = builder, tokenizer
    self._max_length, self._stride = int(max_length), int(doc_stride)
    self._train_split, self._max_train, self._seed = train_split, int(max_train_examples), int(seed)
    self._group_by_length = int(group_by_length)
    self._pad_id, self._padding = tokenization.pad_id(tokenizer), padding
    self._boundaries = tuple(int(b) for b in bucket_boundaries)
    self._rows, self._windows = {}, {}
    self.split_sizes = {s: len(self._records(s)) for s in builder.info.splits}

  def _records(self, split: str) -> grain.MapDataset:
    return builders.split_records(self._builder, split, train_split=self._train_split,
                                  max_train=self._max_train, seed=self._seed)

  def rows(self, split: str) -> list[dict]:
    """A split's questions as `{"id", "question", "context", "answers": [[text, start], ...]}`."""
    if split not in self._rows:
      records = self._records(split)
      self._rows[split] = [{"id": _text(r["id"]), "question": _text(r["question"]),
                            "context": _text(r["context"]),
                            "answers": json.loads(_text(r["answers_json"]))}
                           for r in (records[i] for i in range(len(records)))]
    return self._rows[split]

  def windows(self, split: str) -> list[dict]:
    """Every window of the split, in order; each also names its `example` (row number)."""
    if split not in self._windows:
      out = []
      for i, r in enumerate(self.rows(split)):
        for w in windows(self._tokenizer, r["question"], r["context"], r["answers"],
                         max_length=self._max_length, stride=self._stride, name=r["id"]):
          out.append({**w, "example": i, "window": len(out)})
      self._windows[split] = out
    return self._windows[split]

  def _collate(self, items, *, batch_size: int | None = None, longest: int | None = None):
    size = batch_size or len(items)
    if longest is None:
      longest = max((len(x["input_ids"]) for x in items), default=1)
    length = collate_lib.padded_length(longest, self._max_length, self._padding,
                                       self._boundaries)
    batch = {"input_ids": np.full((size, length), self._pad_id, np.int32),
             "attention_mask": np.zeros((size, length), np.int32),
             "token_type_ids": np.zeros((size, length), np.int32),
             "start_positions": np.zeros((size,), np.int32),
             "end_positions": np.zeros((size,), np.int32),
             "window": np.full((size,), -1, np.int32), "weights": np.zeros((size,), np.float32)}
    for row, x in enumerate(items):
      n = len(x["input_ids"])
      batch["input_ids"][row, :n], batch["token_type_ids"][row, :n] = x["input_ids"], x[
          "token_type_ids"]
      batch["attention_mask"][row, :n] = 1
      batch["start_positions"][row], batch["end_positions"][row] = x["start"], x["end"]
      batch["window"][row], batch["weights"][row] = x["window"], 1.0
    batch["attention_mask"][len(items):, 0] = 1
    return batch

  def _num_rows(self, split: str) -> int:
    return len(self.windows(split))

  def _batch_rows(self, split: str, shard_index: int, shard_count: int) -> row_batches.Rows:
    """This shard's context windows (every process makes all of the split's, to map them back)."""
    row_batches.check_shard(shard_index, shard_count)
    mine = self.windows(split)[shard_index::shard_count]
    return row_batches.Rows(mine, [len(x["input_ids"]) for x in mine])


def load_qa_data(data_cfg, tokenizer, *, seed: int) -> QAData:
  builder = builders.prepare(data_cfg)
  if "answers_json" not in builder.info.features:
    raise UserError(f"data.name={data_cfg.name!r} holds no QA examples; the question_answering "
                    "objective reads data.name=qa_files")
  return QAData(builder, tokenizer, max_length=data_cfg.max_length,
                doc_stride=data_cfg.get("doc_stride", 128), padding=data_cfg.padding,
                bucket_boundaries=tuple(data_cfg.bucket_boundaries or ()),
                train_split=data_cfg.train_split,
                max_train_examples=data_cfg.max_train_examples, seed=seed,
                group_by_length=data_cfg.get("group_by_length", 0))
