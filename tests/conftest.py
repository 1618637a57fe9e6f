"""Shared test setup: CPU only, quiet logs."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib

import pytest

from tiny_assets import make_sentiment_rows, make_tiny_bert, write_jsonl


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> pathlib.Path:
  return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_sentiment_files(tmp_path_factory) -> dict[str, pathlib.Path]:
  root = tmp_path_factory.mktemp("sentiment")
  return {"train": write_jsonl(root / "train.jsonl", make_sentiment_rows(96, seed=0)),
          "validation": write_jsonl(root / "dev.jsonl", make_sentiment_rows(40, seed=1))}
