"""TFDS builder for extractive question answering in local JSONL files (`data.name = "qa_files"`).

One question per line, in SQuAD's (and HF `datasets`' squad) layout:

  {"id": "q1", "question": "Who wrote it?", "context": "It was written by Ada in 1843.",
   "answers": {"text": ["Ada"], "answer_start": [18]}}

`answers` may hold several reference answers (all are scored against; the first is trained on)
or none (SQuAD 2.0's unanswerable questions: the model learns to point at the first token).
Every answer must be its context's text at `answer_start`: one that is not is a `UserError`
naming the example and `file:line`. Stored features: `id`, `question`, `context`, `answers_json`
(a JSON list of `[text, answer_start]`).
"""

import json

import tensorflow_datasets as tfds

from ftjax.data import files_builder
from ftjax.data import files_reader
from ftjax.errors import UserError


def features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({"id": tfds.features.Text(), "question": tfds.features.Text(),
                                     "context": tfds.features.Text(),
                                     "answers_json": tfds.features.Text()})


def _answers(row: dict, context: str, name: str, where: str) -> list[list]:
  answers = row.get("answers", {"text": [], "answer_start": []})
  if not isinstance(answers, dict) or not isinstance(answers.get("text"), list) or not isinstance(
      answers.get("answer_start"), list) or len(answers["text"]) != len(answers["answer_start"]):
    raise UserError(f"{where} (example {name!r}): 'answers' must be {{'text': [...], "
                    "'answer_start': [...]}} of equal length")
  out = []
  for text, start in zip(answers["text"], answers["answer_start"]):
    if not isinstance(text, str) or not text or isinstance(start, bool) or not isinstance(
        start, int):
      raise UserError(f"{where} (example {name!r}): an answer needs a non-empty text and an "
                      f"integer answer_start, got {text!r} at {start!r}")
    if context[start:start + len(text)] != text:
      raise UserError(f"{where} (example {name!r}): answer {text!r} is not in its context at "
                      f"answer_start {start} (the context there reads "
                      f"{context[start:start + len(text)]!r})")
    out.append([text, start])
  return out


def read_questions(path) -> list[dict]:
  path = files_reader.check_file(path)
  out, seen = [], set()
  for line_no, row in files_reader.read_rows(path):
    where = f"{path}:{line_no}"
    name = str(row.get("id", f"{path.name}:{line_no}"))
    if name in seen:
      raise UserError(f"{where}: example id {name!r} repeats")
    seen.add(name)
    question = files_reader.get_text(row, "question", where)
    context = files_reader.get_text(row, "context", where)
    out.append({"id": name, "question": question, "context": context,
                "answers_json": json.dumps(_answers(row, context, name, where),
                                           ensure_ascii=False)})
  return out


def from_data_config(data_cfg, data_dir) -> "QAFiles":
  """The builder for `data.name == "qa_files"` (used by `builders.get_builder`)."""
  return QAFiles(data_dir=data_dir, config=files_builder.make_config(
      dict(data_cfg.files or {}), example="qa.jsonl"))


class QAFiles(files_builder.FilesBuilder):
  """Extractive QA examples from local JSONL files, one split per file."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  DESCRIPTION = "QA examples"

  def features(self) -> tfds.features.FeaturesDict:
    return features()

  def read_split(self, split: str, path: str) -> list[dict]:
    del split
    return read_questions(path)
