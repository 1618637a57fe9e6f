"""Evaluate a checkpoint (or the untouched base model) on a split, with slices.

  python -m ftjax.evaluate --config configs/quickstart.py --workdir runs/quickstart \
      [--checkpoint latest|best|base|STEP] [--split validation|test|...] [--config.K=V ...]

writes `WORKDIR/eval_<split>_<checkpoint>.json` (every metric: loss, accuracy, macro-F1,
per-class precision/recall/F1, confusion matrix, calibration error and its reliability bins,
and per-slice metrics when `eval.slice_by` is set) and prints a short table.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the heavy imports, which a re-exec would repeat
  from ftjax import malloc_tuning  # pylint: disable=g-import-not-at-top
  malloc_tuning.reexec_with_huge_pages()

import logging

from absl import flags
from etils import epath

from ftjax import cli, train
from ftjax.errors import UserError
from ftjax.paths import as_path
from ftjax.reports import eval_results

def run(cfg, workdir, checkpoint: str | int = "latest", split: str | None = None) -> tuple[epath.Path, dict]:
  """Evaluates `checkpoint` of `workdir` on `split` (default `data.eval_split`); writes the JSON."""
  workdir = as_path(workdir)
  checkpoint = train.parse_checkpoint(str(checkpoint))
  if checkpoint != "base" and not (workdir / "checkpoints").is_dir():
    raise UserError(f"workdir '{workdir}' has no checkpoints/ (use --checkpoint=base for the "
                    f"untrained model)")
  split = split or cfg.data.eval_split
  exp = train.build_experiment(cfg, optimizer=False)
  if split not in exp.dataset.split_sizes:
    raise UserError(f"split '{split}' not in data '{cfg.data.name}' "
                    f"(splits: {', '.join(sorted(exp.dataset.split_sizes))})")
  eval_results.configure(exp)
  state, step = train.restore_state(exp, workdir, checkpoint)
  metrics = eval_results.evaluate_split(train.Evaluator(exp), exp, state, split)
  workdir.mkdir(parents=True, exist_ok=True)
  path = eval_results.write_result(workdir, split, checkpoint, metrics, step=step,
                                   label_names=getattr(exp.dataset, "label_names", None))
  return path, {"split": split, "checkpoint": str(checkpoint), "step": step, **metrics,
                "label_names": list(getattr(exp.dataset, "label_names", []))}


def _evaluate(cfg) -> None:
  path, result = run(cfg, cli.FLAGS.workdir, cli.FLAGS.checkpoint, cli.FLAGS.split)
  print(eval_results.format_table(result))
  print(f"wrote {path}")


if __name__ == "__main__":
  flags.DEFINE_string("checkpoint", "latest", "latest, best, base (the untrained model) or a step.")
  flags.DEFINE_string("split", None, "Split to evaluate; default: the config's data.eval_split.")
  cli.run_config_command(_evaluate, log_level=logging.WARNING)
