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

from collections.abc import Mapping
import dataclasses
import hashlib
import json
import math

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from ftjax import sources
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


@dataclasses.dataclass(eq=False)
class PairFilesConfig(tfds.core.BuilderConfig):
  """Per-split files of pairs; build with `make_config`."""

  files: Mapping[str, str] = dataclasses.field(default_factory=dict)


def make_config(files: Mapping[str, str]) -> PairFilesConfig:
  """Checks the files (split name -> path); the config name changes with their content."""
  if not files:
    raise UserError("data.files is empty: give at least one split, e.g. {'train': 'pairs.jsonl'}")
  paths = {split: files_reader.check_file(p, f"data file for split {split!r}").resolve()
           for split, p in files.items()}
  key = {"files": {split: [str(p), sources.file_sha256(p)] for split, p in sorted(paths.items())}}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  return PairFilesConfig(name=f"h{digest}", description=json.dumps(key, sort_keys=True),
                         files={split: str(p) for split, p in paths.items()})


def from_data_config(data_cfg, data_dir) -> "PairFiles":
  """The builder for `data.name == "pair_files"` (used by `builders.get_builder`)."""
  return PairFiles(data_dir=data_dir, config=make_config(dict(data_cfg.files or {})))


class PairFiles(tfds.core.GeneratorBasedBuilder):
  """(anchor, positive) pairs from local files, one split per file."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        description="Text pairs read from: " + ", ".join(
            f"{split}={path}" for split, path in sorted(cfg.files.items())),
        features=features(), metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    by_split, skipped = {}, dict.fromkeys(SKIP_REASONS, 0)
    # Read eagerly: the skip counts must be in the metadata before TFDS writes it.
    for split, path in self.builder_config.files.items():
      by_split[split], counts = read_pairs(path)
      for reason, n in counts.items():
        skipped[reason] += n
      if not by_split[split]:
        raise UserError(f"{path}: no usable pair (empty split {split!r}; skipped {counts})")
      if any(counts.values()):
        logging.warning("pair_files: %s: skipped %s", path, counts)
    self.info.metadata["skipped"] = skipped
    return {split: self._generate_examples(items) for split, items in by_split.items()}

  def _generate_examples(self, items):
    for example in items:
      yield example["id"], example
