"""TFDS builder for multiple-choice questions in local JSONL files (`data.name = "choice_files"`).

One question per line: a prompt, two or more choices and the right one (an index into
`choices`, or the right choice's text):

  {"question": "Where would you keep milk?", "choices": ["fridge", "oven", "drawer"], "label": 0}

A malformed line (no `question`, fewer than 2 choices, an empty or repeated choice, a label that
is not one of the choices) is a `UserError` naming `file:line`. Stored features: `id`
(file:line), `question`, `choices_json` (a JSON list of strings), `label` (the index).
"""

from collections.abc import Mapping
import dataclasses
import hashlib
import json

import numpy as np
import tensorflow_datasets as tfds

from ftjax import sources
from ftjax.data import files_reader
from ftjax.errors import UserError


def features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({"id": tfds.features.Text(), "question": tfds.features.Text(),
                                     "choices_json": tfds.features.Text(),
                                     "label": tfds.features.Scalar(dtype=np.int64)})


def read_questions(path) -> list[dict]:
  path = files_reader.check_file(path)
  out = []
  for line_no, row in files_reader.read_rows(path):
    where = f"{path}:{line_no}"
    question = files_reader.get_text(row, "question", where)
    choices = row.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(
        isinstance(c, str) and c.strip() for c in choices):
      raise UserError(f"{where}: field 'choices' must be a list of 2 or more non-empty strings")
    if len(set(choices)) != len(choices):
      raise UserError(f"{where}: field 'choices' repeats a choice")
    label = row.get("label")
    if isinstance(label, str):
      if label not in choices:
        raise UserError(f"{where}: label {label!r} is not one of the choices")
      label = choices.index(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
      raise UserError(f"{where}: label must be a choice's index in [0, {len(choices)}) or its "
                      f"text, got {row.get('label')!r}")
    out.append({"id": f"{path.name}:{line_no}", "question": question,
                "choices_json": json.dumps(choices, ensure_ascii=False), "label": label})
  if not out:
    raise UserError(f"{path}: no questions (empty split)")
  return out


@dataclasses.dataclass(eq=False)
class ChoiceFilesConfig(tfds.core.BuilderConfig):
  files: Mapping[str, str] = dataclasses.field(default_factory=dict)


def make_config(files: Mapping[str, str]) -> ChoiceFilesConfig:
  if not files:
    raise UserError("data.files is empty: give at least one split, e.g. {'train': 'mc.jsonl'}")
  paths = {s: files_reader.check_file(p, f"data file for split {s!r}").resolve()
           for s, p in files.items()}
  key = {"files": {s: [str(p), sources.file_sha256(p)] for s, p in sorted(paths.items())}}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  return ChoiceFilesConfig(name=f"h{digest}", description=json.dumps(key, sort_keys=True),
                           files={s: str(p) for s, p in paths.items()})


def from_data_config(data_cfg, data_dir) -> "ChoiceFiles":
  return ChoiceFiles(data_dir=data_dir, config=make_config(dict(data_cfg.files or {})))


class ChoiceFiles(tfds.core.GeneratorBasedBuilder):
  """Multiple-choice questions from local JSONL files, one split per file."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        description="Multiple-choice questions read from: " + ", ".join(
            f"{s}={p}" for s, p in sorted(cfg.files.items())),
        features=features(), metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    return {s: self._generate_examples(read_questions(p))
            for s, p in self.builder_config.files.items()}

  def _generate_examples(self, rows):
    for example in rows:
      yield example["id"], example
