"""Shared test setup: CPU only, quiet logs."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import pathlib

import pytest

WORDS = ("good great fine superb lovely bad awful poor dull boring the movie film was a plot "
         "acting really quite not very").split()
POSITIVE = ("good", "great", "fine", "superb", "lovely")
NEGATIVE = ("bad", "awful", "poor", "dull", "boring")


def make_tiny_bert(path: pathlib.Path, *, seed: int = 0, layers: int = 2, hidden: int = 32) -> pathlib.Path:
  """A tiny random BERT saved by transformers (safetensors) with a real WordPiece tokenizer."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  path.mkdir(parents=True, exist_ok=True)
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(WORDS) + [".", ","]
  (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
  tokenizer = transformers.BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
  tokenizer.save_pretrained(str(path))
  config = transformers.BertConfig(
      vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
      intermediate_size=2 * hidden, max_position_embeddings=64, type_vocab_size=2)
  torch.manual_seed(seed)
  transformers.BertModel(config).save_pretrained(str(path))
  return path


def make_sentiment_rows(n: int, seed: int) -> list[dict]:
  """Short synthetic reviews whose label is decided by one sentiment word."""
  import random  # pylint: disable=g-import-not-at-top
  rng = random.Random(seed)
  rows = []
  for i in range(n):
    label = "pos" if i % 2 == 0 else "neg"
    word = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
    filler = rng.sample(["the", "movie", "film", "was", "a", "plot", "acting", "really", "quite", "very"], 3)
    rows.append({"text": " ".join(filler[:2] + [word] + filler[2:]) + f" {i}", "label": label})
  return rows


def write_jsonl(path: pathlib.Path, rows) -> pathlib.Path:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> pathlib.Path:
  return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_sentiment_files(tmp_path_factory) -> dict[str, pathlib.Path]:
  root = tmp_path_factory.mktemp("sentiment")
  return {"train": write_jsonl(root / "train.jsonl", make_sentiment_rows(96, seed=0)),
          "validation": write_jsonl(root / "dev.jsonl", make_sentiment_rows(40, seed=1))}
