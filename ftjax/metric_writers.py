"""Run records in the workdir: `metrics.jsonl`, TensorBoard events, JSON files.

Only process 0 writes (every process computes the same global metrics).
"""

from __future__ import annotations

import json
import math
import os
import pathlib

import jax

METRICS_FILE = "metrics.jsonl"


def _jsonable(value):
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/inf; keep them visible rather than crash
  return value


def write_json(path: os.PathLike, obj) -> None:
  """Writes JSON atomically: a reader never sees a half-written file."""
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
  os.replace(tmp, path)


def read_metrics(workdir: os.PathLike) -> list[dict]:
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricWriter:
  """Appends one JSON object per logging event and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: os.PathLike):
    self.workdir = pathlib.Path(workdir)
    self.enabled = jax.process_index() == 0
    self._tb = None
    self._file = None
    if self.enabled:
      self._file = open(self.workdir / METRICS_FILE, "a", encoding="utf-8")

  def truncate_after(self, step: int) -> list[dict]:
    """On resume: drops records past the restored step (they will be produced again)."""
    if not self.enabled:
      return []
    self._file.close()
    kept = [r for r in read_metrics(self.workdir) if r["step"] <= step]
    tmp = self.workdir / (METRICS_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, self.workdir / METRICS_FILE)
    self._file = open(self.workdir / METRICS_FILE, "a", encoding="utf-8")
    return kept

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "split": split, **{k: _jsonable(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
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
