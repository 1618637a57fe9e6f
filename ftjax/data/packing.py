"""Packs tokenised conversations into fixed-length rows and lays rows out as LM batches.

A row holds one or more whole conversations ("segments"). In a batch:

* `segment_ids` numbers the segments of a row 1..k (0 = padding), `positions` restart at 0 in
  each segment and `attention_mask = segment_ids > 0`: a model that attends only within a
  segment sees each conversation exactly as if it were alone in its row.
* `targets[t] = input_ids[t + 1]` inside a segment; the last token of a segment (and padding)
  has no target: `loss_mask` is 0 there, so nothing is learnt across a segment boundary.
* `loss_mask[t]` is the assistant mask of the *target* token: the loss trains on predicting
  assistant tokens (reply + end-of-turn token) only.

Packing is greedy first-fit over a seeded random order (like Tunix / MaxText's first-fit
packers, but over whole conversations, never splitting one across rows).
"""

from collections.abc import Sequence

import numpy as np

# One tokenised conversation: (input ids, assistant mask), equal-length int32 arrays.
Example = tuple[np.ndarray, np.ndarray]


def first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
  """Greedy first-fit: each item (in order) goes to the first row with room for it.

  Returns rows as lists of item indices. Every length must be in [1, capacity].
  Cost is O(items x rows) in vectorised numpy; fine up to ~1e5 conversations.
  """
  lengths = np.asarray(lengths, np.int64)
  if len(lengths) and (lengths.min() < 1 or lengths.max() > capacity):
    raise ValueError(f"lengths must be in [1, {capacity}], got [{lengths.min()}, {lengths.max()}]")
  room = np.empty(len(lengths), np.int64)  # Room left in each row (at most one row per item).
  rows: list[list[int]] = []
  for index, length in enumerate(lengths):
    fits = np.flatnonzero(room[:len(rows)] >= length)
    if len(fits):
      row = int(fits[0])
    else:
      row = len(rows)
      rows.append([])
      room[row] = capacity
    rows[row].append(index)
    room[row] -= length
  return rows


def collate_rows(rows: Sequence[Sequence[Example]], *, length: int, pad_id: int,
                 batch_size: int | None = None) -> dict[str, np.ndarray]:
  """Lays out rows of segments as a batch; rows past `len(rows)` (up to batch_size) are padding."""
  size = batch_size or len(rows)
  input_ids = np.full((size, length), pad_id, np.int32)
  targets = np.full((size, length), pad_id, np.int32)
  loss_mask = np.zeros((size, length), np.float32)
  segment_ids = np.zeros((size, length), np.int32)
  positions = np.zeros((size, length), np.int32)
  for b, row in enumerate(rows):
    offset = 0
    for s, (ids, mask) in enumerate(row, start=1):
      n = len(ids)
      if offset + n > length:
        raise ValueError(f"row {b} holds {offset + n} tokens, more than length {length}")
      end = offset + n
      input_ids[b, offset:end] = ids
      targets[b, offset:end - 1] = ids[1:]
      loss_mask[b, offset:end - 1] = mask[1:]
      segment_ids[b, offset:end] = s
      positions[b, offset:end] = np.arange(n, dtype=np.int32)
      offset = end
  return {"input_ids": input_ids, "targets": targets, "loss_mask": loss_mask,
          "segment_ids": segment_ids, "positions": positions,
          "attention_mask": (segment_ids > 0).astype(np.int32)}


def collate_completions(prompts, completions, *, length: int, pad_id: int,
                        batch_size: int | None = None) -> dict[str, np.ndarray]:
  """Rows of prompt + sampled completion (token-id sequences) as `collate_rows` lays them out,
  the loss on the completion tokens only: the batch an RL rollout or on-policy step trains on."""
  rows = [[(np.concatenate([np.asarray(p, np.int32), np.asarray(c, np.int32)]),
            np.concatenate([np.zeros(len(p), np.float32), np.ones(len(c), np.float32)]))]
          for p, c in zip(prompts, completions)]
  return collate_rows(rows, length=length, pad_id=pad_id, batch_size=batch_size)


class PackedRows:
  """Rows of examples, indexable by Grain: item r is the list of examples packed in row r."""

  def __init__(self, examples: Sequence[Example], rows: Sequence[Sequence[int]]):
    self._examples = examples
    self.rows = [list(r) for r in rows]

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, index: int) -> list[Example]:
    return [self._examples[i] for i in self.rows[index]]

  def fill(self, length: int) -> float:
    """Fraction of the rows' token slots holding real tokens."""
    used = sum(len(self._examples[i][0]) for row in self.rows for i in row)
    return used / max(len(self.rows) * length, 1)


def pack(examples: Sequence[Example], length: int, *, seed: int) -> PackedRows:
  """First-fit packing of `examples` (each at most `length` tokens) in a seeded random order."""
  order = np.random.default_rng([seed, 0x9ACC]).permutation(len(examples))
  rows = first_fit([len(examples[i][0]) for i in order], length)
  return PackedRows(examples, [[int(order[i]) for i in row] for row in rows])
