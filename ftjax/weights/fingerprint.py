"""A base checkpoint's fingerprint: what a run's checkpoints record of the weights they leave out.

Checkpoints of a run hold what changes (trainable params, optimizer state, step, rng, data
state); the frozen base is rebuilt from its source on resume, so the run records which base it
started from and resume refuses another one. Hashing every byte of a multi-GB checkpoint on
every start would read all of it on every host, which the sharded build avoids; instead each
file contributes its size, the SHA-256 of its header (tensor names, dtypes, shapes and offsets)
and the SHA-256 of `SAMPLES` evenly spaced 64 KiB windows of its data. Any re-export, other
fine-tune or truncation changes it; it does not depend on paths or mtimes, so copies of one
checkpoint on different hosts or caches agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import struct

from ftjax.errors import UserError

SAMPLES = 16
WINDOW = 64 * 1024
CONFIG_FILE = "config.json"


def _file_print(file: pathlib.Path) -> dict:
  size = file.stat().st_size
  digest = hashlib.sha256()
  with file.open("rb") as f:
    if file.suffix == ".safetensors":
      head = f.read(8)
      header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
      digest.update(head + f.read(min(header_len, size)))
    for k in range(SAMPLES):
      f.seek(max(size - WINDOW, 0) * k // max(SAMPLES - 1, 1))
      digest.update(f.read(WINDOW))
  return {"size": size, "sha256": digest.hexdigest()}


def fingerprint(model_dir: os.PathLike, files: list[pathlib.Path], source: str) -> dict:
  """The fingerprint of a checkpoint directory: its `config.json` and weight `files`."""
  model_dir = pathlib.Path(model_dir)
  prints = {f.name: _file_print(f) for f in sorted(files)}
  config = model_dir / CONFIG_FILE
  if config.is_file():
    prints[CONFIG_FILE] = _file_print(config)
  return {"source": source, "files": prints}


def same(a: dict, b: dict) -> bool:
  """Whether two fingerprints describe the same weights (their sources may differ)."""
  return a.get("files") == b.get("files")


def describe(print_: dict) -> str:
  """A short, comparable form for error messages: the source and a digest of the files."""
  digest = hashlib.sha256(json.dumps(print_.get("files"), sort_keys=True).encode()).hexdigest()
  total = sum(f["size"] for f in print_.get("files", {}).values())
  return f"{print_.get('source', '?')} ({len(print_.get('files', {}))} files, {total:,} bytes, " \
         f"digest {digest[:16]})"


def check_same(saved: dict | None, current: dict, *, where: str, accept: bool) -> None:
  """Raises a UserError naming both fingerprints when the base changed, unless `accept`."""
  if saved is None or same(saved, current):
    return
  if accept:
    print(f"ftjax: warning: the base checkpoint changed since {where} was written "
          f"({describe(saved)} -> {describe(current)}); continuing "
          "(checkpoint.accept_base_change=True)", flush=True)
    return
  raise UserError(f"the base checkpoint changed since {where} was written: it was "
                  f"{describe(saved)}, it is now {describe(current)}; point model.checkpoint at "
                  "the original, or set checkpoint.accept_base_change=True to resume on this one")
