"""Tests for first-fit packing and the packed LM batch layout."""

import numpy as np
import pytest

from ftjax.data import packing


def test_first_fit_worked_example():
  # 5 -> row 0; 3 fills row 0; 4 -> row 1; 2 fits row 1 (room 4); 6 needs a new row.
  assert packing.first_fit([5, 3, 4, 2, 6], 8) == [[0, 1], [2, 3], [4]]
  assert packing.first_fit([], 8) == []
  with pytest.raises(ValueError):
    packing.first_fit([9], 8)


def _example(ids, mask):
  return np.asarray(ids, np.int32), np.asarray(mask, np.int32)


def test_collate_rows_worked_example():
  a = _example([10, 11, 12, 13], [0, 0, 1, 1])
  b = _example([20, 21, 22], [0, 1, 1])
  c = _example([30, 31], [0, 1])
  batch = packing.collate_rows([[a, b], [c]], length=8, pad_id=0, batch_size=3)
  np.testing.assert_array_equal(batch["input_ids"], [
      [10, 11, 12, 13, 20, 21, 22, 0], [30, 31, 0, 0, 0, 0, 0, 0], [0] * 8])
  np.testing.assert_array_equal(batch["targets"], [
      [11, 12, 13, 0, 21, 22, 0, 0], [31, 0, 0, 0, 0, 0, 0, 0], [0] * 8])
  # Target of position t is token t+1; a segment's last token has no target (no leakage).
  np.testing.assert_array_equal(batch["loss_mask"], [
      [0, 1, 1, 0, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0], [0] * 8])
  np.testing.assert_array_equal(batch["segment_ids"], [
      [1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 0, 0, 0, 0, 0, 0], [0] * 8])
  np.testing.assert_array_equal(batch["positions"], [
      [0, 1, 2, 3, 0, 1, 2, 0], [0, 1, 0, 0, 0, 0, 0, 0], [0] * 8])
  np.testing.assert_array_equal(batch["attention_mask"], batch["segment_ids"] > 0)
  assert batch["loss_mask"].dtype == np.float32
  for key in ("input_ids", "targets", "segment_ids", "positions", "attention_mask"):
    assert batch[key].dtype == np.int32 and batch[key].shape == (3, 8)
  with pytest.raises(ValueError, match="more than length"):
    packing.collate_rows([[a, b, c]], length=8, pad_id=0)


def test_pack_keeps_every_example_once_and_fits():
  rng = np.random.default_rng(0)
  examples = [_example(np.arange(n), np.ones(n)) for n in rng.integers(1, 17, size=200)]
  rows = packing.pack(examples, 16, seed=3)
  flat = sorted(i for row in rows.rows for i in row)
  assert flat == list(range(200))
  assert all(sum(len(examples[i][0]) for i in row) <= 16 for row in rows.rows)
  assert rows.fill(16) > 0.85  # First-fit over random order packs tightly.
  assert packing.pack(examples, 16, seed=3).rows == rows.rows  # Seeded.
  assert packing.pack(examples, 16, seed=4).rows != rows.rows
