"""What the local-file TFDS builders share: a config named by a hash of its files' paths and
contents (editing a file prepares a fresh dataset), and a builder that reads each split's file
into examples keyed by their `id`.

A format is `make_config`'s call plus a `FilesBuilder` subclass with `VERSION`, `DESCRIPTION`,
`features()` and `read_split(split, path)` (and optionally `after_read(by_split)`, e.g. to record
skip counts in the metadata before TFDS writes it).
"""

import abc
from collections.abc import Callable, Mapping
import dataclasses
import hashlib
import json
import pathlib

import tensorflow_datasets as tfds

from ftjax import sources
from ftjax.data import files_reader
from ftjax.errors import UserError


@dataclasses.dataclass(eq=False)
class FilesConfig(tfds.core.BuilderConfig):
  """Per-split files (split -> path) and a format's own options."""

  files: Mapping[str, str] = dataclasses.field(default_factory=dict)
  options: Mapping[str, str] = dataclasses.field(default_factory=dict)


def make_config(files: Mapping[str, str], *, example: str,
                check: Callable[[str, str], pathlib.Path] | None = None,
                **options) -> FilesConfig:
  """Checks the files and returns their config; `example` names a typical file in the error for
  none; `check(split, path)` validates one (default: an existing .jsonl, .csv or .tsv file)."""
  if not files:
    raise UserError(f"data.files is empty: give at least one split, e.g. {{'train': {example!r}}}")
  check = check or (lambda split, p: files_reader.check_file(p, f"data file for split {split!r}"))
  paths = {split: check(split, p).resolve() for split, p in files.items()}
  key = {"files": {s: [str(p), sources.file_sha256(p)] for s, p in sorted(paths.items())},
         **({"options": dict(options)} if options else {})}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  return FilesConfig(name=f"h{digest}", description=json.dumps(key, sort_keys=True),
                     files={s: str(p) for s, p in paths.items()}, options=dict(options))


class FilesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Examples read from local files, one split per file (see the module doc)."""

  DESCRIPTION = "Examples"

  @abc.abstractmethod
  def features(self) -> tfds.features.FeaturesDict:
    ...

  @abc.abstractmethod
  def read_split(self, split: str, path: str) -> list[dict]:
    """The split's examples, each a dict of the features with a unique `id`."""

  def after_read(self, by_split: dict[str, list[dict]]) -> None:
    del by_split

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        description=f"{self.DESCRIPTION} read from: " + ", ".join(
            f"{s}={p}" for s, p in sorted(cfg.files.items())),
        features=self.features(), metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    # Read eagerly: a bad file fails before anything is written, and `after_read` can put counts
    # into the metadata before TFDS writes it.
    by_split = {s: self.read_split(s, p) for s, p in self.builder_config.files.items()}
    for split, rows in by_split.items():
      if not rows:
        raise UserError(f"{self.builder_config.files[split]}: no examples (empty split {split!r})")
    self.after_read(by_split)
    return {s: self._generate_examples(rows) for s, rows in by_split.items()}

  def _generate_examples(self, rows):
    for example in rows:
      yield example["id"], example
