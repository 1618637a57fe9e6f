"""Hugging Face `datasets` in: a saved dataset, local parquet/JSON/CSV, or the Hub when online.

`data.name = "hf_datasets"` with `data.hf_dataset` naming
  * a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (read with
    `datasets.load_from_disk`), or
  * a `datasets.load_dataset` path: a packaged loader (`parquet`, `json`, `csv`) with
    `data.files` as its `data_files` (split -> file), or a Hub dataset id (needs the network;
    `data.hf_config` names its configuration).
`data.hf_columns` renames columns (`{"sentence": "text"}`) before use. `data.hf_format`
(`classification`, `chat`, `preference`, `prompts`, `pairs`; `""` = from the columns) picks the
ftjax builder the rows feed: `files`, `chat_files`, `preference_files`, `prompt_files` or
`pair_files`, with their usual fields (`data.text_field`/`label_field`, `data.messages_field`,
`prompt`/`chosen`/`rejected`, `prompt`/`answer`, `anchor`/`positive`[/`group`/`score`]). A `ClassLabel` column gives `data.label_names` unless set.

Each split is exported once with the library's own writer (`Dataset.to_json`, JSON lines) to a
folder named by the datasets' fingerprints and the options; the ftjax builder then prepares it
as ArrayRecord like any local file, so batches, the data report and exact resume are the same.
"""

import hashlib
import json
import os
import pathlib

import ml_collections

from ftjax.errors import UserError

FORMATS = {"classification": "files", "chat": "chat_files", "preference": "preference_files",
           "prompts": "prompt_files", "pairs": "pair_files"}


def _load(data_cfg):
  """The `DatasetDict` named by the config (a single `Dataset` becomes split `train`)."""
  try:
    import datasets  # pylint: disable=g-import-not-at-top  (only this data source needs it)
  except ImportError:
    raise UserError("data.name=hf_datasets needs the `datasets` package: "
                    "pip install -e '.[hf]'") from None
  source = data_cfg.get("hf_dataset", "")
  if not source:
    raise UserError("data.hf_dataset is empty: give a save_to_disk folder, a loader "
                    "('parquet', 'json', 'csv') with data.files, or a Hub dataset id")
  files = {k: str(v) for k, v in dict(data_cfg.get("files") or {}).items()}
  try:
    if pathlib.Path(source).expanduser().is_dir() and not files:
      loaded = datasets.load_from_disk(str(pathlib.Path(source).expanduser()))
    else:
      loaded = datasets.load_dataset(source, data_cfg.get("hf_config", "") or None,
                                     data_files=files or None)
  except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as e:
    raise UserError(f"data.hf_dataset={source!r}: cannot load it ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''})") from None
  if isinstance(loaded, datasets.Dataset):
    loaded = datasets.DatasetDict({"train": loaded})
  renames = dict(data_cfg.get("hf_columns") or {})
  for split, ds in loaded.items():
    missing = [c for c in renames if c not in ds.column_names]
    if missing:
      raise UserError(f"data.hf_columns: split {split!r} has no column {missing[0]!r} "
                      f"(its columns: {ds.column_names})")
  return loaded.rename_columns(renames) if renames else loaded


def infer_format(columns, data_cfg) -> str:
  """The ftjax format of rows with these columns: preference, pairs, chat, classification,
  prompts."""
  if {"chosen", "rejected"} <= set(columns):
    return "preference"
  if {"anchor", "positive"} <= set(columns):
    return "pairs"
  if data_cfg.get("messages_field", "messages") in columns:
    return "chat"
  if data_cfg.get("label_field", "label") in columns:
    return "classification"
  if "prompt" in columns:
    return "prompts"
  raise UserError(f"data.hf_dataset: cannot tell what the columns {list(columns)} hold; "
                  f"rename them with data.hf_columns or set data.hf_format to one of "
                  f"{list(FORMATS)}")


def _required(kind: str, data_cfg) -> list[str]:
  if kind == "classification":
    fields = [data_cfg.text_field, data_cfg.label_field]
    return fields + ([data_cfg.text_pair_field] if data_cfg.get("text_pair_field") else [])
  if kind == "chat":
    return [data_cfg.get("messages_field", "messages")]
  if kind == "preference":
    return ["chosen", "rejected"]
  if kind == "pairs":
    return ["anchor", "positive"]
  return ["prompt"]


def as_files_config(data_cfg, data_dir) -> ml_collections.ConfigDict:
  """A copy of `data_cfg` that names the ftjax builder and the exported JSONL files."""
  loaded = _load(data_cfg)
  kind = data_cfg.get("hf_format", "") or infer_format(next(iter(loaded.values())).column_names,
                                                       data_cfg)
  if kind not in FORMATS:
    raise UserError(f"data.hf_format={kind!r} is not one of {list(FORMATS)}")
  for split, ds in loaded.items():
    missing = [c for c in _required(kind, data_cfg) if c not in ds.column_names]
    if missing:
      raise UserError(f"data.hf_dataset: split {split!r} has no column {missing[0]!r} for "
                      f"{kind} data (its columns: {ds.column_names}; rename with "
                      "data.hf_columns)")
  key = json.dumps({"source": str(data_cfg.hf_dataset), "kind": kind,
                    "splits": {s: ds._fingerprint for s, ds in sorted(loaded.items())}},  # pylint: disable=protected-access
                   sort_keys=True)
  folder = pathlib.Path(data_dir) / "hf_datasets_export" / hashlib.sha256(key.encode()).hexdigest()[:16]
  files = {}
  for split, ds in loaded.items():
    path = folder / f"{split}.jsonl"
    if not path.exists():
      folder.mkdir(parents=True, exist_ok=True)
      partial = folder / f".{split}.{os.getpid()}.jsonl"
      ds.to_json(str(partial), lines=True, force_ascii=False)
      partial.replace(path)  # whole or absent: a killed export is redone, never half-read
    files[split] = str(path)
  out = ml_collections.ConfigDict(data_cfg.to_dict())
  out.name = FORMATS[kind]
  out.files = ml_collections.ConfigDict(files)
  label = data_cfg.get("label_field", "label")
  features = next(iter(loaded.values())).features
  if kind == "classification" and not tuple(data_cfg.get("label_names", ())) and hasattr(
      features.get(label), "names"):
    out.label_names = tuple(features[label].names)
  return out
