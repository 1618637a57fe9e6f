"""End-of-training report: `WORKDIR/report.md` with PNG plots, built from the workdir's files only.

  python -m ftjax.report --workdir runs/quickstart

Reads `metrics.jsonl`, `summary.json`, any `eval_<split>_<checkpoint>.json` (written by
`ftjax.evaluate`) and `data_report.md`, so it works after the fact on any finished run. Writes
`report.md`, `report_loss.png`, `report_metrics.png`, and, when an eval JSON holds them,
`report_confusion_<split>.png` and `report_calibration_<split>.png`.
"""

from __future__ import annotations

import json
import math
import re

from etils import epath
import numpy as np

from ftjax.reports import data_quality
from ftjax.metric_writers import read_metrics
from ftjax.paths import as_path, is_local

REPORT_FILE = "report.md"
# Metrics shown in tables and plotted, in this order, when a run has them.
TABLE_METRICS = ("accuracy", "macro_f1", "loss", "ece", "perplexity", "token_accuracy",
                 "reward_accuracy", "spearman", "entity_f1", "macro_entity_f1")
_RETRIEVAL_METRIC = re.compile(r"^(recall|mrr|ndcg)@(\d+)$")  # the embedding objective's
_NOT_PLOTTED = ("step", "split", "num_examples", "lr", "grad_norm", "examples_per_sec",
                "tokens_per_sec", "loss", "num_tokens", "num_pairs", "num_queries",
                "queries_without_relevant", "corpus_size", "num_graded_pairs")
_EVAL_FILE = re.compile(r"^eval_(?P<split>.+)_(?P<checkpoint>[^_]+)\.json$")
_CHECKPOINT_PREFERENCE = ("best", "final", "latest")


def _figure(width=6.4, height=4.0):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top  (Agg, no pyplot state)
  return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig, path: epath.Path) -> None:
  with path.open("wb") as f:  # through epath: the workdir may be `gs://`
    fig.savefig(f, format="png")


def _number(value) -> float | None:
  try:
    value = float(value)
  except (TypeError, ValueError):
    return None
  return value if math.isfinite(value) else None


def load_evals(workdir: epath.Path) -> list[dict]:
  """Every `eval_<split>_<checkpoint>.json` in the workdir, ordered by split then step."""
  out = []
  for path in sorted(workdir.glob("eval_*.json")):
    if not _EVAL_FILE.match(path.name):
      continue
    try:
      result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
      continue
    if isinstance(result, dict) and "split" in result:
      out.append({**result, "file": path.name})
  return sorted(out, key=lambda r: (r["split"], r.get("step", 0), r["file"]))


def pick_eval(evals: list[dict], split: str) -> dict | None:
  """The result to show for a split: best, then final, then latest, then the highest step."""
  candidates = [r for r in evals if r["split"] == split and "confusion" in r]
  for name in _CHECKPOINT_PREFERENCE:
    for r in candidates:
      if r.get("checkpoint") == name:
        return r
  candidates = [r for r in candidates if r.get("checkpoint") != "base"] or candidates
  return max(candidates, key=lambda r: r.get("step", 0)) if candidates else None


def plot_loss(records: list[dict], path: epath.Path) -> bool:
  fig = _figure()
  ax = fig.add_subplot()
  plotted = False
  for split, style in (("train", dict(color="tab:blue", alpha=0.8, lw=1.2)),
                       ("eval", dict(color="tab:orange", marker="o", lw=1.8))):
    points = [(r["step"], _number(r.get("loss"))) for r in records if r["split"] == split]
    points = [(s, v) for s, v in points if v is not None]
    if points:
      ax.plot(*zip(*points), label=f"{split} loss", **style)
      plotted = True
  if not plotted:
    return False
  ax.set(xlabel="step", ylabel="loss", title="Loss")
  ax.grid(alpha=0.3)
  ax.legend()
  _save(fig, path)
  return True


