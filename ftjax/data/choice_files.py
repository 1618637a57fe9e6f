"""TFDS builder for multiple-choice questions in local JSONL files (`data.name = "choice_files"`).

One question per line: a prompt, two or more choices and the right one (an index into
`choices`, or the right choice's text):

  {"question": "Where would you keep milk?", "choices": ["fridge", "oven", "drawer"], "label": 0}

A malformed line (no `question`, fewer than 2 choices, an empty or repeated choice, a label that
is not one of the choices) is a `UserError` naming `file:line`. Stored features: `id`
(file:line), `question`, `choices_json` (a JSON list of strings), `label` (the index).
"""

import json

import numpy as np
import tensorflow_datasets as tfds

from ftjax.data import files_builder
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
  return out


def from_data_config(data_cfg, data_dir) -> "ChoiceFiles":
  """The builder for `data.name == "choice_files"` (used by `builders.get_builder`)."""
  return ChoiceFiles(data_dir=data_dir, config=files_builder.make_config(
      dict(data_cfg.files or {}), example="mc.jsonl"))


class ChoiceFiles(files_builder.FilesBuilder):
  """Multiple-choice questions from local JSONL files, one split per file."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  DESCRIPTION = "Multiple-choice questions"

  def features(self) -> tfds.features.FeaturesDict:
    return features()

  def read_split(self, split: str, path: str) -> list[dict]:
    del split
    return read_questions(path)
