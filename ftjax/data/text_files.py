"""TFDS builder for plain-text documents in a folder: source code, notes, manuals.

`data.text_source` is a folder (a local path or any `ftjax.sources` location, e.g. a wheel's
folder) or `stdlib`: the running interpreter's standard library (the code corpus every machine
has; ../shared/ASSETS.md). `data.text_glob` picks the files (default `**/*.py`) and
`data.text_exclude` drops every file with a folder of that name on its path (default: `test`,
`tests`, `idle_test`, `site-packages`, `__pycache__`).

* One record per file: `id` (the path relative to the folder) and `text` (its contents).
* Files that are not UTF-8 or hold only whitespace are skipped and counted (`skipped`).
* Files with identical contents are kept once (the first path in sorted order), counted as
  `duplicates`, before the split, so no file is in two splits.
* Splits by a SHA-256 bucket of the relative path: `data.eval_fraction` of the files go to
  `validation`, `data.test_fraction` to `test`, the rest to `train` (a whole file per split,
  so no held-out code was seen in training).

The config name hashes the folder, the options and every selected file's contents, so an edited
corpus (or another Python's standard library) prepares a fresh dataset.
"""

import dataclasses
import hashlib
import json
import pathlib
import sysconfig

from absl import logging
import tensorflow_datasets as tfds

from ftjax.errors import UserError

STDLIB = "stdlib"
DEFAULT_GLOB = "**/*.py"
DEFAULT_EXCLUDE = ("test", "tests", "idle_test", "site-packages", "__pycache__")
_BUCKETS = 10_000


def resolve_root(source: str) -> pathlib.Path:
  """The folder `data.text_source` names (`stdlib`: this interpreter's standard library)."""
  if not source:
    raise UserError("data.text_source is empty: give a folder of text files, or 'stdlib'")
  if source == STDLIB:
    return pathlib.Path(sysconfig.get_paths()["stdlib"]).resolve()
  from ftjax import sources  # pylint: disable=g-import-not-at-top  (fetches only when named)
  try:
    root = pathlib.Path(sources.resolve(source))
  except UserError as e:
    raise UserError(f"data.text_source={source!r}: {e}") from None
  if not root.is_dir():
    raise UserError(f"data.text_source={source!r}: {root} is not a folder")
  return root


def select(root: pathlib.Path, pattern: str, exclude) -> list[pathlib.Path]:
  """The files under `root` matching `pattern`, none under a folder named in `exclude`, in
  sorted order of their relative paths."""
  exclude = set(exclude)
  out = []
  for path in sorted(root.glob(pattern)):
    relative = path.relative_to(root)
    if path.is_file() and not exclude.intersection(relative.parts[:-1]):
      out.append(path)
  return out


def split_of(relative_path: str, eval_fraction: float, test_fraction: float) -> str:
  """`validation`, `test` or `train`, from a SHA-256 bucket of the file's relative path."""
  bucket = int(hashlib.sha256(relative_path.encode("utf-8")).hexdigest(), 16) % _BUCKETS
  if bucket < round(eval_fraction * _BUCKETS):
    return "validation"
  if bucket < round((eval_fraction + test_fraction) * _BUCKETS):
    return "test"
  return "train"


@dataclasses.dataclass(eq=False)
class TextFilesConfig(tfds.core.BuilderConfig):
  """Where the files are and how they are split; build with `make_config`."""

  source: str = STDLIB
  pattern: str = DEFAULT_GLOB
  exclude: tuple[str, ...] = DEFAULT_EXCLUDE
  eval_fraction: float = 0.05
  test_fraction: float = 0.05


