"""Reads labelled rows from local JSONL / CSV / TSV files, naming file:line on any bad row.

JSON lines may be gzipped (`.jsonl.gz`, as HumanEval ships).
"""

import csv
from collections.abc import Iterator, Sequence
import gzip
import io
import json
import os
import pathlib

from ftjax.errors import UserError

_JSONL = (".jsonl", ".json", ".ndjson")
_DELIMITED = {".csv": ",", ".tsv": "\t"}


def _suffix(path: pathlib.Path) -> str:
  """The format's suffix: `.jsonl` for `x.jsonl` and `x.jsonl.gz` alike."""
  suffixes = [x.lower() for x in path.suffixes]
  if suffixes[-1:] == [".gz"] and suffixes[-2:-1] and suffixes[-2] in _JSONL:
    return suffixes[-2]
  return path.suffix.lower()


def check_file(path: str | os.PathLike, what: str = "data file") -> pathlib.Path:
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise UserError(f"{what} not found: {path}")
  suffix = _suffix(path)
  if suffix not in _JSONL and suffix not in _DELIMITED:
    raise UserError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .csv or .tsv)")
  return path


def _jsonl_rows(path: pathlib.Path) -> Iterator[tuple[int, dict]]:
  with (gzip.open if path.suffix.lower() == ".gz" else open)(path, "rb") as f:
    for line_no, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError:
        raise UserError(f"{path}:{line_no}: not valid UTF-8") from None
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f"{path}:{line_no}: bad JSON ({e.msg})") from None
      if not isinstance(row, dict):
        raise UserError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
      yield line_no, row


def _delimited_rows(path: pathlib.Path, delimiter: str) -> Iterator[tuple[int, dict]]:
  data = path.read_bytes()
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line_no = data[:e.start].count(b"\n") + 1
    raise UserError(f"{path}:{line_no}: not valid UTF-8") from None
  reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
  try:
    header = next(reader, None)
    if header is None:
      return
    start = reader.line_num + 1  # First physical line of the next record.
    for values in reader:
      line_no, start = start, reader.line_num + 1
      if not any(v.strip() for v in values):
        continue
      if len(values) > len(header):
        raise UserError(f"{path}:{line_no}: {len(values)} fields but the header has "
                        f"{len(header)}")
      yield line_no, dict(zip(header, values))
  except csv.Error as e:
    raise UserError(f"{path}:{reader.line_num}: bad CSV ({e})") from None


def read_rows(path: pathlib.Path) -> Iterator[tuple[int, dict]]:
  """Yields `(line_number, row)` for each non-blank row; line numbers are 1-based."""
  suffix = _suffix(path)
  if suffix in _JSONL:
    return _jsonl_rows(path)
  return _delimited_rows(path, _DELIMITED[suffix])


def get_text(row: dict, field: str, where: str) -> str:
  if field not in row or row[field] is None:
    raise UserError(f"{where}: missing field {field!r}")
  value = row[field]
  if not isinstance(value, str):
    raise UserError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
  if not value.strip():
    raise UserError(f"{where}: empty text in field {field!r}")
  return value


def get_raw_label(row: dict, field: str, where: str) -> str:
  """Returns the label as a string key (integer labels become their decimal string)."""
  if field not in row or row[field] is None:
    raise UserError(f"{where}: missing field {field!r}")
  value = row[field]
  if isinstance(value, bool) or not isinstance(value, (str, int)):
    raise UserError(f"{where}: label field {field!r} must be a string or an integer, "
                    f"got {value!r}")
  value = str(value).strip()
  if not value:
    raise UserError(f"{where}: empty label in field {field!r}")
  return value


def _labels(path: pathlib.Path, label_field: str) -> set[str]:
  return {get_raw_label(row, label_field, f"{path}:{n}") for n, row in read_rows(path)}


def collect_label_names(path: pathlib.Path, label_field: str,
                        other_paths: Sequence[pathlib.Path] = ()) -> list[str]:
  """Class names read from the training file `path` when none are given.

  Integer labels (every label of `path` an integer) are class indices: the names are "0" .. "max"
  with max over `path` and `other_paths`, so a class seen only in validation keeps its own index.
  Otherwise the names are the sorted distinct labels of `path`; a label of another split that is
  not among them is an error naming its file and line when that split is read.
  """
  labels = _labels(path, label_field)
  if not labels:
    raise UserError(f"{path}: no examples")
  if not all(_is_int(label) for label in labels):
    return sorted(labels)
  for other in other_paths:
    labels |= {label for label in _labels(other, label_field) if _is_int(label)}
  indices = sorted(int(label) for label in labels)
  if indices[0] < 0:
    raise UserError(f"integer label {indices[0]} in {path} or another split is negative; integer "
                    "labels are class indices 0..N-1 (or give data.label_names)")
  return [str(i) for i in range(indices[-1] + 1)]


def label_index(raw: str, label_names: Sequence[str], where: str) -> int:
  """Maps a raw label to its class index: by name, else as an integer index."""
  if raw in label_names:
    return list(label_names).index(raw)
  if _is_int(raw) and 0 <= int(raw) < len(label_names):
    return int(raw)
  raise UserError(f"{where}: label {raw!r} is not one of the classes {list(label_names)}")


def _is_int(value: str) -> bool:
  try:
    int(value)
  except ValueError:
    return False
  return True
