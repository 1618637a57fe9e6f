"""Distillation on Rotten Tomatoes: a 3-layer MiniLM student with and without the teacher's logits.

  python experiments/distill/minilm_rt.py --workdir /tmp/ftjax_distill [--steps N]

1. Teacher: `configs/quickstart.py` (all-MiniLM-L6-v2, full fine-tuning), exported as HF.
2. Students, same data, steps, schedule and seed: all-MiniLM-L6-v2 cut to its first 3 layers
   (`model.num_layers=3`) with a fresh head, trained
   - on the labels alone (`configs/distill_minilm.py:labels`), and
   - on the teacher's distribution mixed with the labels (`configs/distill_minilm.py`: forward
     KL at temperature 2, task weight 0.5).
Each run selects its best checkpoint on validation accuracy and reads the test split once, on
that checkpoint (the trainer's own test evaluation). Writes `results.json` and `results.md`
(test accuracy with 95% Wilson intervals, best validation accuracy, the students' divergence
from the teacher on validation, wall time) into the workdir. An existing run is reused.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from ftjax import config as config_lib  # pylint: disable=wrong-import-position
from ftjax import metrics  # pylint: disable=wrong-import-position
from ftjax import export, train  # pylint: disable=wrong-import-position




def run(spec: str, workdir: pathlib.Path, overrides: list[str]) -> dict:
  """The trainer's summary of the run (`summary.json`), training it first unless it exists."""
  summary_file = workdir / "summary.json"
  if summary_file.is_file():
    print(f"reusing {workdir}", flush=True)
  else:
    train.train_and_evaluate(config_lib.load_config(spec, overrides), str(workdir))
  if not summary_file.is_file():  # preempted: the checkpoint is there, a rerun resumes it
    sys.exit(f"{workdir} stopped before its end; rerun the same command to resume it")
  return json.loads(summary_file.read_text())


def row(name: str, summary: dict) -> dict:
  test = summary["test"]
  n = int(test["num_examples"])
  return {"run": name, "test_accuracy": test["accuracy"], "test_n": n,
          "test_ci95": metrics.wilson_interval(round(test["accuracy"] * n), n),
          "best_val_accuracy": summary["best_eval"]["accuracy"],
          "best_step": summary["best_step"],
          "val_divergence": summary["best_eval"].get("divergence"),
          "wall_s": summary["wall_time_sec"], "params": summary["params"]["total"]}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--steps", type=int, default=0, help="train.steps of every run (0: config)")
  args = parser.parse_args()
  root = pathlib.Path(args.workdir)
  root.mkdir(parents=True, exist_ok=True)
  steps = [f"train.steps={args.steps}"] if args.steps else []

  teacher = run(str(REPO / "configs/quickstart.py"), root / "teacher", steps)
  teacher_hf = root / "teacher_hf"
  if not (teacher_hf / "config.json").is_file():
    export.export(str(root / "teacher"), str(teacher_hf), "hf", checkpoint="best")
  labels = run(str(REPO / "configs/distill_minilm.py:labels"), root / "student_labels", steps)
  taught = run(str(REPO / "configs/distill_minilm.py"), root / "student_teacher",
               steps + [f"objective.distill.teacher={teacher_hf}"])

  rows = [row("teacher: MiniLM-L6, full FT (quickstart)", teacher),
          row("student: first 3 layers, labels only", labels),
          row("student: first 3 layers, teacher + labels", taught)]
  (root / "results.json").write_text(json.dumps(rows, indent=1))
  lines = ["| run | params | test acc (95% CI) | best val acc (step) | val KL to teacher | wall |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lo, hi = r["test_ci95"]
    div = f"{r['val_divergence']:.4f}" if r["val_divergence"] is not None else "-"
    lines.append(f"| {r['run']} | {r['params'] / 1e6:.1f}M | {r['test_accuracy']:.4f} "
                 f"({lo:.3f}-{hi:.3f}), n={r['test_n']} | {r['best_val_accuracy']:.4f} "
                 f"({r['best_step']}) | {div} | {r['wall_s'] / 60:.1f} min |")
  (root / "results.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
