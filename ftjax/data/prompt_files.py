"""TFDS builder for RL prompts in local JSONL files (`data.name = "prompt_files"`, objective `grpo`).

Each line is one prompt the policy answers, with what its reward functions check it against:

  {"prompt": "What is 17 + 25?", "answer": "42"}
  {"messages": [{"role": "system", ...}, {"role": "user", ...}], "answer": 3.5}
  {"prompt": "def add(a, b):", "test": "assert add(1, 2) == 3", "entry_point": "add"}

`prompt` (a string: one user turn, or TRL's conversational list) or `messages` (the
conversation before the reply); `answer` (optional: a string or a number) is what
`exact_answer` compares with; every other field is kept as `extra` (a JSON object) for reward
functions that need more (`unit_tests` reads `test` and `entry_point`). A malformed line is a
`UserError` naming `file:line`.

Stored features: `id` (file:line), `prompt_json`, `answer`, `extra_json`. The config name
hashes the files' paths and contents, as in `preference_files`.
"""

from collections.abc import Mapping
import dataclasses
import hashlib
import json

import tensorflow_datasets as tfds

from ftjax import sources
from ftjax.data import files_reader
from ftjax.data import preference_files
from ftjax.errors import UserError

_PROMPT_FIELDS = ("prompt", "messages", "answer")


def features() -> tfds.features.FeaturesDict:
  """The example features every prompt builder writes."""
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(),
      "prompt_json": tfds.features.Text(),  # JSON list of {"role", "content"}, ends with a user turn
      "answer": tfds.features.Text(),  # "" = none
      "extra_json": tfds.features.Text(),  # JSON object of the row's other fields
  })


def encode_example(example_id: str, prompt: list[dict], answer: str = "",
                   extra: dict | None = None) -> dict:
  return {"id": example_id, "prompt_json": json.dumps(prompt, ensure_ascii=False),
          "answer": answer, "extra_json": json.dumps(extra or {}, ensure_ascii=False)}


def _answer(row: dict, where: str) -> str:
  value = row.get("answer")
  if value is None:
    return ""
  if isinstance(value, bool) or not isinstance(value, (str, int, float)):
    raise UserError(f"{where}: field 'answer' must be a string or a number, got "
                    f"{type(value).__name__}")
  return str(value)


def read_prompts(path) -> list[tuple[str, list[dict], str, dict]]:
  """One JSONL file's prompts as `[(id, prompt messages, answer, extra fields)]`."""
  path = files_reader.check_file(path)
  out = []
  for line_no, row in files_reader.read_rows(path):
    where = f"{path}:{line_no}"
    extra = {k: v for k, v in row.items() if k not in _PROMPT_FIELDS}
    out.append((f"{path.name}:{line_no}", preference_files.prompt_messages(row, where),
                _answer(row, where), extra))
  return out


@dataclasses.dataclass(eq=False)
class PromptFilesConfig(tfds.core.BuilderConfig):
  """Per-split JSONL files of prompts; build with `make_config`."""

  files: Mapping[str, str] = dataclasses.field(default_factory=dict)


def make_config(files: Mapping[str, str]) -> PromptFilesConfig:
  """Checks the files (split name -> .jsonl path); the config name changes with their content."""
  if not files:
    raise UserError("data.files is empty: give at least one split, e.g. {'train': 'prompts.jsonl'}")
  paths = {}
  for split, p in files.items():
    path = files_reader.check_file(p, f"data file for split {split!r}").resolve()
    if path.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
      raise UserError(f"{path}: prompt data must be JSONL (one {{\"prompt\", \"answer\"}} object "
                      "per line)")
    paths[split] = path
  key = {"files": {split: [str(p), sources.file_sha256(p)] for split, p in sorted(paths.items())}}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  return PromptFilesConfig(name=f"h{digest}", description=json.dumps(key, sort_keys=True),
                           files={split: str(p) for split, p in paths.items()})


def from_data_config(data_cfg, data_dir) -> "PromptFiles":
  """The builder for `data.name == "prompt_files"` (used by `builders.get_builder`)."""
  return PromptFiles(data_dir=data_dir, config=make_config(dict(data_cfg.files or {})))


class PromptFiles(tfds.core.GeneratorBasedBuilder):
  """Prompts (with answers or tests) from local JSONL files, one split per file."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        description="Prompts read from: " + ", ".join(
            f"{split}={path}" for split, path in sorted(cfg.files.items())),
        features=features(), metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    by_split = {}
    for split, path in self.builder_config.files.items():  # read eagerly: errors before writing
      by_split[split] = read_prompts(path)
      if not by_split[split]:
        raise UserError(f"{path}: no prompt (empty split {split!r})")
    return {split: self._generate_examples(items) for split, items in by_split.items()}

  def _generate_examples(self, items):
    for example_id, prompt, answer, extra in items:
      yield example_id, encode_example(example_id, prompt, answer, extra)
