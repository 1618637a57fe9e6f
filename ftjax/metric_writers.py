"""Run records in the workdir: `metrics.jsonl`, TensorBoard events, JSON files.

Only process 0 writes (every process computes the same global metrics). In a local workdir
`metrics.jsonl` is appended to and JSON files are replaced atomically (tmp file + rename). Object
stores (`gs://`) cannot append and need no tmp file (an object appears whole, on close), so there
the writer keeps the rows and rewrites the object on every flush: O(rows) per flush (a train row is
~200 bytes), and a killed run leaves the last complete flush. TensorBoard events go to `gs://`
through tensorboardX's own writer (google-cloud-storage, which gcsfs installs), which likewise
re-uploads its event file on each flush.
"""

from __future__ import annotations

import json
import math
import os

import jax

from ftjax.paths import as_path, is_local

METRICS_FILE = "metrics.jsonl"


def _jsonable(value):
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/inf; keep them visible rather than crash
  return value


def write_text_atomic(path: os.PathLike, text: str) -> None:
  """Writes a file so that a reader never sees it half-written."""
  path = as_path(path)
  if not is_local(path):
    path.write_text(text)  # an object store shows an object only once it is whole
    return
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def append_text(path: os.PathLike, text: str) -> None:
  """Appends to a file; on an object store (no appends) by rewriting the object."""
  path = as_path(path)
  if is_local(path):
    with open(path, "a", encoding="utf-8") as f:
      f.write(text)
  else:
    path.write_text((path.read_text() if path.exists() else "") + text)


def write_json(path: os.PathLike, obj) -> None:
  """Writes JSON atomically: a reader never sees a half-written file."""
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_metrics(workdir: os.PathLike) -> list[dict]:
  path = as_path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _lines(records: list[dict]) -> str:
  return "".join(json.dumps(r) + "\n" for r in records)


class MetricWriter:
  """Adds one JSON object per logging event to `metrics.jsonl` and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: os.PathLike):
    self.workdir = as_path(workdir)
    self.enabled = jax.process_index() == 0
    self._tb = None
    self._file = None
    self._rows = None  # an object store's rows so far, rewritten whole on every flush
    if self.enabled:
      self._open()

  def _open(self) -> None:
    if is_local(self.workdir):
      self._file = open(self.workdir / METRICS_FILE, "a", encoding="utf-8")
    else:
      self._rows = read_metrics(self.workdir)

  def truncate_after(self, step: int) -> list[dict]:
    """On resume: drops records past the restored step (they will be produced again)."""
    if not self.enabled:
      return []
    if self._file:
      self._file.close()
    kept = [r for r in read_metrics(self.workdir) if r["step"] <= step]
    write_text_atomic(self.workdir / METRICS_FILE, _lines(kept))
    self._open()
    return kept

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "split": split, **{k: _jsonable(v) for k, v in metrics.items()}}
    if self._file:
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
    else:
      self._rows.append(record)
      (self.workdir / METRICS_FILE).write_text(_lines(self._rows))
    if self._tb is None:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(str(self.workdir), flush_secs=10)
    for name, value in metrics.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        self._tb.add_scalar(f"{split}/{name}", value, int(step))

  def close(self) -> None:
    if self._file:
      self._file.close()
      self._file = None
    if self._tb:
      self._tb.close()
      self._tb = None