def plot_metrics(records: list[dict], path: epath.Path) -> bool:
  evals = [r for r in records if r["split"] == "eval"]
  names = [k for k in TABLE_METRICS if k not in _NOT_PLOTTED and any(k in r for r in evals)]
  names += sorted({k for r in evals for k in r if k not in names and k not in _NOT_PLOTTED
                   and "/" not in k and _number(r[k]) is not None})
  if not names:
    return False
  fig = _figure(width=4.2 * min(len(names), 3), height=3.6 * math.ceil(len(names) / 3))
  for i, name in enumerate(names):
    ax = fig.add_subplot(math.ceil(len(names) / 3), min(len(names), 3), i + 1)
    train = [(r["step"], _number(r.get(name))) for r in records if r["split"] == "train"]
    train = [(s, v) for s, v in train if v is not None]
    if train:
      ax.plot(*zip(*train), color="tab:blue", alpha=0.5, lw=1, label="train (batch)")
    points = [(r["step"], _number(r.get(name))) for r in evals]
    points = [(s, v) for s, v in points if v is not None]
    if points:
      ax.plot(*zip(*points), color="tab:orange", marker="o", lw=1.8, label="eval")
    ax.set(xlabel="step", title=name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  _save(fig, path)
  return True


def plot_confusion(result: dict, path: epath.Path) -> None:
  confusion = np.asarray(result["confusion"], np.float64)
  labels = result.get("label_names") or [str(i) for i in range(len(confusion))]
  rows = confusion.sum(1, keepdims=True)
  share = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
  size = max(3.6, 0.7 * len(labels) + 2.2)
  fig = _figure(width=size + 0.8, height=size)
  ax = fig.add_subplot()
  image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
  fig.colorbar(image, ax=ax, label="share of true class", shrink=0.8)
  ticks = range(len(labels))
  ax.set_xticks(ticks, labels, rotation=45 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
  ax.set_yticks(ticks, labels)
  ax.set(xlabel="predicted", ylabel="true",
         title=f"Confusion: {result['split']} @ {result.get('checkpoint')} (step {result.get('step')})")
  if len(labels) <= 20:
    for t in ticks:
      for p in ticks:
        ax.text(p, t, f"{int(confusion[t, p])}\n{share[t, p]:.0%}", ha="center", va="center",
                fontsize=9, color="white" if share[t, p] > 0.5 else "black")
  _save(fig, path)


def plot_calibration(result: dict, path: epath.Path) -> bool:
  bins = result.get("calibration")
  if not bins or not sum(bins["count"]):
    return False
  edges = np.asarray(bins["bin_upper_edges"])
  width = edges[0]
  centers = edges - width / 2
  used = np.asarray(bins["count"]) > 0
  fig = _figure(width=4.8, height=4.4)
  ax = fig.add_subplot()
  ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="perfect calibration")
  ax.bar(centers[used], np.asarray(bins["accuracy"])[used], width=width * 0.9, color="tab:blue",
         alpha=0.7, label="accuracy in bin")
  ax.plot(np.asarray(bins["confidence"])[used], np.asarray(bins["accuracy"])[used], "o",
          color="tab:orange", label="(mean confidence, accuracy)")
  ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
         title=f"Calibration: {result['split']} (ECE {result.get('ece', float('nan')):.3f})")
  ax.legend(fontsize="small", loc="upper left")
  _save(fig, path)
  return True


def _cell(value) -> str:
  value = _number(value)
  return "-" if value is None else f"{value:.4f}"


def _matching_eval(evals, split, step=None, checkpoints=(), prefer=None) -> dict | None:
  """The eval JSON of `split` at `step` (or of one of `checkpoints`).

  When the final and best steps coincide, both JSONs match by step: `prefer` (the row's own
  checkpoint name) keeps each row on its own file, so neither reappears as an extra row.
  """
  found = [r for r in evals
           if r["split"] == split and (r.get("step") == step or r.get("checkpoint") in checkpoints)]
  return next((r for r in found if r.get("checkpoint") == prefer), found[0] if found else None)


