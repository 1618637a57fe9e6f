"""The code assistant, one command: fine-tune, then HumanEval before and after.

  python experiments/code_assistant/run.py --workdir runs/code_smollm2 [--limit N]

Trains `configs/code_smollm2.py` (skipped when the workdir already holds a finished run), then
runs `ftjax.code_eval` on the untouched base and on the best checkpoint (chosen on validation
perplexity), and writes `results.md` in the workdir: validation and test perplexity, HumanEval
pass@1 with 95% Wilson intervals, and the times.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--limit", type=int, default=0, help="HumanEval problems (0: all 164)")
  parser.add_argument("--max_new_tokens", type=int, default=256)
  args = parser.parse_args()
  workdir = pathlib.Path(args.workdir)
  times = {}
  if not (workdir / "summary.json").exists():
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ftjax.main", "--config",
                    str(ROOT / "configs" / "code_smollm2.py"), "--workdir", str(workdir)],
                   check=True, cwd=ROOT)
    times["train_s"] = time.perf_counter() - start
  summary = json.loads((workdir / "summary.json").read_text())
  rows = []
  for checkpoint in ("base", "best"):
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ftjax.code_eval", "--workdir", str(workdir),
                    "--checkpoint", checkpoint, "--limit", str(args.limit),
                    "--max_new_tokens", str(args.max_new_tokens)], check=True, cwd=ROOT)
    times[f"humaneval_{checkpoint}_s"] = time.perf_counter() - start
    rows.append(json.loads((workdir / f"humaneval_{checkpoint}.json").read_text()))
  initial, best = summary["initial_eval"], summary.get("best_eval") or summary["final_eval"]
  test = summary.get("test", {})
  lines = ["| checkpoint | step | validation perplexity | test perplexity | HumanEval pass@1 "
           "(95% Wilson) |", "|---|---:|---:|---:|---|"]
  for row, val, tst in ((rows[0], initial, {}), (rows[1], best, test)):
    low, high = row["ci95"]
    test_ppl = f"{tst['perplexity']:.3f}" if tst else "(not read)"  # read once, on the best
    lines.append(f"| {row['checkpoint']} | {row['step']} | {val['perplexity']:.3f} | "
                 f"{test_ppl} | {row['pass@1']:.3f} "
                 f"({row['passed']}/{row['n']}; {low:.3f}-{high:.3f}) |")
  lines += ["", "Times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items())]
  (workdir / "results.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
