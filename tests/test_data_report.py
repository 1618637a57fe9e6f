"""Data quality report: exact counts on small files with planted duplicates, leakage and long rows."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from ftjax.reports import data_quality
from ftjax.config import base_config
from ftjax.data.classification import load_classification_data
from ftjax.data.tokenization import load_tokenizer
from tiny_assets import write_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LONG = " ".join(["very"] * 30) + " good"  # 31 words + [CLS] [SEP] = 33 tokens


@pytest.fixture
def setup(tmp_path, tiny_bert_dir):
  train = [{"text": "the movie was good", "label": "pos"},
           {"text": "the movie was good", "label": "pos"},  # exact duplicate
           {"text": "The  MOVIE was good", "label": "pos"},  # normalised duplicate
           {"text": "a dull plot", "label": "neg"},
           {"text": "A dull  plot", "label": "pos"},  # same normalised text, other label
           {"text": LONG, "label": "pos"},
           {"text": "great acting", "label": "pos"},
           {"text": "superb film", "label": "pos"}]
  validation = [{"text": "great acting", "label": "pos"},  # exact leak from train
                {"text": "SUPERB film", "label": "pos"},  # normalised leak
                {"text": "awful plot", "label": "neg"},
                {"text": "boring movie", "label": "neg"}]
  cfg = base_config()
  cfg.model.checkpoint = str(tiny_bert_dir)
  cfg.data.name = "files"
  cfg.data.files = ml_collections.ConfigDict(
      {"train": str(write_jsonl(tmp_path / "train.jsonl", train)),
       "validation": str(write_jsonl(tmp_path / "dev.jsonl", validation))})
  cfg.data.test_split = ""
  cfg.data.max_length = 16
  cfg.data.data_dir = str(tmp_path / "tfds")
  tokenizer = load_tokenizer(tiny_bert_dir)
  dataset = load_classification_data(cfg.data, tokenizer, seed=0)
  return cfg, dataset, tokenizer


def test_counts_duplicates_leakage_and_lengths(setup, tmp_path):
  cfg, dataset, tokenizer = setup
  rep = data_quality.write(tmp_path, dataset, tokenizer, cfg)
  assert json.loads((tmp_path / "data_report.json").read_text()) == json.loads(json.dumps(rep))
  train, validation = rep["splits"]["train"], rep["splits"]["validation"]
  assert list(rep["splits"]) == ["train", "validation"]
  assert train["count"] == 8 and validation["count"] == 4
  assert train["labels"] == {"neg": 1, "pos": 7} and validation["labels"] == {"neg": 2, "pos": 2}
  assert train["empty"] == 0
  assert train["duplicates_exact"] == 1 and train["duplicates_normalized"] == 3
  assert train["conflicting_label_texts"] == 1
  assert rep["leakage"] == [{"split": "validation", "seen_in": "train", "rows": 4, "exact": 1,
                             "normalized": 2}]
  assert train["tokens"]["max"] == 33 and train["tokens"]["truncated"] == 1
  assert validation["tokens"]["truncated"] == 0 and validation["tokens"]["min"] == 4
  warnings = "\n".join(rep["warnings"])
  assert "leakage: 2 of 4 validation rows also occur in train (1 exactly)" in warnings
  assert "train: 12.5% of rows are longer than data.max_length=16" in warnings
  assert "train: label imbalance 7.0:1" in warnings
  text = (tmp_path / "data_report.md").read_text()
  assert "| train | 8 | 0 | 1 | 3 | 1 |" in text
  assert "| validation | train | 4 | 1 | 2 |" in text


def test_split_stats_reference():
  lengths = np.array([3, 5, 8, 13, 21, 34])
  stats = data_quality.split_stats(["a", " ", "b", "B", "a", ""], [0, 1, 0, 1, 0, 1], ["x", "y"],
                                  lengths, max_length=10)
  assert stats["empty"] == 2 and stats["duplicates_exact"] == 1 and stats["duplicates_normalized"] == 3
  assert stats["conflicting_label_texts"] == 1  # "b"/"B" carry both labels
  t = stats["tokens"]
  assert (t["min"], t["max"], t["truncated"]) == (3, 34, 3)
  assert t["median"] == np.median(lengths) and t["p90"] == pytest.approx(np.percentile(lengths, 90))


def test_cli_prints_markdown_and_writes_json(setup, tmp_path):
  cfg, _, _ = setup
  out = tmp_path / "out.json"
  args = ["--config=configs/classify_files.py", f"--out={out}",
          f"--config.model.checkpoint={cfg.model.checkpoint}",
          f"--config.data.files.train={cfg.data.files.train}",
          f"--config.data.files.validation={cfg.data.files.validation}",
          f"--config.data.data_dir={cfg.data.data_dir}", "--config.data.max_length=16"]
  result = subprocess.run([sys.executable, "-m", "ftjax.data_report", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "## Data" in result.stdout and "leakage: 2 of 4" in result.stdout
  assert json.loads(out.read_text())["splits"]["train"]["count"] == 8
  bad = subprocess.run([sys.executable, "-m", "ftjax.data_report", *args, "--config.data.max_lenght=3"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: unknown config key")