def comparison_rows(summary: dict, evals: list[dict]) -> list[tuple[str, str, dict]]:
  """(what, split, metrics) rows: base vs final vs best vs test, then the other eval JSONs.

  A summary row is completed by the eval JSON of the same split and step when there is one
  (that adds macro-F1 and ECE, which metrics.jsonl and summary.json may lack).
  """
  rows, used = [], set()
  eval_split, test_split = summary.get("eval_split", "eval"), summary.get("test_split", "test")
  for what, key in (("base", "initial_eval"), ("final", "final_eval"), ("best", "best_eval")):
    record = summary.get(key)
    if record:
      match = _matching_eval(evals, eval_split, record.get("step"), prefer=what)
      if match:
        used.add(match["file"])
      rows.append((f"{what} (step {record.get('step')})", eval_split, {**record, **(match or {})}))
  if summary.get("test"):
    test = summary["test"]
    step = test.get("step", summary.get("test_step"))
    match = _matching_eval(evals, test_split, step, ("best",) if step is None else ())
    if match:
      used.add(match["file"])
      step = match.get("step")
    label = "test" + (f" (step {step})" if step is not None else "")
    rows.append((label, test_split, {**test, **(match or {})}))
  for r in evals:
    if r["file"] not in used:
      rows.append((f"{r.get('checkpoint')} (step {r.get('step')})", r["split"], r))
  return rows


def headline(rows, metric: str) -> str | None:
  """One sentence: the metric of the base model versus the best (or final) fine-tuned one."""
  base = next((m for what, _, m in rows if what.startswith("base")), None)
  tuned = next((m for what, _, m in rows if what.startswith("best")), None) or next(
      (m for what, _, m in rows if what.startswith("final")), None)
  if not base or not tuned or _number(base.get(metric)) is None or _number(tuned.get(metric)) is None:
    return None
  delta = tuned[metric] - base[metric]
  return (f"Fine-tuning moved {metric} on the eval split from {base[metric]:.4f} (base) to "
          f"{tuned[metric]:.4f} (step {tuned.get('step')}), {delta:+.4f}.")


def comparison_table(rows) -> list[str]:
  names = [k for k in TABLE_METRICS if any(k in m for _, _, m in rows)]
  retrieval = {k: _RETRIEVAL_METRIC.match(k) for _, _, m in rows for k in m}
  names += sorted((k for k, match in retrieval.items() if match), key=lambda k: (
      ("recall", "mrr", "ndcg").index(retrieval[k][1]), int(retrieval[k][2])))
  lines = ["| model | split | " + " | ".join(names) + " | examples |",
           "|---|---|" + "---:|" * (len(names) + 1)]
  for what, split, m in rows:
    count = m.get("num_examples", m.get("num_pairs", "-"))
    lines.append(f"| {what} | {split} | " + " | ".join(_cell(m.get(k)) for k in names)
                 + f" | {count} |")
  return lines


def _per_class_table(result: dict) -> list[str]:
  per_class = result["per_class"]
  labels = result.get("label_names") or per_class.get("label") or [str(i) for i in range(len(per_class["f1"]))]
  lines = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
  for i, label in enumerate(labels):
    lines.append(f"| {label} | {per_class['precision'][i]:.4f} | {per_class['recall'][i]:.4f} | "
                 f"{per_class['f1'][i]:.4f} | {per_class['support'][i]} |")
  return lines


def _slice_table(result: dict) -> list[str]:
  lines = ["| slice | examples | accuracy | macro F1 | loss | ECE |", "|---|---:|---:|---:|---:|---:|"]
  for name, m in result["slices"].items():
    lines.append(f"| {name} | {m['num_examples']} | {_cell(m.get('accuracy'))} | "
                 f"{_cell(m.get('macro_f1'))} | {_cell(m.get('loss'))} | {_cell(m.get('ece'))} |")
  return lines


