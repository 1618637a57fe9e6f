"""TFDS builder for preference pairs in local JSONL files (`data.name = "preference_files"`).

Each line is one pair: a prompt, a preferred reply and a dispreferred one, in TRL's field names:

  {"prompt": "How do I ...?", "chosen": "You ...", "rejected": "No."}
  {"messages": [{"role": "system", ...}, {"role": "user", ...}], "chosen": ..., "rejected": ...}

`prompt` (a string: one user turn) or `messages` (the conversation before the reply, a list of
`{"role", "content"}`); `chosen` and `rejected` are strings or TRL's conversational form, a
one-message list `[{"role": "assistant", "content": ...}]`. A malformed line is a `UserError`
naming `file:line`. A pair with an empty reply, or with chosen and rejected equal (after text
normalisation), teaches nothing: it is skipped, counted per reason in the dataset metadata
(`skipped`), logged and shown in the data report.

Stored features: `id` (file:line), `prompt_json` (the prompt messages as JSON), `chosen`,
`rejected`, `category` (a row's optional `category` field, for per-category metrics). The config name hashes the files' paths and contents, as in `chat_files`.
"""

from collections.abc import Mapping
import dataclasses
import hashlib
import json

from absl import logging
import tensorflow_datasets as tfds

from ftjax import sources
from ftjax.data import chat_files
from ftjax.data import files_reader
from ftjax.data import text_norm
from ftjax.errors import UserError

SKIP_REASONS = ("empty_reply", "identical_replies")


def features() -> tfds.features.FeaturesDict:
  """The example features every preference builder writes."""
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(),
      "prompt_json": tfds.features.Text(),  # JSON list of {"role", "content"}, ends with a user turn
      "chosen": tfds.features.Text(),
      "rejected": tfds.features.Text(),
      "category": tfds.features.Text(),  # a group for per-category metrics ("" = none)
  })


def encode_example(example_id: str, prompt: list[dict], chosen: str, rejected: str, *,
                   category: str = "") -> dict:
  return {"id": example_id, "prompt_json": json.dumps(prompt, ensure_ascii=False),
          "chosen": chosen, "rejected": rejected, "category": category}


def _reply(row: dict, field: str, where: str) -> str:
  """A reply field: a string, or `[{"role": "assistant", "content": str}]`."""
  if field not in row or row[field] is None:
    raise UserError(f"{where}: missing field {field!r}")
  value = row[field]
  if isinstance(value, list):
    messages = chat_files.check_messages(value, f"{where}: field {field!r}")
    if len(messages) != 1 or messages[0]["role"] != "assistant":
      raise UserError(f"{where}: field {field!r} must be a string or one assistant message, got "
                      f"{len(messages)} message(s) with roles {[m['role'] for m in messages]}")
    return messages[0]["content"]
  if not isinstance(value, str):
    raise UserError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
  return value


def prompt_messages(row: dict, where: str) -> list[dict]:
  """A row's prompt: `messages` (the conversation before the reply) or `prompt` (one user turn,
  or TRL's conversational list)."""
  if "messages" in row:
    messages = chat_files.check_messages(row["messages"], f"{where}: field 'messages'")
    if messages[-1]["role"] == "assistant":
      raise UserError(f"{where}: field 'messages' is the conversation before the reply and must "
                      "not end with an assistant turn")
    return messages
  if "prompt" in row:
    prompt = row["prompt"]
    if isinstance(prompt, list):  # TRL's conversational prompt
      return prompt_messages({"messages": prompt}, where)
    if not isinstance(prompt, str) or not prompt.strip():
      raise UserError(f"{where}: field 'prompt' must be a non-empty string")
    return [{"role": "user", "content": prompt}]
  raise UserError(f"{where}: missing field 'prompt' (or 'messages')")


def skip_reason(chosen: str, rejected: str) -> str | None:
  """Why a pair is left out (one of SKIP_REASONS), or None to keep it."""
  if not chosen.strip() or not rejected.strip():
    return "empty_reply"
  if text_norm.normalize(chosen) == text_norm.normalize(rejected):
    return "identical_replies"
  return None


def read_pairs(path) -> tuple[list[tuple[str, list[dict], str, str, str]], dict[str, int]]:
  """Reads one JSONL file: `([(id, prompt, chosen, rejected, category)], skipped counts by
  reason)`."""
  path = files_reader.check_file(path)
  kept, skipped = [], dict.fromkeys(SKIP_REASONS, 0)
  for line_no, row in files_reader.read_rows(path):
    where = f"{path}:{line_no}"
    prompt = prompt_messages(row, where)
    chosen, rejected = _reply(row, "chosen", where), _reply(row, "rejected", where)
    category = row.get("category", "")
    if not isinstance(category, str):
      raise UserError(f"{where}: field 'category' must be a string, got {type(category).__name__}")
    reason = skip_reason(chosen, rejected)
    if reason:
      skipped[reason] += 1
    else:
      kept.append((f"{path.name}:{line_no}", prompt, chosen, rejected, category))
  return kept, skipped


@dataclasses.dataclass(eq=False)
class PreferenceFilesConfig(tfds.core.BuilderConfig):
  """Per-split JSONL files of pairs; build with `make_config`."""

  files: Mapping[str, str] = dataclasses.field(default_factory=dict)


def make_config(files: Mapping[str, str]) -> PreferenceFilesConfig:
  """Checks the files (split name -> .jsonl path); the config name changes with their content."""
  if not files:
    raise UserError("data.files is empty: give at least one split, e.g. {'train': 'pairs.jsonl'}")
  paths = {}
  for split, p in files.items():
    path = files_reader.check_file(p, f"data file for split {split!r}").resolve()
    if path.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
      raise UserError(f"{path}: preference data must be JSONL (one {{\"prompt\", \"chosen\", "
                      "\"rejected\"} object per line)")
    paths[split] = path
  key = {"files": {split: [str(p), sources.file_sha256(p)] for split, p in sorted(paths.items())}}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  return PreferenceFilesConfig(name=f"h{digest}", description=json.dumps(key, sort_keys=True),
                               files={split: str(p) for split, p in paths.items()})


def from_data_config(data_cfg, data_dir) -> "PreferenceFiles":
  """The builder for `data.name == "preference_files"` (used by `builders.get_builder`)."""
  return PreferenceFiles(data_dir=data_dir, config=make_config(dict(data_cfg.files or {})))


class PreferenceFiles(tfds.core.GeneratorBasedBuilder):
  """Preference pairs from local JSONL files, one split per file."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        description="Preference pairs read from: " + ", ".join(
            f"{split}={path}" for split, path in sorted(cfg.files.items())),
        features=features(),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    by_split, skipped = {}, dict.fromkeys(SKIP_REASONS, 0)
    # Read eagerly: the skip counts must be in the metadata before TFDS writes it.
    for split, path in self.builder_config.files.items():
      by_split[split], counts = read_pairs(path)
      for reason, n in counts.items():
        skipped[reason] += n
      if not by_split[split]:
        raise UserError(f"{path}: no usable preference pair (empty split {split!r}; skipped "
                        f"{counts})")
      if any(counts.values()):
        logging.warning("preference_files: %s: skipped %s", path, counts)
    self.info.metadata["skipped"] = skipped
    return {split: self._generate_examples(items) for split, items in by_split.items()}

  def _generate_examples(self, items):
    for example_id, prompt, chosen, rejected, category in items:
      yield example_id, encode_example(example_id, prompt, chosen, rejected, category=category)
