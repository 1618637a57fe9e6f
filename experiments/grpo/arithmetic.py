"""GRPO on seeded arithmetic problems: held-out accuracy of SmolLM2-135M-Instruct before and after.

  python experiments/grpo/arithmetic.py --workdir /tmp/ftjax_grpo [--variant grpo|dapo|dr_grpo]
      [--config.KEY=VALUE ...]

1. Trains `configs/grpo_arithmetic.py[:variant]` (reward: exact answer + 0.2 x reply-is-a-number;
   the best checkpoint by greedy validation accuracy; the trainer reads the test split once, on it).
2. Scores the base model (step 0), the best checkpoint (by validation accuracy) and the last one
   on the test split, problem by problem (greedy, the trainer's own generation eval), so the
   table pairs them: accuracy with 95% Wilson intervals, the share of replies that are a number
   alone, and how many problems flipped each way from the base. When the best checkpoint is the
   base, the last one is the trained policy's "after" (the test split is then read for it too).
Writes `results.json` and `results.md` into the workdir; an existing run is reused.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from ftjax import config as config_lib  # pylint: disable=wrong-import-position
from ftjax import metrics  # pylint: disable=wrong-import-position
from ftjax import train  # pylint: disable=wrong-import-position
from ftjax.train.batches import stop_token_ids  # pylint: disable=wrong-import-position




def _number_only_share(per_prompt) -> float:
  """The share of replies that are a number and nothing else (the `format` reward's default)."""
  pattern = re.compile(config_lib.base_config().objective.grpo.format_pattern, re.DOTALL)
  return sum(pattern.fullmatch(p["completion"]) is not None for p in per_prompt) / len(per_prompt)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--variant", default="grpo")
  args, overrides = parser.parse_known_args()
  overrides = [o.removeprefix("--config.") for o in overrides]
  workdir = pathlib.Path(args.workdir)
  cfg = config_lib.load_config(f"{REPO}/configs/grpo_arithmetic.py:{args.variant}", overrides)
  summary_file = workdir / "summary.json"
  if summary_file.exists() and not json.loads(summary_file.read_text()).get("preempted"):
    summary = json.loads(summary_file.read_text())
  else:
    summary = train.train_and_evaluate(cfg, str(workdir))
    if summary.get("preempted"):
      sys.exit("preempted: rerun the same command to resume")

  exp = train.build_experiment(cfg, optimizer=False)
  split = cfg.data.test_split
  scored = {}
  stops = stop_token_ids(exp)
  for label in ("base", "best", "latest"):
    state, step = train.restore_state(exp, str(workdir), label)
    scored[label] = exp.task.eval_generations(train.Policy(exp, state, stops), exp.dataset, split,
                                              cfg.eval.batch_size, per_prompt=True)
    scored[label]["step"] = step
  n = scored["base"]["num_prompts"]
  right = {k: [p["exact_answer"] == 1.0 for p in v["per_prompt"]] for k, v in scored.items()}
  flips = {label: {"to right": sum(not b and t for b, t in zip(right["base"], right[label])),
                   "to wrong": sum(b and not t for b, t in zip(right["base"], right[label]))}
           for label in ("best", "latest")}
  rows = []
  for label in ("base", "best", "latest"):
    k = sum(right[label])
    rows.append({"checkpoint": label, "step": scored[label]["step"], "correct": k, "n": n,
                 "accuracy": k / n, "ci95": metrics.wilson_interval(k, n),
                 "format": _number_only_share(scored[label]["per_prompt"]),
                 "completion_length": scored[label]["completion_length"]})
  results = {"config": f"configs/grpo_arithmetic.py:{args.variant}", "overrides": overrides,
             "rows": rows, "flips": flips, "train_time_sec": summary["train_time_sec"],
             "wall_time_sec": summary["wall_time_sec"], "best_eval": summary["best_eval"],
             "initial_eval": summary["initial_eval"], "trainer_test": summary["test"],
             "examples": {label: scored[label]["per_prompt"][:8] for label in scored}}
  (workdir / "results.json").write_text(json.dumps(results, indent=2))
  lines = [f"GRPO `{args.variant}` on `arithmetic` (test split, n={n}, greedy)", "",
           "| checkpoint | step | accuracy (95% Wilson) | reply is a number | completion tokens |",
           "|---|---:|---|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['checkpoint']} | {r['step']} | {r['accuracy']:.3f} "
                 f"({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}) | {r['format']:.3f} | "
                 f"{r['completion_length']:.1f} |")
  lines += ["", "Problems flipped from the base: " + "; ".join(
      f"{label} {f['to right']} to right, {f['to wrong']} to wrong" for label, f in flips.items())
            + ". "
            f"Validation accuracy {summary['initial_eval']['accuracy']:.3f} (step 0) -> "
            f"{summary['best_eval']['accuracy']:.3f} (best, step {summary['best_eval']['step']}); "
            f"train time {summary['train_time_sec'] / 60:.1f} min, wall {summary['wall_time_sec'] / 60:.1f} min."]
  (workdir / "results.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
