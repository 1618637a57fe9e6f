"""Run records in the workdir: `metrics.jsonl`, TensorBoard events, JSON files.

Only process 0 writes (every process computes the same global metrics). In a local workdir
`metrics.jsonl` is appended to and JSON files are replaced atomically (tmp file + rename). Object
stores (`gs://`) cannot append and need no tmp file (an object appears whole, on close), so there
the writer keeps the rows and rewrites the object on every flush: O(rows) per flush (a train row is
~200 bytes), and a killed run leaves the last complete flush. TensorBoard events go to `gs://`
through tensorboardX's own writer (google-cloud-storage, which gcsfs installs), which likewise
re-uploads its event file on each flush.

TensorBoard also gets the run's hyperparameters (every config value by its `--config` key, for
its HParams dashboard: `tensorboard --logdir runs/` compares the runs under `runs/` by them) with
the session's end status; Weights & Biases gets the same rows when `logging.wandb` is set
(ftjax/wandb_run.py).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os

import jax

from ftjax.paths import as_path, is_local
from ftjax.wandb_run import WandbRun, flatten

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


def _hparam(value):
  """A config value as TensorBoard's HParams plugin takes it: bool, number or string."""
  return value if isinstance(value, (bool, int, float, str)) else json.dumps(value, default=str)


def _hparams_summaries(config: dict, status: str | None):
  """The HParams plugin's session start summary (every config value) or end summary (status).

  No experiment summary is written: the plugin then builds the experiment from every run's
  session start (the union of their hyperparameters) and takes each run's scalars as metrics,
  so runs with different configs compare in one dashboard."""
  from tensorboardX import summary as tb_summary  # pylint: disable=g-import-not-at-top
  from tensorboardX.proto import api_pb2, plugin_hparams_pb2, summary_pb2  # pylint: disable=g-import-not-at-top
  if status is None:
    _, start, _ = tb_summary.hparams({k: _hparam(v) for k, v in flatten(config, ".").items()}, {})
    return start
  end = plugin_hparams_pb2.HParamsPluginData(
      session_end_info=plugin_hparams_pb2.SessionEndInfo(status=api_pb2.Status.Value(status)),
      version=0)
  metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
      plugin_name="hparams", content=end.SerializeToString()))
  return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="_hparams_/session_end_info",
                                                              metadata=metadata)])


class MetricWriter:
  """Adds one JSON object per logging event to `metrics.jsonl` and mirrors scalars to TensorBoard
  (and W&B). `logging` is the config's `logging` section and `config` the resolved config;
  without them only `metrics.jsonl` and TensorBoard scalars are written. As a context manager,
  an error ends the TensorBoard session and the W&B run as failed."""

  def __init__(self, workdir: os.PathLike, logging=None, config: dict | None = None):
    self.workdir = as_path(workdir)
    self.enabled = jax.process_index() == 0
    self._tb = None
    self._file = None
    self._rows = None  # an object store's rows so far, rewritten whole on every flush
    self._tensorboard = (logging is None or logging.tensorboard) and self.enabled
    if self._tensorboard and importlib.util.find_spec("tensorboardX") is None:
      # An optional mirror of metrics.jsonl (the `tensorboard` extra): on where installed.
      print("ftjax: no TensorBoard events: tensorboardX is not installed "
            "(pip install 'ftjax[tensorboard]'; logging.tensorboard=False silences this)", flush=True)
      self._tensorboard = False
    self._config = config
    self._wandb = None
    self._finished = False
    if self.enabled:
      self._open()
      if logging is not None and logging.wandb:
        self._wandb = WandbRun(self.workdir, logging, config or {})

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is not None and not self._finished:
      self.finish(None, {}, status="failed")
    self.close()

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
    if self._tensorboard:
      tb = self._tensorboard_writer()
      for name, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
          tb.add_scalar(f"{split}/{name}", value, int(step))
    if self._wandb:
      self._wandb.log(int(step), split, metrics)

  def _tensorboard_writer(self):
    if self._tb is None:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(str(self.workdir), flush_secs=10)
      if self._config is not None:  # each invocation (a resume too) starts a session
        self._tb.file_writer.add_summary(_hparams_summaries(self._config, None))
    return self._tb

  def finish(self, summary: dict | None, plots: dict, *, status: str) -> None:
    """Ends the run's tracking: status "completed", "preempted" or "failed". TensorBoard's session
    ends with success or failure (a preempted one stays open: its resume goes on with it); W&B
    gets the summary and the report's plots (`plots`: name -> PNG path)."""
    self._finished = True
    if not self.enabled:
      return
    if self._tensorboard and self._config is not None and status != "preempted":
      self._tensorboard_writer().file_writer.add_summary(_hparams_summaries(
          self._config, "STATUS_SUCCESS" if status == "completed" else "STATUS_FAILURE"))
    if self._wandb:
      wandb_run, self._wandb = self._wandb, None
      wandb_run.finish(summary, plots, status=status)

  def close(self) -> None:
    if self._file:
      self._file.close()
      self._file = None
    if self._tb:
      self._tb.close()
      self._tb = None
