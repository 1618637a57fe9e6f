"""Every path is a URL: a workdir and the files in it are `etils.epath.Path`s.

A local path stays a local path (`~` expanded) and behaves as `pathlib` does; `gs://bucket/dir`
goes through epath's fsspec backend, i.e. `gcsfs` (the `ftjax[gcs]` extra) without TensorFlow.
Object stores differ from a disk in ways the writers care about (`is_local` tells them apart):
no appends, an object appears only when closed (so a plain write is already atomic), no
directories, no locks, and a rename is a copy.
"""

from __future__ import annotations

import importlib.util
import os

from etils import epath

from ftjax.errors import UserError

_GCS = ("gs://", "gcs://")


def as_path(path: os.PathLike | str) -> epath.Path:
  """`path` as an epath.Path; a `gs://` URL without gcsfs installed is a UserError."""
  text = os.fspath(path)
  if "://" not in text:
    return epath.Path(os.path.expanduser(text))
  if text.startswith(_GCS) and importlib.util.find_spec("gcsfs") is None:
    raise UserError(f"'{text}' needs gcsfs: pip install 'ftjax[gcs]'")
  return epath.Path(text)


def is_local(path: os.PathLike | str) -> bool:
  """Whether `path` is on a local (POSIX) filesystem rather than an object store."""
  return "://" not in os.fspath(path)
