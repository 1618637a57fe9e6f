"""TFDS builder for token-labelled sentences in local files (`data.name = "token_files"`): NER
and any other IOB2 tagging.

JSON lines, one sentence each, words and their tags (field names `data.tokens_field`,
`data.tags_field`; HF's conll2003 calls them `tokens` / `ner_tags`):

  {"tokens": ["Ada", "Lovelace", "was", "born", "in", "London", "."],
   "tags": ["B-PER", "I-PER", "O", "O", "O", "B-LOC", "O"]}

or CoNLL files (`.conll`): one word per line, the word first and its tag last, whitespace
between, a blank line between sentences (`-DOCSTART-` lines are skipped). Tags must be valid
IOB2 (`ftjax.data.iob2`); a line whose tags are not, or whose words and tags differ in number,
is a `UserError` naming `file:line`. Stored features: `id` (file:line), `tokens_json`,
`tags_json` (JSON lists of strings).
"""

import json
import pathlib

import tensorflow_datasets as tfds

from ftjax.data import files_builder
from ftjax.data import files_reader
from ftjax.data import iob2
from ftjax.errors import UserError


def features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({"id": tfds.features.Text(),
                                     "tokens_json": tfds.features.Text(),
                                     "tags_json": tfds.features.Text()})


def _sentence(tokens, tags, where: str) -> dict:
  for name, value in (("tokens", tokens), ("tags", tags)):
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
      raise UserError(f"{where}: {name} must be a list of non-empty strings")
  if len(tokens) != len(tags):
    raise UserError(f"{where}: {len(tokens)} words but {len(tags)} tags")
  if not tokens:
    raise UserError(f"{where}: an empty sentence")
  try:
    iob2.check(tags, where)
  except ValueError as e:
    raise UserError(str(e)) from None
  return {"id": where.rsplit("/", 1)[-1], "tokens_json": json.dumps(tokens, ensure_ascii=False),
          "tags_json": json.dumps(tags)}


def _conll(path: pathlib.Path) -> list[dict]:
  out, words, tags, start = [], [], [], 1
  try:
    lines = path.read_text(encoding="utf-8").splitlines()
  except UnicodeDecodeError:
    raise UserError(f"{path}: not valid UTF-8") from None
  for line_no, line in enumerate(lines + [""], start=1):
    fields = line.split()
    if fields and fields[0] == "-DOCSTART-":
      continue
    if not fields:
      if words:
        out.append(_sentence(words, tags, f"{path}:{start}"))
      words, tags = [], []
      continue
    if len(fields) < 2:
      raise UserError(f"{path}:{line_no}: expected a word and its tag, got {line!r}")
    if not words:
      start = line_no
    words.append(fields[0])
    tags.append(fields[-1])
  return out


def read_sentences(path, tokens_field: str = "tokens", tags_field: str = "tags") -> list[dict]:
  """One file's sentences as encoded examples."""
  path = pathlib.Path(path).expanduser()
  if path.suffix.lower() == ".conll":
    if not path.is_file():
      raise UserError(f"data file not found: {path}")
    return _conll(path)
  path = files_reader.check_file(path)
  out = []
  for line_no, row in files_reader.read_rows(path):
    where = f"{path}:{line_no}"
    for field in (tokens_field, tags_field):
      if field not in row:
        raise UserError(f"{where}: missing field {field!r}")
    out.append(_sentence(row[tokens_field], row[tags_field], where))
  return out


def _check(split: str, p: str) -> pathlib.Path:
  path = pathlib.Path(p).expanduser()
  if path.suffix.lower() != ".conll":
    return files_reader.check_file(path, f"data file for split {split!r}")
  if not path.is_file():
    raise UserError(f"data file for split {split!r} not found: {path}")
  return path


def from_data_config(data_cfg, data_dir) -> "TokenFiles":
  """The builder for `data.name == "token_files"` (used by `builders.get_builder`)."""
  return TokenFiles(data_dir=data_dir, config=files_builder.make_config(
      dict(data_cfg.files or {}), example="ner.jsonl", check=_check,
      tokens_field=data_cfg.get("tokens_field", "tokens"),
      tags_field=data_cfg.get("tags_field", "tags")))


class TokenFiles(files_builder.FilesBuilder):
  """Tagged sentences from local JSONL or CoNLL files, one split per file."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  DESCRIPTION = "Tagged sentences"

  def features(self) -> tfds.features.FeaturesDict:
    return features()

  def read_split(self, split: str, path: str) -> list[dict]:
    del split
    options = self.builder_config.options
    return read_sentences(path, options["tokens_field"], options["tags_field"])
