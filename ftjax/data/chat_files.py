"""TFDS builder for chat conversations in local JSONL files, plus helpers shared by chat builders.

Each line is one conversation: `{"messages": [{"role": "system"|"user"|"assistant",
"content": str}, ...]}` (the field name is `data.messages_field`). A malformed line is a
`UserError` naming `file:line`. A conversation without an assistant turn has nothing to train
on: it is skipped, counted per split in the dataset metadata (`skipped`) and logged.

Messages are stored as one JSON text feature (`messages_json`) rather than a nested TFDS
`Sequence`: it round-trips every message field exactly and decodes with the plain-numpy
`tfds.data_source` reader (no TensorFlow).

Use `make_config(...)`: its name hashes the file paths, their contents and the options, so an
edited file prepares a fresh dataset instead of serving stale data.
"""

from collections.abc import Mapping
import dataclasses
import hashlib
import json

from absl import logging
import tensorflow_datasets as tfds

from ftjax.data import files_reader
from ftjax.data import text_norm
from ftjax import sources
from ftjax.errors import UserError

ROLES = ("system", "user", "assistant")
# Per-10k buckets of a conversation's split key; see `is_eval`.
_BUCKETS = 10_000


def features() -> tfds.features.FeaturesDict:
  """The example features every chat builder writes."""
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(),  # where the conversation came from (file:line, cat:index)
      "messages_json": tfds.features.Text(),  # JSON list of {"role", "content"}
  })


def check_messages(messages, where: str) -> list[dict]:
  """Validates one conversation and returns it as plain `{"role", "content"}` dicts."""
  if not isinstance(messages, list) or not messages:
    raise UserError(f"{where}: messages must be a non-empty list, got {messages!r:.80}")
  out = []
  for i, message in enumerate(messages):
    if not isinstance(message, dict):
      raise UserError(f"{where}: message {i} must be an object, got {type(message).__name__}")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
      raise UserError(f"{where}: message {i} has role {role!r}; expected one of {list(ROLES)}")
    if not isinstance(content, str):
      raise UserError(f"{where}: message {i} content must be a string, got "
                      f"{type(content).__name__}")
    out.append({"role": role, "content": content})
  return out


def has_assistant(messages: list[dict]) -> bool:
  return any(m["role"] == "assistant" for m in messages)


def conversation_key(messages: list[dict]) -> str:
  """Normalised text of a whole conversation: equal keys count as duplicates."""
  return "\x1f".join(f"{m['role']}\x1e{text_norm.normalize(m['content'])}" for m in messages)


def is_eval(split_key: str, eval_fraction: float) -> bool:
  """Stable assignment to the eval split: SHA-256 of the key, `eval_fraction` of buckets."""
  bucket = int(hashlib.sha256(split_key.encode("utf-8")).hexdigest(), 16) % _BUCKETS
  return bucket < round(eval_fraction * _BUCKETS)


def first_user_key(messages: list[dict]) -> str:
  """The split key of a conversation: its normalised first user turn.

  Keying the split on the prompt (not the whole conversation) keeps every conversation that
  opens with the same question in one split, so validation never scores a memorised prompt.
  """
  first = next((m["content"] for m in messages if m["role"] == "user"), "")
  return text_norm.normalize(first)


def encode_example(example_id: str, messages: list[dict]) -> dict:
  return {"id": example_id, "messages_json": json.dumps(messages, ensure_ascii=False)}


@dataclasses.dataclass(eq=False)
class ChatFilesConfig(tfds.core.BuilderConfig):
  """Per-split JSONL files and the field holding the messages; build with `make_config`."""

  files: Mapping[str, str] = dataclasses.field(default_factory=dict)
  messages_field: str = "messages"


def make_config(files: Mapping[str, str], *, messages_field: str = "messages") -> ChatFilesConfig:
  """Checks the files (split name -> .jsonl path); the config name changes with their content."""
  if not files:
    raise UserError("data.files is empty: give at least one split, e.g. {'train': 'chat.jsonl'}")
  paths = {}
  for split, p in files.items():
    path = files_reader.check_file(p, f"data file for split {split!r}").resolve()
    if path.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
      raise UserError(f"{path}: chat data must be JSONL (one {{\"{messages_field}\": [...]}} "
                      "object per line)")
    paths[split] = path
  key = {"files": {split: [str(p), sources.file_sha256(p)] for split, p in sorted(paths.items())},
         "messages_field": messages_field}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  return ChatFilesConfig(name=f"h{digest}", description=json.dumps(key, sort_keys=True),
                         files={split: str(p) for split, p in paths.items()},
                         messages_field=messages_field)


def from_data_config(data_cfg, data_dir) -> "ChatFiles":
  """The builder for `data.name == "chat_files"` (used by `builders.get_builder`)."""
  config = make_config(dict(data_cfg.files or {}),
                       messages_field=data_cfg.get("messages_field", "messages"))
  return ChatFiles(data_dir=data_dir, config=config)


def read_conversations(path, messages_field: str) -> tuple[list[tuple[str, list[dict]]], int]:
  """Reads one JSONL file: `([(id, messages)], skipped_without_assistant)`."""
  path = files_reader.check_file(path)
  kept, skipped = [], 0
  for line_no, row in files_reader.read_rows(path):
    where = f"{path}:{line_no}"
    if messages_field not in row:
      raise UserError(f"{where}: missing field {messages_field!r}")
    messages = check_messages(row[messages_field], where)
    if has_assistant(messages):
      kept.append((f"{path.name}:{line_no}", messages))
    else:
      skipped += 1
  return kept, skipped


class ChatFiles(tfds.core.GeneratorBasedBuilder):
  """Chat conversations from local JSONL files, one split per file."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        description="Chat conversations read from: " + ", ".join(
            f"{split}={path}" for split, path in sorted(cfg.files.items())),
        features=features(),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    cfg = self.builder_config
    by_split, skipped = {}, {}
    # Read eagerly: the skip counts must be in the metadata before TFDS writes it.
    for split, path in cfg.files.items():
      by_split[split], skipped[split] = read_conversations(path, cfg.messages_field)
      if not by_split[split]:
        raise UserError(f"{path}: no conversation with an assistant turn (empty split "
                        f"{split!r}; {skipped[split]} skipped)")
      if skipped[split]:
        logging.warning("chat_files: %s: skipped %d conversations without an assistant turn",
                        path, skipped[split])
    self.info.metadata["skipped"] = {"no_assistant": sum(skipped.values())}
    return {split: self._generate_examples(items) for split, items in by_split.items()}

  def _generate_examples(self, items):
    for example_id, messages in items:
      yield example_id, encode_example(example_id, messages)
