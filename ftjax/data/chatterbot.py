"""TFDS builder for the ChatterBot English corpus (short dialogues and support Q&A).

The YAML files ship inside the `chatterbot-corpus` wheel; `ftjax.sources.resolve` fetches them
once. Each file (one per category, e.g. `tech_support.yml`) holds `conversations:`, lists of
turns that alternate user / assistant, starting with the user.

* Files are read with YAML's `BaseLoader`, so every turn stays the exact string written
  (no `yes` -> True, `1.0` -> float surprises).
* A one-turn conversation has no assistant reply: skipped and counted (`skipped`).
* Conversations are de-duplicated over all selected categories on their normalised text
  (`tech_support.yml` repeats 10 distinct Q&A pairs 1,050 times): first occurrence kept.
* Splits: a conversation goes to `validation` when the SHA-256 bucket of its normalised first
  user turn falls in `eval_fraction`, else `train`. Conversations that open with the same
  question share a split, so no duplicate or repeated prompt crosses splits.
"""

import dataclasses
import hashlib
import json
import pathlib

from absl import logging
import tensorflow_datasets as tfds

from ftjax.data import chat_files
from ftjax.errors import UserError

DEFAULT_SOURCE = "pypi:chatterbot-corpus==1.3.3/chatterbot_corpus/data/english"
# Categories used when `data.chatterbot_categories` is empty: every file of the corpus.
ALL = ()


@dataclasses.dataclass(eq=False)
class ChatterBotConfig(tfds.core.BuilderConfig):
  """Which categories (YAML file stems) to read, the eval fraction and the source."""

  categories: tuple[str, ...] = ALL
  eval_fraction: float = 0.1
  source: str = DEFAULT_SOURCE


def make_config(categories=ALL, *, eval_fraction: float = 0.1,
                source: str = DEFAULT_SOURCE) -> ChatterBotConfig:
  """A config whose name changes with the categories, the eval fraction and the source."""
  if not 0 <= eval_fraction < 1:
    raise UserError(f"data.eval_fraction={eval_fraction} must be in [0, 1)")
  categories = tuple(sorted(set(str(c) for c in categories)))
  key = {"categories": list(categories), "eval_fraction": float(eval_fraction), "source": source}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  return ChatterBotConfig(name=f"c{digest}", description=json.dumps(key, sort_keys=True),
                          categories=categories, eval_fraction=float(eval_fraction),
                          source=source)


def from_data_config(data_cfg, data_dir) -> "ChatterBot":
  """The builder for `data.name == "chatterbot"` (used by `builders.get_builder`)."""
  config = make_config(tuple(data_cfg.get("chatterbot_categories", ALL) or ()),
                       eval_fraction=data_cfg.get("eval_fraction", 0.1))
  return ChatterBot(data_dir=data_dir, config=config)


def available_categories(directory: pathlib.Path) -> list[str]:
  return sorted(p.stem for p in directory.glob("*.yml"))


def read_category(path: pathlib.Path) -> list[list[str]]:
  """The `conversations:` of one YAML file, every turn a string."""
  import yaml  # pylint: disable=g-import-not-at-top  (only building needs it)
  try:
    with open(path, encoding="utf-8") as f:
      document = yaml.load(f, Loader=yaml.BaseLoader)  # nosec: BaseLoader builds no objects
  except yaml.YAMLError as e:
    raise UserError(f"{path}: bad YAML ({e})") from None
  conversations = (document or {}).get("conversations", [])
  if not isinstance(conversations, list):
    raise UserError(f"{path}: 'conversations' must be a list")
  for i, turns in enumerate(conversations):
    if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
      raise UserError(f"{path}: conversation {i} must be a list of strings")
  return conversations


def to_messages(turns: list[str]) -> list[dict]:
  """Alternating turns, user first."""
  return [{"role": "user" if i % 2 == 0 else "assistant", "content": t.strip()}
          for i, t in enumerate(turns)]


def collect(directory: pathlib.Path, categories, eval_fraction: float):
  """Reads, filters, de-duplicates and splits; returns `(by_split, counts)`."""
  known = available_categories(directory)
  if not known:
    raise UserError(f"{directory}: no ChatterBot *.yml files")
  categories = tuple(categories) or tuple(known)
  unknown = [c for c in categories if c not in known]
  if unknown:
    raise UserError(f"data.chatterbot_categories: unknown {unknown}; available: {known}")
  by_split = {"train": [], "validation": []}
  seen = set()
  counts = {"read": 0, "no_assistant": 0, "duplicates": 0}
  for category in categories:
    for index, turns in enumerate(read_category(directory / f"{category}.yml")):
      counts["read"] += 1
      messages = to_messages(turns)
      if not chat_files.has_assistant(messages):
        counts["no_assistant"] += 1
        continue
      key = chat_files.conversation_key(messages)
      if key in seen:
        counts["duplicates"] += 1
        continue
      seen.add(key)
      split_key = chat_files.first_user_key(messages)
      split = "validation" if chat_files.is_eval(split_key, eval_fraction) else "train"
      by_split[split].append((f"{category}:{index}", messages))
  return by_split, counts


class ChatterBot(tfds.core.GeneratorBasedBuilder):
  """ChatterBot English conversations as user/assistant chats, split train/validation."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "De-duplicated; split by a hash of the first user turn."}
  BUILDER_CONFIGS = [make_config()]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__, features=chat_files.features(), metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager  # The resolver owns downloading and caching.
    from ftjax import sources  # pylint: disable=g-import-not-at-top  (only building needs it)

    cfg = self.builder_config
    directory = pathlib.Path(sources.resolve(cfg.source))
    by_split, counts = collect(directory, cfg.categories, cfg.eval_fraction)
    logging.info("chatterbot: read %d conversations from %s; skipped %d without an assistant "
                 "turn and %d duplicates; train %d, validation %d", counts["read"], directory,
                 counts["no_assistant"], counts["duplicates"], len(by_split["train"]),
                 len(by_split["validation"]))
    if not by_split["train"]:
      raise UserError(f"data.chatterbot_categories={list(cfg.categories)}: no training "
                      "conversations")
    self.info.metadata["skipped"] = {"no_assistant": counts["no_assistant"],
                                     "duplicates": counts["duplicates"]}
    self.info.metadata["source"] = cfg.source
    splits = {"train": self._generate_examples(by_split["train"])}
    if by_split["validation"]:
      splits["validation"] = self._generate_examples(by_split["validation"])
    return splits

  def _generate_examples(self, items):
    for example_id, messages in items:
      yield example_id, chat_files.encode_example(example_id, messages)
