"""TFDS builder for multi-label and regression targets in local files (`data.name =
"target_files"`): the objectives `multi_label` and `regression` on a sequence classifier.

JSON lines (or CSV / TSV) with the text (`data.text_field`, and `data.text_pair_field` for
pairs) and the target (`data.label_field`):

  {"text": "Battery died, screen cracked.", "label": ["battery", "screen"]}    multi-label
  {"text": "A fine, warm film.", "label": 4.5}                                  regression

A multi-label target is a list of label names (empty: none applies; in CSV, names joined by
`|`); a regression target is a finite number. Which kind a dataset holds is read from its
first row; a later row of the other kind, or a target that is neither, is a `UserError` naming
`file:line`. Stored features: `id` (file:line), `text`, `text_pair`, `labels_json` (a
JSON list of names) and `target` (float32; NaN for multi-label rows).
"""

import json
import math

import numpy as np
import tensorflow_datasets as tfds

from ftjax.data import files_builder
from ftjax.data import files_reader
from ftjax.errors import UserError

KINDS = ("multi_label", "regression")


def features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(), "text": tfds.features.Text(), "text_pair": tfds.features.Text(),
      "labels_json": tfds.features.Text(), "target": tfds.features.Scalar(dtype=np.float32)})


def kind_of(value) -> str:
  """`regression` for a number (or a CSV cell that parses as one), else `multi_label`."""
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return "regression"
  if isinstance(value, str):
    try:
      float(value)
      return "regression"
    except ValueError:
      pass
  return "multi_label"


def _target(value, kind: str, field: str, where: str):
  if kind_of(value) != kind:
    raise UserError(f"{where}: field {field!r} is {value!r}, but the data's first row holds a "
                    f"{kind.replace('_', '-')} target")
  if kind == "multi_label":
    if isinstance(value, str):  # CSV / TSV: names joined by |
      value = [v.strip() for v in value.split("|") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
      raise UserError(f"{where}: field {field!r} must be a list of label names, got {value!r}")
    if len(set(value)) != len(value):
      raise UserError(f"{where}: field {field!r} repeats a label: {value!r}")
    return sorted(value), math.nan
  try:
    number = float(value) if not isinstance(value, (bool, list, dict)) and value is not None \
        else math.nan
  except ValueError:
    number = math.nan
  if not math.isfinite(number):
    raise UserError(f"{where}: field {field!r} must be a finite number, got {value!r}")
  return [], number


def read_rows(path, *, text_field: str, text_pair_field: str, label_field: str,
              kind: str | None = None) -> tuple[list[dict], str]:
  """A file's examples and the kind of target they hold (`kind`: what they must hold)."""
  path = files_reader.check_file(path)
  out = []
  for line_no, row in files_reader.read_rows(path):
    where = f"{path}:{line_no}"
    if label_field not in row:
      raise UserError(f"{where}: missing field {label_field!r}")
    kind = kind or kind_of(row[label_field])
    labels, target = _target(row[label_field], kind, label_field, where)
    out.append({"id": f"{path.name}:{line_no}",
                "text": files_reader.get_text(row, text_field, where),
                "text_pair": (files_reader.get_text(row, text_pair_field, where)
                              if text_pair_field else ""),
                "labels_json": json.dumps(labels, ensure_ascii=False), "target": target})
  return out, kind or "multi_label"


def from_data_config(data_cfg, data_dir) -> "TargetFiles":
  """The builder for `data.name == "target_files"` (used by `builders.get_builder`)."""
  return TargetFiles(data_dir=data_dir, config=files_builder.make_config(
      dict(data_cfg.files or {}), example="train.jsonl", text_field=data_cfg.text_field,
      text_pair_field=data_cfg.text_pair_field or "", label_field=data_cfg.label_field))


class TargetFiles(files_builder.FilesBuilder):
  """Multi-label or regression examples from local files, one split per file."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  DESCRIPTION = "Multi-label or regression examples"

  def features(self) -> tfds.features.FeaturesDict:
    return features()

  def read_split(self, split: str, path: str) -> list[dict]:
    del split
    rows, self._kind = read_rows(path, kind=getattr(self, "_kind", None),
                                 **self.builder_config.options)
    return rows

  def after_read(self, by_split) -> None:
    del by_split
    self.info.metadata["kind"] = self._kind  # multi_label or regression
