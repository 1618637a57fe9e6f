"""Tests for tokenisation and the Grain classification pipeline."""

import json

import numpy as np
import pytest

from ftjax.data import classification
from ftjax.data import collate
from ftjax.data import tokenization
from ftjax.errors import UserError

WORDS = "good bad movie great awful film plot fun dull the".split()


@pytest.fixture
def files(tmp_path, write_jsonl):
  """40 train / 11 validation rows; text i has (i % 11) + 1 words; label = i % 2."""
  def rows(n, offset):
    return [{"text": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(i % 11 + 1)),
             "label": ["neg", "pos"][i % 2], "id": i + offset} for i in range(n)]
  return {"train": write_jsonl(tmp_path / "train.jsonl", rows(40, 0)),
          "validation": write_jsonl(tmp_path / "valid.jsonl", rows(11, 1000))}


@pytest.fixture
def data(files, make_data_cfg, tokenizer):
  return classification.load_classification_data(make_data_cfg(files=files), tokenizer, seed=0)


def _key(batch):
  """Identifies the examples of a batch by their token ids."""
  return [tuple(row[mask == 1].tolist())
          for row, mask in zip(batch["input_ids"], batch["attention_mask"])]


def test_metadata(data):
  assert data.label_names == ["neg", "pos"]
  assert data.num_classes == 2
  assert data.split_sizes == {"train": 40, "validation": 11}
  assert data.duplicates_removed is None
  assert len(data.texts("validation")) == 11


def test_train_batch_shapes_and_dtypes(data, tokenizer):
  batch = next(data.train_iterator(8, seed=0))
  assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "weights"}
  length = batch["input_ids"].shape[1]
  assert length in (4, 8, 12, 16)
  for key in ("input_ids", "attention_mask", "token_type_ids"):
    assert batch[key].shape == (8, length) and batch[key].dtype == np.int32
  assert batch["labels"].shape == (8,) and batch["labels"].dtype == np.int32
  assert batch["weights"].dtype == np.float32 and (batch["weights"] == 1).all()
  # Every row starts with [CLS] and ends (before padding) with [SEP].
  assert (batch["input_ids"][:, 0] == tokenizer.cls_token_id).all()
  ends = batch["attention_mask"].sum(1) - 1
  assert (batch["input_ids"][np.arange(8), ends] == tokenizer.sep_token_id).all()


def test_bucketing_and_truncation():
  assert [collate.padded_length(n, 16, "bucket", (4, 8, 12)) for n in (1, 4, 5, 12, 13)] == [
      4, 4, 8, 12, 16]
  assert collate.padded_length(3, 6, "bucket", (4, 8)) == 4
  assert collate.padded_length(5, 6, "bucket", (4, 8)) == 6  # Capped at max_length.
  assert collate.padded_length(3, 16, "max_length", (4, 8)) == 16


def test_batches_use_smallest_bucket(data):
  for batch in data.eval_batches("validation", 4):
    longest = batch["attention_mask"].sum(1).max()
    assert batch["input_ids"].shape[1] == min(b for b in (4, 8, 12, 16) if b >= longest)


def test_truncation_at_max_length(files, make_data_cfg, tokenizer, tmp_path, write_jsonl):
  long = write_jsonl(tmp_path / "long.jsonl", [{"text": "good " * 50, "label": "pos"},
                                                {"text": "bad", "label": "neg"}])
  cfg = make_data_cfg(files={"train": long}, max_length=10, padding="max_length")
  data = classification.load_classification_data(cfg, tokenizer, seed=0)
  batch = next(iter(data.eval_batches("train", 2)))
  assert batch["input_ids"].shape == (2, 10)
  assert batch["attention_mask"].sum(1).max() == 10
  assert batch["input_ids"][batch["attention_mask"].sum(1).argmax(), 9] == (
      tokenizer.sep_token_id)


def test_eval_pads_last_batch_with_zero_weights(data):
  batches = list(data.eval_batches("validation", 4))
  assert len(batches) == 3
  assert all(b["input_ids"].shape[0] == 4 for b in batches)
  assert batches[-1]["weights"].tolist() == [1, 1, 1, 0]
  assert sum(b["weights"].sum() for b in batches) == 11
  assert batches[-1]["attention_mask"][3].sum() == 1  # Padding rows are never all-masked.
  # Deterministic: a second pass gives the same batches.
  again = list(data.eval_batches("validation", 4))
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])


def test_eval_shards_are_disjoint_covering_and_in_lockstep(data):
  full = [k for b in data.eval_batches("validation", 2) for k, w in zip(_key(b), b["weights"])
          if w]
  shards = [list(data.eval_batches("validation", 2, shard_index=i, shard_count=3))
            for i in range(3)]
  assert len({len(s) for s in shards}) == 1  # Same number of batches on every process.
  seen = [k for s in shards for b in s for k, w in zip(_key(b), b["weights"]) if w]
  assert sorted(seen) == sorted(full) and len(seen) == 11
  # With the per-batch lengths maximised over the shards (as the evaluator does across
  # processes), batch b has one shape on every shard, and its rows are unchanged.
  longest = np.max([data.eval_batch_lengths("validation", 2, shard_index=i, shard_count=3)
                    for i in range(3)], axis=0)
  agreed = [list(data.eval_batches("validation", 2, shard_index=i, shard_count=3, longest=longest))
            for i in range(3)]
  for b in range(len(agreed[0])):
    assert len({shard[b]["input_ids"].shape for shard in agreed}) == 1
  assert [k for s in agreed for b in s for k, w in zip(_key(b), b["weights"]) if w] == seen