def _run_lines(summary: dict) -> list[str]:
  if not summary:
    return ["No `summary.json` yet: the run has not finished."]
  params = summary.get("params") or {}
  facts = [f"method `{summary.get('method')}`", f"{summary.get('steps')} steps"]
  if params:
    facts.append(f"{params.get('trainable', 0):,} of {params.get('total', 0):,} parameters trained")
  if _number(summary.get("examples_per_sec")):
    facts.append(f"{summary['examples_per_sec']:.1f} examples/s")
  if _number(summary.get("wall_time_sec")):
    facts.append(f"wall time {summary['wall_time_sec'] / 60:.1f} min")
  if summary.get("best_step") is not None:
    facts.append(f"best step {summary['best_step']} by `{summary.get('best_metric')}`")
  return ["Run: " + ", ".join(facts) + "."]


def plots(workdir) -> dict[str, epath.Path]:
  """The report's PNGs by name ("loss", "confusion_test", ...), for experiment trackers."""
  return {p.name[len("report_"):-len(".png")]: p
          for p in sorted(as_path(workdir).glob("report_*.png"))}


def write(workdir) -> epath.Path:
  """Writes `WORKDIR/report.md` and its PNGs from the workdir's files; returns the report path."""
  workdir = as_path(workdir)
  records = read_metrics(workdir)
  summary_path = workdir / "summary.json"
  summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
  config_path = workdir / "config.json"
  config = json.loads(config_path.read_text()) if config_path.exists() else {}
  data_cfg = config.get("data", {})
  summary.setdefault("eval_split", data_cfg.get("eval_split", "eval"))
  summary.setdefault("test_split", data_cfg.get("test_split") or "test")
  evals = load_evals(workdir)

  title = (workdir.resolve() if is_local(workdir) else workdir).name
  lines = [f"# Report: {title}", ""] + _run_lines(summary if summary_path.exists() else {}) + [""]
  rows = comparison_rows(summary, evals)
  lines += ["## Base versus fine-tuned", ""] + comparison_table(rows) + [""]
  sentence = headline(rows, summary.get("best_metric") or "accuracy")
  if sentence:
    lines += [sentence, ""]
  if not evals:
    lines += ["Per-class scores, confusion matrices and slices come from eval files: run "
              "`python -m ftjax.evaluate --config CFG --workdir DIR --checkpoint best` "
              "(and `--split test`), then rebuild this report.", ""]

  lines += ["## Curves", ""]
  if plot_loss(records, workdir / "report_loss.png"):
    lines += ["![loss](report_loss.png)", ""]
  if plot_metrics(records, workdir / "report_metrics.png"):
    lines += ["![metrics](report_metrics.png)", ""]
  if not records:
    lines += ["No `metrics.jsonl` records.", ""]

  splits = list(dict.fromkeys([summary["eval_split"], summary["test_split"]] + [r["split"] for r in evals]))
  for split in splits:
    result = pick_eval(evals, split)
    if result is None:
      continue
    lines += [f"## {split} @ {result.get('checkpoint')} (step {result.get('step')})", "",
              f"From `{result['file']}`: accuracy {_cell(result.get('accuracy'))}, macro-F1 "
              f"{_cell(result.get('macro_f1'))}, ECE {_cell(result.get('ece'))}, "
              f"{result.get('num_examples')} examples.", ""]
    if "per_class" in result:
      lines += _per_class_table(result) + [""]
    plot_confusion(result, workdir / f"report_confusion_{split}.png")
    lines += [f"![confusion {split}](report_confusion_{split}.png)", ""]
    if plot_calibration(result, workdir / f"report_calibration_{split}.png"):
      lines += [f"![calibration {split}](report_calibration_{split}.png)", ""]
    if isinstance(result.get("slices"), dict) and result["slices"]:
      lines += ["Slices:", ""] + _slice_table(result) + [""]

  data_md = workdir / data_quality.MARKDOWN_FILE
  if data_md.exists():
    lines += [data_md.read_text().rstrip(), ""]
  path = workdir / REPORT_FILE
  path.write_text("\n".join(lines).rstrip() + "\n")
  return path
