"""TFDS builder for BIG-bench's HHH alignment pairs (Askell et al. 2021): 221 preference pairs.

BIG-bench ships only as a 358 MB source distribution; `ftjax.sources` fetches it once
(`sdist:`, sha256-pinned) and extracts just `bigbench/benchmark_tasks/hhh_alignment`. Each
category folder (`harmless`, `helpful`, `honest`, `other`) holds a BIG-bench `task.json`:
`examples` of `input` (the human's request; 41 inputs continue a dialogue written as
`"...\\n\\nAssistant: ...\\n\\nHuman: ..."`, split here into turns) and `target_scores` with exactly
two responses, 1 for the better one (chosen) and 0 for the worse (rejected).

Splits by the SHA-256 bucket of the normalised first human turn: `test` gets `test_fraction`
of the buckets, `validation` the next `eval_fraction`, `train` the rest; a request and its
variants stay in one split. Note the BIG-bench canary: these pairs must not enter
pre-training corpora; fine-tuning on `train` and scoring `test` is the intended use here.
"""

import dataclasses
import hashlib
import json
import pathlib
import re

import tensorflow_datasets as tfds

from ftjax import sources
from ftjax.data import preference_files
from ftjax.data import text_norm
from ftjax.errors import UserError

DEFAULT_SOURCE = ("sdist:bigbench==1.0.0/bigbench/benchmark_tasks/hhh_alignment")
CATEGORIES = ("harmless", "helpful", "honest", "other")
_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]*")
_BUCKETS = 10_000


@dataclasses.dataclass(eq=False)
class HHHConfig(tfds.core.BuilderConfig):
  categories: tuple[str, ...] = CATEGORIES
  eval_fraction: float = 0.15
  test_fraction: float = 0.3
  source: str = DEFAULT_SOURCE


def make_config(categories=(), *, eval_fraction: float = 0.15, test_fraction: float = 0.3,
                source: str = DEFAULT_SOURCE) -> HHHConfig:
  """A config whose name changes with the categories, the fractions and the source."""
  categories = tuple(sorted(set(categories or CATEGORIES)))
  unknown = sorted(set(categories) - set(CATEGORIES))
  if unknown:
    raise UserError(f"data.hhh_categories names {unknown}; known: {list(CATEGORIES)}")
  if not (0 <= eval_fraction and 0 <= test_fraction and eval_fraction + test_fraction < 1):
    raise UserError(f"data.eval_fraction={eval_fraction} and data.test_fraction={test_fraction} "
                    "must be >= 0 and sum to less than 1")
  key = {"categories": list(categories), "eval_fraction": float(eval_fraction),
         "test_fraction": float(test_fraction), "source": source}
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  return HHHConfig(name=f"c{digest}", description=json.dumps(key, sort_keys=True),
                   categories=categories, eval_fraction=float(eval_fraction),
                   test_fraction=float(test_fraction), source=source)


def from_data_config(data_cfg, data_dir) -> "HHH":
  """The builder for `data.name == "hhh"` (used by `builders.get_builder`)."""
  config = make_config(tuple(data_cfg.get("hhh_categories", ()) or ()),
                       eval_fraction=data_cfg.get("eval_fraction", 0.15),
                       test_fraction=data_cfg.get("test_fraction", 0.3),
                       source=data_cfg.get("hhh_source", "") or DEFAULT_SOURCE)
  return HHH(data_dir=data_dir, config=config)


def parse_input(text: str) -> list[dict]:
  """The request as chat turns: the first is the human's, then alternating as written."""
  parts = _TURN.split(text)
  messages = [{"role": "user", "content": parts[0].strip()}]
  for speaker, content in zip(parts[1::2], parts[2::2]):
    messages.append({"role": "user" if speaker == "Human" else "assistant",
                     "content": content.strip()})
  return messages


def read_task(path: pathlib.Path, category: str) -> list[tuple[str, list[dict], str, str]]:
  """`(id, prompt, chosen, rejected)` of one category's `task.json`."""
  try:
    task = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"{path}: not a readable BIG-bench task.json ({e})") from None
  examples = task.get("examples") if isinstance(task, dict) else None
  if not isinstance(examples, list):
    raise UserError(f"{path}: no 'examples' list")
  out = []
  for i, example in enumerate(examples):
    where = f"{path}: example {i}"
    scores = example.get("target_scores") if isinstance(example, dict) else None
    if (not isinstance(scores, dict) or sorted(scores.values()) != [0, 1]
        or not isinstance(example.get("input"), str)):
      raise UserError(f"{where}: expected 'input' and 'target_scores' with one response scored 1 "
                      "and one scored 0")
    chosen = next(r for r, s in scores.items() if s == 1)
    rejected = next(r for r, s in scores.items() if s == 0)
    out.append((f"{category}:{i}", parse_input(example["input"]), chosen, rejected))
  return out


def split_of(prompt: list[dict], eval_fraction: float, test_fraction: float) -> str:
  key = text_norm.normalize(prompt[0]["content"])
  bucket = int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % _BUCKETS
  if bucket < round(test_fraction * _BUCKETS):
    return "test"
  if bucket < round((test_fraction + eval_fraction) * _BUCKETS):
    return "validation"
  return "train"


class HHH(tfds.core.GeneratorBasedBuilder):
  """BIG-bench HHH alignment as preference pairs, with a `category` per pair."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__.split("\n\n")[0],
        features=preference_files.features(),
        homepage="https://github.com/google/BIG-bench",
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # `ftjax.sources` fetches and pins the sdist
    cfg = self.builder_config
    root = sources.resolve(cfg.source)
    by_split = {"train": [], "validation": [], "test": []}
    skipped = dict.fromkeys(preference_files.SKIP_REASONS, 0)
    for category in cfg.categories:
      path = root / category / "task.json"
      if not path.is_file():
        raise UserError(f"{path} not found: '{cfg.source}' is not BIG-bench's hhh_alignment folder")
      for example_id, prompt, chosen, rejected in read_task(path, category):
        reason = preference_files.skip_reason(chosen, rejected)
        if reason:
          skipped[reason] += 1
          continue
        by_split[split_of(prompt, cfg.eval_fraction, cfg.test_fraction)].append(
            (example_id, prompt, chosen, rejected, category))
    self.info.metadata["skipped"] = skipped
    return {split: self._generate_examples(items) for split, items in by_split.items() if items}

  def _generate_examples(self, items):
    for example_id, prompt, chosen, rejected, category in items:
      yield example_id, preference_files.encode_example(example_id, prompt, chosen, rejected,
                                                        category=category)