def test_seeded_order(data):
  def first(seed, n=5):
    it = data.train_iterator(8, seed=seed)
    return [_key(next(it)) for _ in range(n)]
  assert first(0) == first(0)
  assert first(0) != first(1)


def test_epochs_cover_train_and_reshuffle(data):
  it = data.train_iterator(8, seed=3)
  epoch1 = [k for _ in range(5) for k in _key(next(it))]  # 40 examples = one epoch.
  epoch2 = [k for _ in range(5) for k in _key(next(it))]
  assert sorted(epoch1) == sorted(epoch2)
  assert epoch1 != epoch2


def test_process_slices_assemble_the_single_process_batches(data):
  # Two processes' rows of each global batch, stacked in process order, are exactly the
  # single-process batch (same rows, same padded length): training does not depend on the
  # number of processes.
  shards = [data.train_iterator(4, seed=0, shard_index=i, shard_count=2) for i in range(2)]
  full = data.train_iterator(8, seed=0)
  for _ in range(12):  # more than an epoch
    parts = [next(s) for s in shards]
    whole = next(full)
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])

def assert_resumes_exactly(data, seed: int, skip: int = 7):
  """The iterator's JSON state after `skip` batches restores the same next batches."""
  it = data.train_iterator(8, seed=seed)
  for _ in range(skip):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [_key(next(it)) for _ in range(4)]
  resumed = data.train_iterator(8, seed=seed)
  resumed.set_state(state)
  assert [_key(next(resumed)) for _ in range(4)] == expected


def test_state_resumes_exactly(data):
  assert_resumes_exactly(data, seed=0)  # past an epoch boundary


def test_max_train_examples_is_a_deterministic_subset(files, make_data_cfg, tokenizer):
  cfg = make_data_cfg(files=files, max_train_examples=10)
  a = classification.load_classification_data(cfg, tokenizer, seed=0)
  b = classification.load_classification_data(cfg, tokenizer, seed=0)
  assert a.split_sizes["train"] == 10
  assert a.texts("train") == b.texts("train")
  assert len(set(a.texts("train"))) == 10


def test_sentence_pair_type_ids(tmp_path, make_data_cfg, tokenizer, write_jsonl):
  train = write_jsonl(tmp_path / "p.jsonl", [{"a": "good movie", "b": "bad", "label": 1}])
  cfg = make_data_cfg(files={"train": train}, text_field="a", text_pair_field="b")
  data = classification.load_classification_data(cfg, tokenizer, seed=0)
  batch = next(iter(data.eval_batches("train", 1)))
  n = batch["attention_mask"][0].sum()
  assert n == 6  # [CLS] good movie [SEP] bad [SEP]
  assert batch["token_type_ids"][0, :n].tolist() == [0, 0, 0, 0, 1, 1]
  assert data.texts("train") == ["good movie || bad"]


def test_user_errors(tmp_path, make_data_cfg, tokenizer, files):
  with pytest.raises(UserError, match="tokenizer folder not found"):
    tokenization.load_tokenizer(tmp_path / "nope")
  with pytest.raises(UserError, match="data.padding"):
    classification.load_classification_data(
        make_data_cfg(files=files, padding="longest"), tokenizer, seed=0)
  with pytest.raises(UserError, match="data.name"):
    classification.load_classification_data(make_data_cfg(name="imdb"), tokenizer, seed=0)
  data = classification.load_classification_data(make_data_cfg(files=files), tokenizer, seed=0)
  with pytest.raises(UserError, match="split 'test' not in dataset"):
    next(data.eval_batches("test", 4))


def test_group_by_length_sorts_pools_keeps_epochs_processes_and_resume(files, make_data_cfg, tokenizer):
  """data.group_by_length=k: batches of similar length (less padding), every example once per
  epoch, the same global batches on 1 and 2 processes, exact resume from the one-integer state."""
  grouped = classification.load_classification_data(make_data_cfg(files=files, group_by_length=5),
                                                    tokenizer, seed=0)
  plain = classification.load_classification_data(make_data_cfg(files=files), tokenizer, seed=0)

  def lengths(batch):
    return batch["attention_mask"].sum(axis=1)

  it, base = grouped.train_iterator(8, seed=3), plain.train_iterator(8, seed=3)
  epoch = [next(it) for _ in range(5)]  # 40 examples = one epoch = one pool of 5 batches
  baseline = [next(base) for _ in range(5)]
  # The same examples as the plain stream's epoch, regrouped so that lengths do not overlap.
  assert sorted(k for b in epoch for k in _key(b)) == sorted(k for b in baseline for k in _key(b))
  spans = sorted((int(lengths(b).min()), int(lengths(b).max())) for b in epoch)
  assert all(hi <= lo_next for (_, hi), (lo_next, _) in zip(spans, spans[1:])), spans
  padded = sum(b["input_ids"].size for b in epoch)
  assert padded < sum(b["input_ids"].size for b in baseline)
  # Pools are visited in a seeded random order (not longest first) and reshuffled per epoch.
  assert [int(lengths(b).max()) for b in epoch] != sorted((int(lengths(b).max()) for b in epoch), reverse=True)
  second = [sorted(_key(next(it))) for _ in range(5)]  # the next epoch: new pools, new batches
  assert second != [sorted(_key(b)) for b in epoch]

  shards = [grouped.train_iterator(4, seed=3, shard_index=i, shard_count=2) for i in range(2)]
  for whole in epoch:
    parts = [next(s) for s in shards]
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])

  assert_resumes_exactly(grouped, seed=3)  # inside the second pool
