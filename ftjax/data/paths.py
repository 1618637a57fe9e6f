"""Where ftjax keeps prepared datasets."""

import os
import pathlib

from ftjax import sources


def cache_root() -> pathlib.Path:
  """The ftjax cache root: `$FTJAX_CACHE`, else `~/.cache/ftjax` (shared with the resolver)."""
  return sources.cache_root()


def default_data_dir() -> pathlib.Path:
  """TFDS `data_dir` used when the config leaves `data.data_dir` empty."""
  return cache_root() / "tfds"


def data_dir_or_default(data_dir: str | os.PathLike | None) -> pathlib.Path:
  return pathlib.Path(data_dir).expanduser() if data_dir else default_data_dir()