def make_config(source: str, *, pattern: str = DEFAULT_GLOB, exclude=DEFAULT_EXCLUDE,
                eval_fraction: float = 0.05, test_fraction: float = 0.05) -> TextFilesConfig:
  """Checks the options; the config name changes with them and with the files' contents."""
  if not (0 <= eval_fraction and 0 <= test_fraction and eval_fraction + test_fraction < 1):
    raise UserError(f"data.eval_fraction={eval_fraction} and data.test_fraction={test_fraction}"
                    " must be >= 0 and sum to less than 1")
  exclude = tuple(sorted(set(str(e) for e in exclude)))
  root = resolve_root(source)
  files = select(root, pattern, exclude)
  if not files:
    raise UserError(f"data.text_source={source!r}: no file under {root} matches "
                    f"data.text_glob={pattern!r} outside {list(exclude)}")
  digest = hashlib.sha256(json.dumps(
      {"root": str(root), "pattern": pattern, "exclude": list(exclude),
       "eval_fraction": float(eval_fraction), "test_fraction": float(test_fraction)},
      sort_keys=True).encode())
  for path in files:
    digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
  return TextFilesConfig(
      name=f"t{digest.hexdigest()[:16]}",
      description=f"{len(files)} files {pattern} under {root}", source=source, pattern=pattern,
      exclude=exclude, eval_fraction=float(eval_fraction), test_fraction=float(test_fraction))


def from_data_config(data_cfg, data_dir) -> "TextFiles":
  """The builder for `data.name == "text_files"` (used by `builders.get_builder`)."""
  config = make_config(data_cfg.get("text_source", STDLIB),
                       pattern=data_cfg.get("text_glob", DEFAULT_GLOB),
                       exclude=tuple(data_cfg.get("text_exclude", DEFAULT_EXCLUDE)),
                       eval_fraction=data_cfg.get("eval_fraction", 0.05),
                       test_fraction=data_cfg.get("test_fraction", 0.05))
  return TextFiles(data_dir=data_dir, config=config)


def collect(root: pathlib.Path, files, eval_fraction: float, test_fraction: float):
  """Reads, filters, de-duplicates and splits; returns `(by_split, counts)`."""
  by_split = {"train": [], "validation": [], "test": []}
  counts = {"read": 0, "not_utf8": 0, "blank": 0, "duplicates": 0}
  seen = set()
  for path in files:
    counts["read"] += 1
    relative = path.relative_to(root).as_posix()
    try:
      text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
      counts["not_utf8"] += 1
      logging.warning("text_files: %s is not UTF-8; skipped", path)
      continue
    if not text.strip():
      counts["blank"] += 1
      continue
    key = hashlib.sha256(text.encode("utf-8")).digest()
    if key in seen:
      counts["duplicates"] += 1
      continue
    seen.add(key)
    by_split[split_of(relative, eval_fraction, test_fraction)].append((relative, text))
  return by_split, counts


class TextFiles(tfds.core.GeneratorBasedBuilder):
  """Plain-text files, one document per file, split by a hash of the path."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "One record per file; de-duplicated; split by a hash of the path."}
  BUILDER_CONFIGS = [TextFilesConfig(name="default")]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({"id": tfds.features.Text(),
                                             "text": tfds.features.Text()}),
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager  # `resolve_root` owns fetching.
    cfg = self.builder_config
    root = resolve_root(cfg.source)
    by_split, counts = collect(root, select(root, cfg.pattern, cfg.exclude), cfg.eval_fraction,
                               cfg.test_fraction)
    logging.info("text_files: read %d files under %s; skipped %d not UTF-8, %d blank, %d "
                 "duplicates; %s", counts["read"], root, counts["not_utf8"], counts["blank"],
                 counts["duplicates"], {k: len(v) for k, v in by_split.items()})
    if not by_split["train"]:
      raise UserError(f"data.text_source={cfg.source!r}: no training file left after the split")
    self.info.metadata["skipped"] = {k: counts[k] for k in ("not_utf8", "blank", "duplicates")}
    self.info.metadata["source"] = str(root)
    return {split: self._generate_examples(items) for split, items in by_split.items() if items}

  def _generate_examples(self, items):
    for relative, text in items:
      yield relative, {"id": relative, "text": text}

