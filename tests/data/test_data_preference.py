"""Preference pairs: JSONL forms, skipped and dropped pairs, the [B, 2, T] layout, sharding, resume."""

import numpy as np
import pytest

from ftjax.data import chat_template
from ftjax.data import preference
from ftjax.errors import UserError
from test_data_chat_template import make_chat_tokenizer


def _rows():
  """Pairs in every accepted form, plus one empty and one identical pair (skipped)."""
  return [
      {"prompt": "hi how are you", "chosen": "fine thanks", "rejected": "bad"},
      {"messages": [{"role": "system", "content": "be good"},
                    {"role": "user", "content": "help me please"},
                    {"role": "assistant", "content": "what is it"},
                    {"role": "user", "content": "a printer"}],
       "chosen": [{"role": "assistant", "content": "yes one two"}],
       "rejected": [{"role": "assistant", "content": "no"}]},
      {"prompt": [{"role": "user", "content": "what is a computer"}], "chosen": "a good one",
       "rejected": "bye"},
      {"prompt": "hello", "chosen": "  ", "rejected": "bye"},
      {"prompt": "hello", "chosen": "ok  Good", "rejected": "ok good"},
  ] + [{"prompt": f"one two {w}", "chosen": f"yes {w} good", "rejected": "no bad"}
       for w in ("three", "four", "five", "six", "seven", "eight", "nine", "ten")]


@pytest.fixture(scope="module")
def tokenizer():
  return make_chat_tokenizer()


@pytest.fixture
def load(tmp_path, make_data_cfg, write_jsonl, tokenizer):
  def make(rows=None, **overrides):
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows or _rows()),
             "validation": write_jsonl(tmp_path / "dev.jsonl", (rows or _rows())[:5])}
    options = dict(name="preference_files", files=files, max_length=64, chat_template="",
                   bucket_boundaries=(16, 32))
    return preference.load_preference_data(make_data_cfg(**{**options, **overrides}), tokenizer,
                                           seed=0)
  return make


def test_every_form_is_read_and_bad_pairs_are_counted(load):
  data = load()
  assert data.split_sizes == {"train": 11, "validation": 3}
  assert data.skipped == {"empty_reply": 2, "identical_replies": 2}  # both splits' copies
  second = next(p for p in data.pairs("train") if p["id"] == "train.jsonl:2")
  assert [m["role"] for m in second["prompt"]] == ["system", "user", "assistant", "user"]
  assert (second["chosen"], second["rejected"]) == ("yes one two", "no")


def test_batches_hold_both_sides_and_mask_only_the_final_reply(load, tokenizer):
  data = load()
  batch = next(data.eval_batches("train", 11))
  assert batch["input_ids"].shape == (11, 2, 32) and batch["weights"].tolist() == [1] * 11
  # The pair whose prompt holds an earlier assistant turn: only the final reply is learnt.
  i, pair = next((i, p) for i, p in enumerate(data.pairs("train")) if p["id"] == "train.jsonl:2")
  for side, reply in ((0, pair["chosen"]), (1, pair["rejected"])):
    ids, mask = batch["input_ids"][i, side], batch["loss_mask"][i, side]
    learnt = ids[1:][mask[:-1] > 0]  # targets of masked positions
    assert tokenizer.convert_ids_to_tokens(learnt.tolist()) == reply.split() + ["<|im_end|>"]
    full = chat_template.render(tokenizer, pair["prompt"] + [{"role": "assistant",
                                                               "content": reply}], data.template)
    n = len(tokenizer(full, add_special_tokens=False)["input_ids"])
    np.testing.assert_array_equal(ids[:n], tokenizer(full, add_special_tokens=False)["input_ids"])
    assert batch["segment_ids"][i, side, :n].tolist() == [1] * n


