"""Fixtures for the data tests: a tiny WordPiece tokenizer and data configs."""

import json

import ml_collections
import pytest

from tiny_assets import save_wordpiece_tokenizer

WORDS = ("a b c d e f g h good bad movie great awful film plot fun dull the is was very "
         "not at all really one two three four five six seven eight nine ten").split()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
  """A BERT-style fast tokenizer ([CLS] a [SEP] b [SEP], type ids) saved to a folder."""
  path = tmp_path_factory.mktemp("tokenizer")
  save_wordpiece_tokenizer(path, WORDS)
  return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
  from ftjax.data import tokenization
  return tokenization.load_tokenizer(tokenizer_dir)


def _make_data_cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      name="files", files=ml_collections.ConfigDict(), text_field="text",
      text_pair_field="", label_field="label", label_names=(), train_split="train",
      eval_split="validation", test_split="test", max_length=16, padding="bucket",
      bucket_boundaries=(4, 8, 12), data_dir="", max_train_examples=0))
  files = overrides.pop("files", None)
  cfg.update(overrides)
  if files is not None:
    cfg.files = ml_collections.ConfigDict(files)
  return cfg


def _write_jsonl(path, rows) -> str:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
  return str(path)


@pytest.fixture
def make_data_cfg(tmp_path):
  """Returns `f(**overrides)`: the trainer's `data` config with test defaults.

  `data_dir` defaults to a per-test folder so tests never share prepared data.
  """
  def make(**overrides):
    overrides.setdefault("data_dir", str(tmp_path / "tfds"))
    return _make_data_cfg(**overrides)
  return make


@pytest.fixture
def write_jsonl():
  return _write_jsonl
