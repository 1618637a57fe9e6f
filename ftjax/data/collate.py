"""Pads tokenised examples into fixed-shape numpy batches."""

from collections.abc import Sequence

import numpy as np

PADDINGS = ("max_length", "bucket")


def padded_length(longest: int, max_length: int, padding: str,
                  boundaries: Sequence[int]) -> int:
  """Sequence length of a batch: max_length, or the smallest boundary >= longest.

  Buckets keep the number of distinct shapes (hence XLA compilations) small while
  sparing short batches most of the padding.
  """
  if padding == "bucket":
    for boundary in sorted(boundaries):
      if boundary >= longest:
        return min(boundary, max_length)
  return max_length


def collate(examples: Sequence[dict], *, pad_id: int, max_length: int, padding: str,
            boundaries: Sequence[int], batch_size: int | None = None,
            longest: int | None = None) -> dict:
  """Stacks examples into a batch dict, adding padding rows (weight 0) up to batch_size.

  `longest` overrides the longest example when the padded length must be agreed beyond these
  examples (each process's slice of a global batch pads to the global batch's length).
  """
  size = batch_size or len(examples)
  if longest is None:
    longest = max((len(e["input_ids"]) for e in examples), default=1)
  length = padded_length(longest, max_length, padding, boundaries)
  input_ids = np.full((size, length), pad_id, np.int32)
  attention_mask = np.zeros((size, length), np.int32)
  token_type_ids = np.zeros((size, length), np.int32)
  labels = np.zeros((size,), np.int32)
  weights = np.zeros((size,), np.float32)
  for i, example in enumerate(examples):
    n = len(example["input_ids"])
    input_ids[i, :n] = example["input_ids"]
    token_type_ids[i, :n] = example["token_type_ids"]
    attention_mask[i, :n] = 1
    labels[i] = example["label"]
    weights[i] = 1.0
  # Padding rows attend to one (pad) token so no row has an all-masked softmax.
  attention_mask[len(examples):, 0] = 1
  return {"input_ids": input_ids, "attention_mask": attention_mask,
          "token_type_ids": token_type_ids, "labels": labels, "weights": weights}
