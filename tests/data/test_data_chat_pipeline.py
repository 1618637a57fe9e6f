"""Tests for the chat Grain pipeline: batches, packing, truncation, sharding, resume, eval."""

import collections
import math

import numpy as np
import pytest

from ftjax.data import chat
from ftjax.data import chat_template
from test_data_chat_template import CHAT_WORDS, make_chat_tokenizer

WORDS = CHAT_WORDS[3:]  # Content words (not role names).


def _words(rng, n):
  return " ".join(rng.choice(WORDS, size=n))


def _conversations(n, seed):
  """Conversations of 1-3 exchanges with replies of 1-12 words; some with a system turn."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    messages = [{"role": "system", "content": _words(rng, 2)}] if i % 5 == 0 else []
    for _ in range(1 + i % 3):
      messages.append({"role": "user", "content": _words(rng, int(rng.integers(1, 6)))})
      messages.append({"role": "assistant", "content": _words(rng, int(rng.integers(1, 13)))})
    out.append({"messages": messages})
  return out


@pytest.fixture(scope="module")
def tokenizer():
  return make_chat_tokenizer()


@pytest.fixture
def files(tmp_path, write_jsonl):
  return {"train": write_jsonl(tmp_path / "train.jsonl", _conversations(48, 0)),
          "validation": write_jsonl(tmp_path / "valid.jsonl", _conversations(11, 1))}


@pytest.fixture
def load(files, make_data_cfg, tokenizer):
  def make(**overrides):
    options = dict(name="chat_files", files=files, max_length=64, packing=False,
                   chat_template="", bucket_boundaries=(16, 32, 48))
    cfg = make_data_cfg(**{**options, **overrides})
    return chat.load_chat_data(cfg, tokenizer, seed=0)
  return make


def _segments(batch):
  """(input ids, assistant mask of targets) of every segment in a batch, as tuples."""
  out = []
  for b in range(batch["input_ids"].shape[0]):
    for s in range(1, batch["segment_ids"][b].max() + 1):
      where = batch["segment_ids"][b] == s
      out.append((tuple(batch["input_ids"][b][where]), tuple(batch["loss_mask"][b][where])))
  return out


def _reference(data, split):
  """Segments the pipeline should produce, from the untruncated encoder."""
  out = []
  for ids, mask in chat_template.encode(data.tokenizer, data.conversations(split), data.template):
    ids, mask = ids[:data.max_length], mask[:data.max_length]
    out.append((tuple(ids), tuple(np.append(mask[1:], 0).astype(np.float32))))
  return out


def _check_layout(batch):
  seg, pos = batch["segment_ids"], batch["positions"]
  np.testing.assert_array_equal(batch["attention_mask"], (seg > 0).astype(np.int32))
  for b in range(seg.shape[0]):
    k = seg[b].max()
    real = seg[b][seg[b] > 0]
    assert (np.diff(real) >= 0).all() and set(real) == set(range(1, k + 1))  # 1..k, contiguous.
    assert (seg[b][len(real):] == 0).all()  # Padding only at the end.
    for s in range(1, k + 1):
      where = np.flatnonzero(seg[b] == s)
      np.testing.assert_array_equal(pos[b][where], np.arange(len(where)))
      ids = batch["input_ids"][b][where]
      np.testing.assert_array_equal(batch["targets"][b][where[:-1]], ids[1:])
      assert batch["loss_mask"][b][where[-1]] == 0  # No target across the segment boundary.
    assert (batch["loss_mask"][b][seg[b] == 0] == 0).all()


def test_metadata_and_text_views(load):
  data = load()
  assert data.split_sizes == {"train": 48, "validation": 11}
  assert data.skipped == {"no_assistant": 0}
  assert len(data.conversations("validation")) == 11
  texts = data.texts("validation")
  assert texts[0].startswith("<|im_start|>") and texts[0].endswith("<|im_end|>\n")
  prompts = data.prompts("validation", limit=3)
  assert len(prompts) == 3
  for p, messages in zip(prompts, data.conversations("validation")):
    assert p["text"].endswith("<|im_start|>assistant\n")
    assert p["reference"] == messages[-1]["content"] and p["messages"] == messages[:-1]
    assert p["input_ids"].dtype == np.int32
    assert data.tokenizer.decode(p["input_ids"]).replace(" ", "") == p["text"].replace(
        " ", "").replace("\n", "")


def test_unpacked_batches_are_bucketed(load):
  data = load()
  batch = next(data.train_iterator(4, seed=0))
  assert set(batch) == {"input_ids", "targets", "loss_mask", "segment_ids", "positions",
                        "attention_mask"}
  assert batch["input_ids"].shape[1] in (16, 32, 48, 64)
  assert (batch["segment_ids"].max(1) == 1).all()
  _check_layout(batch)


def test_packed_epoch_matches_reference(load):
  data = load(packing=True)
  it = data.train_iterator(2, seed=0)
  # Each conversation appears exactly once per epoch, intact, with the right target mask.
  rows = math.ceil(len(packing_rows(data)) / 2)
  seen = []
  for _ in range(rows):
    batch = next(it)
    assert batch["input_ids"].shape == (2, 64)
    _check_layout(batch)
    seen += _segments(batch)
  reference = _reference(data, "train")
  counts = collections.Counter(seen)
  assert set(counts) == set(reference)
  assert (batch["segment_ids"].max(1) > 1).any()  # Rows really hold several conversations.
  assert 0.5 < data.packed_fill <= 1.0


def packing_rows(data):
  from ftjax.data import packing  # pylint: disable=g-import-not-at-top
  return packing.pack(data._encoded("train", 0, 1), data.max_length, seed=0)  # pylint: disable=protected-access


def test_truncation_is_counted(load):
  data = load(max_length=24, packing=True)
  lengths = [len(ids) for ids, _ in chat_template.encode(
      data.tokenizer, data.conversations("train"), data.template)]
  batch = next(data.train_iterator(4, seed=0))
  assert batch["input_ids"].shape == (4, 24)
  assert data.truncated["train"] == sum(n > 24 for n in lengths) > 0
  assert data.token_lengths("train").tolist() == lengths
  assert data.dropped_no_loss["train"] >= 0
  kept = len(data._encoded("train", 0, 1))  # pylint: disable=protected-access
  assert kept == 48 - data.dropped_no_loss["train"]


def test_truncation_dropping_all_loss_tokens(tmp_path, write_jsonl, make_data_cfg, tokenizer):
  long_prompt = {"messages": [{"role": "user", "content": " ".join(["one"] * 30)},
                              {"role": "assistant", "content": "yes"}]}
  short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}
  path = write_jsonl(tmp_path / "t.jsonl", [long_prompt, short])
  data = chat.load_chat_data(make_data_cfg(name="chat_files", files={"train": path},
                                           max_length=16, chat_template="chatml"),
                             tokenizer, seed=0)
  batches = list(data.eval_batches("train", 2))
  assert data.truncated == {"train": 1} and data.dropped_no_loss == {"train": 1}
  assert len(batches) == 1 and batches[0]["segment_ids"][1].max() == 0  # Row 2 is padding.


@pytest.mark.parametrize("packing", [False, True])
def test_processes_share_one_global_batch(load, packing):
  # Two processes' batches of 3 are the two halves of the one-process batch of 6, at one
  # padded length: the global batch (hence the run) does not depend on the process count.
  data = load(packing=packing)
  whole = data.train_iterator(6, seed=0)
  shards = [data.train_iterator(3, seed=0, shard_index=i, shard_count=2) for i in range(2)]
  for _ in range(12):  # more than an epoch of the 48 conversations (or their packed rows)
    big, parts = next(whole), [next(s) for s in shards]
    for key in big:
      assert parts[0][key].shape == parts[1][key].shape
      np.testing.assert_array_equal(np.concatenate([parts[0][key], parts[1][key]]), big[key])


@pytest.mark.parametrize("packing", [False, True])
def test_resume_is_exact(load, packing):
  data = load(packing=packing)
  it = data.train_iterator(3, seed=7)
  for _ in range(9):  # Past an epoch boundary when packed.
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  resumed = load(packing=packing).train_iterator(3, seed=7)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  other = next(load(packing=packing).train_iterator(3, seed=8))
  assert not np.array_equal(other["input_ids"], expected[0]["input_ids"])  # Seeded.


def test_eval_batches_cover_split_once(load):
  data = load(packing=True)  # Eval is unpacked either way.
  batches = list(data.eval_batches("validation", 4))
  assert len(batches) == 3
  segments = [s for b in batches for s in _segments(b)]
  assert segments == _reference(data, "validation")
  last = batches[-1]
  assert (last["segment_ids"][3:] == 0).all() and (last["loss_mask"][3:] == 0).all()
  for b in batches:
    _check_layout(b)
  # Sharded: every shard yields ceil(ceil(11 / 3) / 2) = 2 batches, and with the per-batch
  # lengths maximised over the shards (as the evaluator does across processes) batch b has one
  # shape on every shard; the shards' segments together are the split's.
  longest = np.max([data.eval_batch_lengths("validation", 2, shard_index=i, shard_count=3)
                    for i in range(3)], axis=0)
  shards = [list(data.eval_batches("validation", 2, shard_index=i, shard_count=3, longest=longest))
            for i in range(3)]
  assert [len(s) for s in shards] == [2, 2, 2]
  for b in range(2):
    assert len({shard[b]["input_ids"].shape for shard in shards}) == 1
  assert sorted(s for shard in shards for b in shard for s in _segments(b)) == sorted(
      _reference(data, "validation"))
