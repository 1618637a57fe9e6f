"""Tests for plain-text data: the folder builder (selection, dedupe, file-disjoint splits) and
the windowed LM pipeline (every token learnt once, packing, sharded eval, resume)."""

import collections

import numpy as np
import pytest

from ftjax.data import text
from ftjax.data import text_files
from ftjax.errors import UserError
from test_data_chat_template import CHAT_WORDS, make_chat_tokenizer

WORDS = CHAT_WORDS[3:]


def _write_corpus(root, n=40, seed=0):
  """`n` documents of 1-60 words in nested folders, plus files the builder must leave out."""
  rng = np.random.default_rng(seed)
  for i in range(n):
    path = root / f"pkg{i % 3}" / f"mod{i}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(" ".join(rng.choice(WORDS, size=int(rng.integers(1, 61)))), encoding="utf-8")
  (root / "pkg0" / "copy.py").write_text((root / "pkg0" / "mod0.py").read_text())  # duplicate
  (root / "pkg1" / "blank.py").write_text("  \n\n")
  (root / "pkg2" / "latin1.py").write_bytes("caf\xe9".encode("latin-1"))
  (root / "tests").mkdir()
  (root / "tests" / "test_x.py").write_text("yes no")  # under an excluded folder
  (root / "notes.txt").write_text("yes")  # not matched by the glob
  return root


@pytest.fixture(scope="module")
def tokenizer():
  return make_chat_tokenizer()


@pytest.fixture
def corpus(tmp_path):
  return _write_corpus(tmp_path / "corpus")


@pytest.fixture
def load(corpus, make_data_cfg, tokenizer):
  def make(**overrides):
    options = dict(name="text_files", text_source=str(corpus), eval_fraction=0.2,
                   test_fraction=0.2, max_length=16, packing=True, bucket_boundaries=(8, 16))
    return text.load_text_data(make_data_cfg(**{**options, **overrides}), tokenizer, seed=0)
  return make


def test_windows_hold_every_transition_exactly_once():
  for n in (1, 2, 15, 16, 17, 31, 32, 100):
    ids = np.arange(n, dtype=np.int32)
    pieces = text.windows(ids, 16)
    assert all(1 <= len(p) <= 16 for p in pieces)
    transitions = [(int(a), int(b)) for p in pieces for a, b in zip(p[:-1], p[1:])]
    assert transitions == [(t, t + 1) for t in range(n - 1)], n
    assert n == 1 or all(len(p) > 1 for p in pieces)


def test_builder_selects_dedupes_and_splits_by_file(load, corpus):
  data = load()
  assert data.skipped == {"not_utf8": 1, "blank": 1, "duplicates": 1}
  ids = {split: [doc_id for doc_id, _ in data.documents(split)] for split in data.split_sizes}
  every = [i for split_ids in ids.values() for i in split_ids]
  assert len(every) == len(set(every)) == 40  # each kept file in exactly one split
  assert not any(i.startswith("tests/") or i.endswith(".txt") for i in every)
  assert set(ids) == {"train", "validation", "test"}
  for split, split_ids in ids.items():  # the split is a function of the path alone
    assert all(text_files.split_of(i, 0.2, 0.2) == split for i in split_ids)


def test_every_document_token_is_a_target_once_and_ends_with_the_separator(load, tokenizer):
  data = load()
  eos = tokenizer.eos_token_id
  assert data.separator_id == eos
  targets = collections.Counter()
  for batch in data.eval_batches("train", 4):
    for b in range(batch["input_ids"].shape[0]):
      for s in range(1, batch["segment_ids"][b].max() + 1):
        where = np.flatnonzero(batch["segment_ids"][b] == s)
        np.testing.assert_array_equal(batch["loss_mask"][b][where[:-1]], 1.0)
        assert batch["loss_mask"][b][where[-1]] == 0.0  # no target past the window
        targets.update(tuple(batch["input_ids"][b][where[:i + 2]][-2:])
                       for i in range(len(where) - 1))
  expected = collections.Counter()
  for _, doc in data.documents("train"):
    ids = tokenizer(doc, add_special_tokens=False)["input_ids"] + [eos]
    expected.update(zip(ids[:-1], ids[1:]))
  assert targets == expected


def test_packed_training_rows_resume_exactly_and_shards_split_the_global_batch(load):
  data = load()
  it = data.train_iterator(4, seed=3)
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  after = [next(it) for _ in range(4)]
  resumed = data.train_iterator(4, seed=3)
  resumed.set_state(state)
  for a, b in zip(after, [next(resumed) for _ in range(4)]):
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
  assert data.packed_fill > 0.7
  assert all(b["input_ids"].shape == (4, 16) for b in first)
  halves = [load().train_iterator(2, seed=3, shard_index=k, shard_count=2) for k in (0, 1)]
  for whole in first:
    np.testing.assert_array_equal(np.concatenate([next(h)["input_ids"] for h in halves]),
                                  whole["input_ids"])


def test_eval_shards_cover_the_windows_once_in_lock_step(load):
  data = load()
  whole = sum(int(b["loss_mask"].sum()) for b in data.eval_batches("validation", 3))
  counts = [len(list(data.eval_batches("validation", 3, shard_index=k, shard_count=2)))
            for k in (0, 1)]
  parts = sum(int(b["loss_mask"].sum()) for k in (0, 1)
              for b in data.eval_batches("validation", 3, shard_index=k, shard_count=2))
  assert counts[0] == counts[1] and parts == whole > 0


def test_prompts_are_document_openings_with_their_continuation(load, tokenizer):
  data = load(text_prompt_tokens=4)
  prompts = data.prompts("train", limit=3)
  assert len(prompts) == 3
  for p in prompts:
    assert len(p["input_ids"]) == 4 and p["reference"]
    assert p["text"] == tokenizer.decode(p["input_ids"])


def test_bad_text_inputs_are_one_line_errors(load, tmp_path, make_data_cfg, tokenizer):
  with pytest.raises(UserError, match="document_separator='<nope>' is not a token"):
    load(document_separator="<nope>")
  with pytest.raises(UserError, match="data.text_source=.*missing.* does not exist"):
    load(text_source=str(tmp_path / "missing"))
  (tmp_path / "file.py").write_text("yes")
  with pytest.raises(UserError, match="is not a folder"):
    load(text_source=str(tmp_path / "file.py"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="no file under .* matches data.text_glob"):
    load(text_source=str(tmp_path / "empty"))
  with pytest.raises(UserError, match="sum to less than 1"):
    load(eval_fraction=0.5, test_fraction=0.5)


def test_stdlib_is_the_default_code_corpus():
  root = text_files.resolve_root("stdlib")
  files = text_files.select(root, "**/*.py", text_files.DEFAULT_EXCLUDE)
  assert len(files) > 500 and (root / "json" / "__init__.py") in files
  assert not any("test" in f.relative_to(root).parts[:-1] for f in files)


def test_a_chosen_separator_ends_documents_and_generations(load, tokenizer, tmp_path):
  from ftjax.data import tokenization
  data = load(document_separator="<pad>")
  pad = tokenizer.convert_tokens_to_ids("<pad>")
  assert all(ids[-1] == pad for ids in data._token_ids("train"))
  assert pad in tokenization.dataset_stop_token_ids(tmp_path, data)
