"""TFDS builder for user classification data in local JSONL / CSV / TSV files.

Use `make_config(...)` to build the config: its name hashes the file paths, their contents
and the field options, so editing a file (or a field option) prepares a fresh dataset
instead of serving stale data. TFDS writes into an `incomplete.*` folder and renames it only
after every split succeeded, so a failed build is never served and the next call rebuilds.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import hashlib
import json

import tensorflow_datasets as tfds

from ftjax.data import files_reader
from ftjax import sources
from ftjax.errors import UserError


@dataclasses.dataclass(eq=False)
class FilesConfig(tfds.core.BuilderConfig):
  """Per-split files and the fields to read; build with `make_config`."""

  files: Mapping[str, str] = dataclasses.field(default_factory=dict)
  text_field: str = "text"
  text_pair_field: str = ""
  label_field: str = "label"
  label_names: Sequence[str] = ()


def make_config(
    files: Mapping[str, str],
    *,
    text_field: str,
    label_field: str,
    text_pair_field: str = "",
    label_names: Sequence[str] = (),
    train_split: str = "train",
) -> FilesConfig:
  """Checks the files and returns a config whose name changes with their content.

  Args:
    files: split name -> file path (.jsonl, .csv or .tsv).
    text_field: field holding the text.
    label_field: field holding the label (a class name or an integer index).
    text_pair_field: optional second text field for sentence pairs ('' for none).
    label_names: class names; if empty, read from the files (`collect_label_names`): integer
      labels are class indices 0..max over every split, string labels the sorted distinct labels
      of the training file (another split's unseen label is an error naming file and line).
    train_split: split whose file provides the label names when none are given.
  """
  if not files:
    raise UserError("data.files is empty: give at least one split, e.g. {'train': 'a.jsonl'}")
  paths = {split: files_reader.check_file(p, f"data file for split {split!r}").resolve()
           for split, p in files.items()}
  if not label_names:
    source_split = train_split if train_split in paths else sorted(paths)[0]
    label_names = files_reader.collect_label_names(
        paths[source_split], label_field,
        [p for split, p in sorted(paths.items()) if split != source_split])
  label_names = [str(name) for name in label_names]
  if len(set(label_names)) != len(label_names):
    raise UserError(f"data.label_names has duplicates: {label_names}")
  key = {
      "files": {split: [str(p), sources.file_sha256(p)] for split, p in sorted(paths.items())},
      "text_field": text_field,
      "text_pair_field": text_pair_field,
      "label_field": label_field,
      "label_names": label_names,
  }
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  return FilesConfig(
      name=f"h{digest}",
      description=json.dumps(key, sort_keys=True),
      files={split: str(p) for split, p in paths.items()},
      text_field=text_field,
      text_pair_field=text_pair_field,
      label_field=label_field,
      label_names=tuple(label_names),
  )


class ClassificationFiles(tfds.core.GeneratorBasedBuilder):
  """Text (or text-pair) classification examples from local files."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    features = {
        "text": tfds.features.Text(),
        "label": tfds.features.ClassLabel(names=list(cfg.label_names)),
    }
    if cfg.text_pair_field:
      features["text_pair"] = tfds.features.Text()
    return self.dataset_info_from_configs(
        description="Classification examples read from: " + ", ".join(
            f"{split}={path}" for split, path in sorted(cfg.files.items())),
        features=tfds.features.FeaturesDict(features),
        supervised_keys=("text", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    return {split: self._generate_examples(path)
            for split, path in self.builder_config.files.items()}

  def _generate_examples(self, path):
    cfg = self.builder_config
    path = files_reader.check_file(path)
    count = 0
    for line_no, row in files_reader.read_rows(path):
      where = f"{path}:{line_no}"
      example = {"text": files_reader.get_text(row, cfg.text_field, where)}
      if cfg.text_pair_field:
        example["text_pair"] = files_reader.get_text(row, cfg.text_pair_field, where)
      raw = files_reader.get_raw_label(row, cfg.label_field, where)
      example["label"] = files_reader.label_index(raw, cfg.label_names, where)
      count += 1
      yield line_no, example
    if not count:
      raise UserError(f"{path}: no examples (empty split)")
