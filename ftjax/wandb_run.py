"""Weights & Biases logging of a training run (`logging.wandb=True`, the `wandb` extra).

What goes to W&B: the resolved config, every metric row of `metrics.jsonl` (as `split/name`),
the summary (flattened: `best_eval/accuracy`, `test/accuracy`, ...) and the report's plots
(`report/loss`, `report/confusion_test`, ...); the run ends finished, failed (an error) or
preempting. Only process 0 logs, as for the local records.

Resume: the W&B run id is kept in the workdir (`wandb_run.json`, with the last step sent), so
rerunning the same command continues the same W&B run, and the rows an exact resume produces
again (the same values) are not sent twice. W&B's own resume cannot do that offline (an offline
run does not know the server's history), hence the file.

`logging.wandb_mode=offline` needs no network: the run is written under `<workdir>/wandb` and
`wandb sync <workdir>/wandb/offline-run-*` uploads it later. W&B writes its files with local
file I/O, so a `gs://` workdir keeps them in `$WANDB_DIR` (else the system temp directory).
"""

from __future__ import annotations

import io
import json
import os
import tempfile

from etils import epath

from ftjax.errors import UserError
from ftjax.paths import is_local

RUN_FILE = "wandb_run.json"


def flatten(tree: dict, sep: str = "/", prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a/b": 1} (with sep "/"); None values dropped."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(flatten(value, sep, f"{name}{sep}"))
    elif value is not None:
      flat[name] = value
  return flat


class WandbRun:
  """One ftjax run's W&B run; `log` per metric row, `finish` once."""

  def __init__(self, workdir: epath.Path, options, config: dict):
    try:
      import wandb  # pylint: disable=g-import-not-at-top  (optional: the `wandb` extra)
    except ImportError:
      raise UserError("logging.wandb=True needs the wandb package: pip install 'ftjax[wandb]'") from None
    self._wandb = wandb
    self._file = workdir / RUN_FILE
    record = json.loads(self._file.read_text()) if self._file.exists() else {}
    self._id = record.get("id")  # None on a fresh run: W&B picks one
    self._last_step = int(record.get("last_step", -1))
    local = str(workdir) if is_local(workdir) else (os.environ.get("WANDB_DIR") or tempfile.gettempdir())
    try:
      self._run = wandb.init(
          project=options.wandb_project, entity=options.wandb_entity or None,
          name=options.wandb_name or workdir.name, group=options.wandb_group or None,
          tags=list(options.wandb_tags) or None, mode=options.wandb_mode or None,
          id=self._id, resume="allow", dir=local, config=config, job_type="fine-tune")
    except Exception as e:  # no API key, no network, a bad entity: W&B's own message, one line
      raise UserError(f"logging.wandb: W&B could not start a run ({type(e).__name__}: "
                      f"{(str(e).splitlines() or [''])[0][:300]}); logging.wandb_mode=offline "
                      "logs with no network or account") from None
    self._id = self._run.id
    self._save(self._last_step)

  def _save(self, step: int) -> None:
    self._last_step = step
    # A plain write: a torn file only costs the de-duplication of an exact resume's rows.
    self._file.write_text(json.dumps({"id": self._id, "last_step": step}) + "\n")

  def log(self, step: int, split: str, metrics: dict) -> None:
    if step < self._last_step:  # an exact resume producing rows W&B already has
      return
    row = {f"{split}/{k}": v for k, v in metrics.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if row:
      self._run.log(row, step=step)
    if step > self._last_step:
      self._save(step)

  def finish(self, summary: dict | None, plots: dict[str, epath.Path], *, status: str) -> None:
    """status: "completed", "preempted" or "failed"; `plots` maps names to PNG files."""
    if summary:
      for key, value in flatten(summary).items():
        self._run.summary[key] = value
    images = {}
    for name, path in plots.items():
      from PIL import Image  # pylint: disable=g-import-not-at-top  (matplotlib's dependency)
      images[f"report/{name}"] = self._wandb.Image(Image.open(io.BytesIO(path.read_bytes())))
    if images:
      self._run.log(images, step=max(self._last_step, 0))
    if status == "preempted":
      self._run.mark_preempting()  # with a non-zero exit code: preempted (requeued), not failed
    self._run.finish(exit_code=0 if status == "completed" else 1)
