"""TFDS builder for text pairs in local files (`data.name = "pair_files"`), for embeddings.

Each row is one (anchor, positive) pair, in sentence-transformers' column names:

  {"anchor": "how do I reset my password", "positive": "Resetting a password: open ...",
   "group": "faq-12", "score": 4.5}

`anchor` and `positive` are required strings. `group` (optional, a string or an integer) names
the pair's relevance group: at evaluation a query's relevant documents are the positives of
its group, and in training no positive of the same group counts as an in-batch negative. A row
without one is its own group. `score` (optional, a number: graded similarity, as in STS) is
read at evaluation only, for the Spearman / Pearson correlation of cosine similarity with it;
training treats every pair as a positive. JSONL, CSV and TSV (`ftjax.data.files_reader`); a
malformed row is a `UserError` naming `file:line`. A pair whose two sides are equal (after text
normalisation) teaches nothing: it is skipped, counted in the dataset metadata (`skipped`) and
shown in the data report.
"""

import math

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from ftjax.data import files_builder
from ftjax.data import files_reader
from ftjax.data import text_norm
from ftjax.errors import UserError

SKIP_REASONS = ("identical_sides",)


def features() -> tfds.features.FeaturesDict:
  """The example features every pair builder writes."""
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(),
      "anchor": tfds.features.Text(),
      "positive": tfds.features.Text(),
      "group": tfds.features.Text(),  # relevance group ("" = the pair alone)
      "score": tfds.features.Scalar(dtype=np.float32),  # graded similarity; NaN = none
  })


def encode_example(example_id: str, anchor: str, positive: str, *, group: str = "",
                   score: float = math.nan) -> dict:
  return {"id": example_id, "anchor": anchor, "positive": positive, "group": group,
          "score": score}


def _group(row: dict, where: str) -> str:
  value = row.get("group", "")
  if value is None or value == "":
    return ""
  if isinstance(value, bool) or not isinstance(value, (str, int)):
    raise UserError(f"{where}: field 'group' must be a string or an integer, got "
                    f"{type(value).__name__}")
  return str(value)


def _score(row: dict, where: str) -> float:
  value = row.get("score")
  if value is None or value == "":
    return math.nan
  try:
    score = float(value) if not isinstance(value, bool) else math.nan
  except ValueError:
    score = math.nan
  if not math.isfinite(score):
    raise UserError(f"{where}: field 'score' must be a finite number, got {value!r}")
  return score


def read_pairs(path) -> tuple[list[dict], dict[str, int]]:
  """Reads one file: (encoded examples, skipped counts by reason)."""
  path = files_reader.check_file(path)
  kept, skipped = [], dict.fromkeys(SKIP_REASONS, 0)
  for line_no, row in files_reader.read_rows(path):
    where = f"{path}:{line_no}"
    anchor = files_reader.get_text(row, "anchor", where)
    positive = files_reader.get_text(row, "positive", where)
    if text_norm.normalize(anchor) == text_norm.normalize(positive):
      skipped["identical_sides"] += 1
      continue
    kept.append(encode_example(f"{path.name}:{line_no}", anchor, positive,
                               group=_group(row, where), score=_score(row, where)))
  return kept, skipped


def from_data_config(data_cfg, data_dir) -> "PairFiles":
  """The builder for `data.name == "pair_files"` (used by `builders.get_builder`)."""
  return PairFiles(data_dir=data_dir, config=files_builder.make_config(
      dict(data_cfg.files or {}), example="pairs.jsonl"))


class PairFiles(files_builder.FilesBuilder):
  """(anchor, positive) pairs from local files, one split per file."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  DESCRIPTION = "Text pairs"

  def features(self) -> tfds.features.FeaturesDict:
    return features()

  def read_split(self, split: str, path: str) -> list[dict]:
    del split
    rows, counts = read_pairs(path)
    self._skipped = {**dict.fromkeys(SKIP_REASONS, 0), **getattr(self, "_skipped", {})}
    for reason, n in counts.items():
      self._skipped[reason] += n
    if any(counts.values()):
      logging.warning("pair_files: %s: skipped %s", path, counts)
    if not rows:
      raise UserError(f"{path}: no usable pair (skipped {counts})")
    return rows

  def after_read(self, by_split) -> None:
    del by_split
    self.info.metadata["skipped"] = dict(getattr(self, "_skipped", {}))
