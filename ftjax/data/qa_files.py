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

from collections.abc import Mapping
import dataclasses
import hashlib
import json

import tensorflow_datasets as tfds

from ftjax import sources
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
  if not out:
    raise UserError(f"{path}: no questions (empty split)")
  return out


@dataclasses.dataclass(eq=False)
class QAFilesConfig(tfds.core.BuilderConfig):
  files: Mapping[str, str] = dataclasses.field(default_factory=dict)


def make_config(files: Mapping[str, str]) -> QAFilesConfig:
  if not files:
    raise UserError("data.files is empty: give at least one split, e.g. {'train': 'qa.jsonl'}")
  paths = {s: files_reader.check_file(p, f"data file for split {s!r}").resolve()
           for s, p in files.items()}
  key = {"files": {s: [str(p), sources.file_sha256(p)] for s, p in sorted(paths.items())}}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  return QAFilesConfig(name=f"h{digest}", description=json.dumps(key, sort_keys=True),
                       files={s: str(p) for s, p in paths.items()})


def from_data_config(data_cfg, data_dir) -> "QAFiles":
  return QAFiles(data_dir=data_dir, config=make_config(dict(data_cfg.files or {})))


class QAFiles(tfds.core.GeneratorBasedBuilder):
  """Extractive QA examples from local JSONL files, one split per file."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        description="QA examples read from: " + ", ".join(
            f"{s}={p}" for s, p in sorted(cfg.files.items())),
        features=features(), metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    return {s: self._generate_examples(read_questions(p))
            for s, p in self.builder_config.files.items()}

  def _generate_examples(self, rows):
    for example in rows:
      yield example["id"], example
