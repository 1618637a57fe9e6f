"""Picks and prepares the TFDS builder named by a data config (`data.name`)."""

import hashlib
import pathlib

from absl import logging
import filelock
import tensorflow_datasets as tfds

from ftjax.data import arithmetic
from ftjax.data import chat_files
from ftjax.data import chatterbot
from ftjax.data import choice_files
from ftjax.data import classification_files
from ftjax.data import drug_reviews
from ftjax.data import hf_datasets
from ftjax.data import hhh
from ftjax.data import pair_files
from ftjax.data import paths
from ftjax.data import preference_files
from ftjax.data import prompt_files
from ftjax.data import qa_files
from ftjax.data import rotten_tomatoes
from ftjax.data import rotten_tomatoes_pairs
from ftjax.data import target_files
from ftjax.data import text_files
from ftjax.data import token_files
from ftjax.errors import UserError

NAMES = ("rotten_tomatoes", "files", "chatterbot", "chat_files", "preference_files", "hhh",
         "prompt_files", "arithmetic", "text_files", "hf_datasets", "pair_files",
         "rotten_tomatoes_pairs", "token_files", "choice_files", "qa_files",
         "target_files", "drug_reviews")


def get_builder(data_cfg) -> tfds.core.DatasetBuilder:
  """Returns the builder for `data_cfg`, without preparing it."""
  data_dir = paths.data_dir_or_default(data_cfg.data_dir)
  if data_cfg.name == "hf_datasets":  # exported to local JSONL once, then a files builder
    return get_builder(hf_datasets.as_files_config(data_cfg, data_dir))
  if data_cfg.name == "rotten_tomatoes":
    return rotten_tomatoes.RottenTomatoes(data_dir=data_dir)
  if data_cfg.name == "drug_reviews":
    return drug_reviews.DrugReviews(data_dir=data_dir)
  if data_cfg.name == "files":
    config = classification_files.make_config(
        dict(data_cfg.files or {}),
        text_field=data_cfg.text_field,
        text_pair_field=data_cfg.text_pair_field,
        label_field=data_cfg.label_field,
        label_names=tuple(data_cfg.label_names or ()),
        train_split=data_cfg.train_split,
    )
    return classification_files.ClassificationFiles(data_dir=data_dir, config=config)
  if data_cfg.name == "chatterbot":
    return chatterbot.from_data_config(data_cfg, data_dir)
  if data_cfg.name == "chat_files":
    return chat_files.from_data_config(data_cfg, data_dir)
  if data_cfg.name == "preference_files":
    return preference_files.from_data_config(data_cfg, data_dir)
  if data_cfg.name == "hhh":
    return hhh.from_data_config(data_cfg, data_dir)
  if data_cfg.name == "prompt_files":
    return prompt_files.from_data_config(data_cfg, data_dir)
  if data_cfg.name == "arithmetic":
    return arithmetic.from_data_config(data_cfg, data_dir)
  if data_cfg.name == "text_files":
    return text_files.from_data_config(data_cfg, data_dir)
  if data_cfg.name == "pair_files":
    return pair_files.from_data_config(data_cfg, data_dir)
  if data_cfg.name == "rotten_tomatoes_pairs":
    return rotten_tomatoes_pairs.RottenTomatoesPairs(data_dir=data_dir)
  if data_cfg.name == "token_files":
    return token_files.from_data_config(data_cfg, data_dir)
  if data_cfg.name == "choice_files":
    return choice_files.from_data_config(data_cfg, data_dir)
  if data_cfg.name == "qa_files":
    return qa_files.from_data_config(data_cfg, data_dir)
  if data_cfg.name == "target_files":
    return target_files.from_data_config(data_cfg, data_dir)
  raise UserError(f"data.name={data_cfg.name!r} is not one of {list(NAMES)}")


def prepare(data_cfg) -> tfds.core.DatasetBuilder:
  """Builds the dataset as ArrayRecord unless already prepared; returns its builder.

  Independent runs (two experiments, or the 1- and 8-device workers of a test) may prepare the
  same dataset at once; TFDS's final rename of the second one would fail. A file lock per
  dataset version lets one build while the others wait, then read what it built.
  """
  builder = get_builder(data_cfg)
  if builder.is_prepared():
    # Another process may have finished the build between this builder's construction (which
    # then found no dataset info on disk) and the check: a new builder reads the finished info.
    return builder if builder.info.splits else get_builder(data_cfg)
  locks = pathlib.Path(paths.data_dir_or_default(data_cfg.data_dir)) / ".locks"
  locks.mkdir(parents=True, exist_ok=True)
  key = hashlib.sha256(str(builder.data_dir).encode()).hexdigest()[:16]
  with filelock.FileLock(str(locks / f"{builder.name}-{key}.lock")):
    builder = get_builder(data_cfg)  # fresh: another process may have prepared it meanwhile
    if not builder.is_prepared():
      logging.info("Preparing %s into %s", builder.name, builder.data_dir)
      builder.download_and_prepare(file_format="array_record")
  return builder


def split_records(builder, split: str, *, train_split: str, max_train: int, seed: int):
  """A split's records as a Grain MapDataset; the training split cut to `max_train` if set.

  The cut is a seeded random subset, the same for every process and every run with this seed.
  """
  import grain  # pylint: disable=g-import-not-at-top
  if split not in builder.info.splits:
    raise UserError(f"split {split!r} not in dataset {builder.name} "
                    f"(splits: {sorted(builder.info.splits)})")
  records = grain.MapDataset.source(builder.as_data_source(split=split))
  if split == train_split and 0 < max_train < len(records):
    records = records.seed(seed).shuffle()[:max_train]
  return records