def test_eval_pads_with_weightless_pairs_and_shards_agree(load):
  data = load()
  batches = list(data.eval_batches("train", 4))
  assert len(batches) == 3 and batches[-1]["weights"].tolist() == [1, 1, 1, 0]
  assert not batches[-1]["loss_mask"][3].any()
  shards = [list(data.eval_batches("train", 2, shard_index=i, shard_count=2)) for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == 3
  assert sum(b["weights"].sum() for s in shards for b in s) == 11


def test_too_long_prompts_are_dropped_and_long_replies_cut(load):
  rows = _rows()
  rows[0] = {"prompt": " ".join(["one"] * 40), "chosen": "fine", "rejected": "bad"}
  rows[2] = {"prompt": "hi", "chosen": " ".join(["two"] * 40), "rejected": "bye"}
  data = load(rows, max_length=32, bucket_boundaries=(8, 16, 32))
  batches = list(data.eval_batches("train", 16))
  assert batches[0]["weights"].sum() == 10  # 11 pairs, the long prompt dropped
  assert data.dropped_prompt_too_long["train"] == 1 and data.truncated["train"] == 2
  assert batches[0]["input_ids"].shape[-1] == 32


def test_truncate_prompt_keeps_long_requests_by_cutting_their_start(load, tokenizer):
  rows = _rows()
  rows[0] = {"prompt": " ".join(["one"] * 40) + " two", "chosen": "fine", "rejected": "bad"}
  data = load(rows, max_length=32, bucket_boundaries=(8, 16, 32), truncate_prompt=True)
  batch = next(data.eval_batches("train", 16))
  assert data.dropped_prompt_too_long["train"] == 0 and data.prompt_truncated["train"] == 1
  assert batch["weights"].sum() == 11  # nothing dropped
  i = next(i for i, p in enumerate(data.pairs("train")) if p["id"] == "train.jsonl:1")
  for side, reply in ((0, "fine"), (1, "bad")):
    ids, mask = batch["input_ids"][i, side], batch["loss_mask"][i, side]
    learnt = ids[1:][mask[:-1] > 0]
    assert tokenizer.convert_ids_to_tokens(learnt.tolist()) == [reply, "<|im_end|>"]
    # The prompt's end survives (its last word, the generation prompt); its start is gone.
    tokens = tokenizer.convert_ids_to_tokens(ids[batch["attention_mask"][i, side] > 0].tolist())
    assert "two" in tokens and tokens[0] != "<|im_start|>"
  # Both sides lost the same prompt tokens: their prompts are identical.
  first = [int(np.argmax(batch["loss_mask"][i, s] > 0)) for s in (0, 1)]
  np.testing.assert_array_equal(batch["input_ids"][i, 0, :first[0]],
                                batch["input_ids"][i, 1, :first[1]])


def test_train_stream_resumes_exactly_and_splits_over_processes(load):
  data = load()
  it = data.train_iterator(4, seed=3)
  for _ in range(2):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  again = data.train_iterator(4, seed=3)
  again.set_state(state)
  for want in expected:
    got = next(again)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  halves = [next(data.train_iterator(2, seed=3, shard_index=i, shard_count=2)) for i in range(2)]
  whole = next(data.train_iterator(4, seed=3))
  np.testing.assert_array_equal(np.concatenate([h["input_ids"] for h in halves]),
                                whole["input_ids"])


@pytest.mark.parametrize("row, message", [
    ({"chosen": "a", "rejected": "b"}, r"train.jsonl:1: missing field 'prompt' \(or 'messages'\)"),
    ({"prompt": "hi", "rejected": "b"}, r"train.jsonl:1: missing field 'chosen'"),
    ({"prompt": "hi", "chosen": 3, "rejected": "b"}, r"field 'chosen' must be a string"),
    ({"prompt": "hi", "chosen": "a", "rejected": [{"role": "user", "content": "b"}]},
     r"field 'rejected' must be a string or one assistant message"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}],
      "chosen": "a", "rejected": "b"}, r"must not end with an assistant turn"),
])
def test_a_malformed_pair_names_its_line(load, row, message):
  with pytest.raises(UserError, match=message):
    load([row])


def test_a_file_of_only_unusable_pairs_is_an_error(load):
  with pytest.raises(UserError, match=r"no usable preference pair .*identical_replies': 1"):
    load([{"prompt": "hi", "chosen": "ok", "rejected": "OK"}])
