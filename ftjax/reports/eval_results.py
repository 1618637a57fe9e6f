"""Evaluation results: configuring a dataset's eval options, naming slices, the
`eval_<split>_<checkpoint>.json` files and their plain-text table.

The trainer calls `configure(exp)` once after `train.build_experiment`, and `evaluate_split` /
`slice_scalars` / `write_result` around its own evaluations; `python -m ftjax.evaluate` does the
same for any checkpoint.
"""

from __future__ import annotations

import math
import re

from etils import epath

from ftjax import eval_slices
from ftjax.errors import UserError
from ftjax.metric_writers import write_json
from ftjax.paths import as_path


def configure(exp) -> None:
  """Applies `cfg.eval` (ECE bins, slicing) to the experiment's dataset; before the first eval."""
  cfg = exp.cfg
  exp.dataset.ece_bins = int(cfg.eval.ece_bins)
  if tuple(cfg.eval.slice_by):
    if not hasattr(exp.dataset, "eval_slices"):
      raise UserError(f"config key 'eval.slice_by' is not supported for task '{cfg.model.task}' yet")
    exp.dataset.eval_slices = eval_slices.Slicer(exp.dataset, cfg.eval, cfg.data)


def name_slices(metrics: dict, dataset, split: str) -> dict:
  """Replaces the list of per-slice metrics by a dict keyed by slice name (e.g. `length:1-12`)."""
  if "slices" not in metrics or getattr(dataset, "eval_slices", None) is None:
    return metrics
  names = dataset.eval_slices.names(split)
  return {**metrics, "slices": dict(zip(names, metrics["slices"]))}


def evaluate_split(evaluator, exp, state, split: str) -> dict:
  """`evaluator(state, split)` (a `train.Evaluator`) with the slices named: every metric."""
  return name_slices(evaluator(state, split), exp.dataset, split)


def slice_scalars(metrics: dict, keys=("accuracy", "loss", "macro_f1", "num_examples")) -> dict:
  """Flat `slice/<name>/<metric>` scalars of named slices, for metrics.jsonl and TensorBoard."""
  return {f"slice/{name}/{k}": values[k]
          for name, values in metrics.get("slices", {}).items() for k in keys if k in values}


def result_path(workdir, split: str, checkpoint) -> epath.Path:
  return as_path(workdir) / f"eval_{split}_{checkpoint}.json"


def write_result(workdir, split: str, checkpoint, metrics: dict, *, step: int,
                 label_names=None) -> epath.Path:
  """Writes `eval_<split>_<checkpoint>.json`: the metrics plus split, checkpoint and step."""
  result = {"split": split, "checkpoint": str(checkpoint), "step": int(step), **metrics}
  if label_names is not None:
    result["label_names"] = list(label_names)
    if "per_class" in result:
      result["per_class"] = {**result["per_class"], "label": list(label_names)}
  path = result_path(workdir, split, checkpoint)
  write_json(path, result)
  return path


def _number(value) -> str:
  if isinstance(value, float):
    return "nan" if math.isnan(value) else f"{value:.4f}"
  return str(value)


def format_table(result: dict) -> str:
  """A short plain-text summary: headline metrics, per class, per slice."""
  keys = ("accuracy", "macro_f1", "entity_f1", "entity_precision", "entity_recall",
          "token_accuracy", "loss", "ece", "num_examples", "reward_accuracy", "spearman",
          "num_pairs")
  retrieval = [k for k in result if re.match(r"^(recall|hit|mrr|ndcg)@\d+$", k)]
  lines = [f"{result['split']} @ {result['checkpoint']} (step {result['step']}): "
           + ", ".join(f"{k} {_number(result[k])}" for k in (*keys, *retrieval) if k in result)]
  per_class = result.get("per_class")
  if per_class:
    labels = result.get("label_names") or [str(i) for i in range(len(per_class["f1"]))]
    width = max(len("class"), *(len(str(l)) for l in labels))
    lines.append(f"  {'class':<{width}}  precision  recall      f1  support")
    for i, label in enumerate(labels):
      lines.append(f"  {label:<{width}}  {per_class['precision'][i]:9.4f}  {per_class['recall'][i]:6.4f}"
                   f"  {per_class['f1'][i]:6.4f}  {per_class['support'][i]:7d}")
  per_type = result.get("per_type")  # token classification: entities per type
  if per_type:
    width = max(len("entity"), *(len(k) for k in per_type))
    lines.append(f"  {'entity':<{width}}  precision  recall      f1  support")
    for kind, m in per_type.items():
      lines.append(f"  {kind:<{width}}  {m['precision']:9.4f}  {m['recall']:6.4f}"
                   f"  {m['f1']:6.4f}  {m['support']:7d}")
  slices = result.get("slices")
  if isinstance(slices, dict) and slices:
    width = max(len("slice"), *(len(n) for n in slices))
    lines.append(f"  {'slice':<{width}}  accuracy  macro_f1    loss  examples")
    for name, m in slices.items():
      lines.append(f"  {name:<{width}}  {m['accuracy']:8.4f}  {m['macro_f1']:8.4f}"
                   f"  {m['loss']:6.4f}  {m['num_examples']:8d}")
  return "\n".join(lines)
