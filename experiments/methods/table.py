"""Prints the methods table from runs/methods/METHOD/summary.json and METHOD.time.txt.

  bash experiments/methods/run.sh "full lora linear_probe"  &&  python experiments/methods/table.py
"""

import json
import pathlib
import re

RUNS = pathlib.Path("runs/methods")


def peak_rss_mib(path: pathlib.Path):
  if not path.exists():
    return None
  match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", path.read_text())
  return int(match.group(1)) / 1024 if match else None


def main():
  print("| method | val acc (best) | test acc | trainable params | step time (s) | peak RSS (MiB) | wall (s) |")
  print("|---|---|---|---|---|---|---|")
  for summary_path in sorted(RUNS.glob("*/summary.json")):
    method = summary_path.parent.name
    s = json.loads(summary_path.read_text())
    step_time = s["train_time_sec"] / s["steps"] if s.get("train_time_sec") else float("nan")
    rss = peak_rss_mib(RUNS / f"{method}.time.txt")
    print(f"| {method} | {s['best_eval']['accuracy']:.4f} (step {s['best_step']}) | "
          f"{s['test']['accuracy']:.4f} | {s['params']['trainable']:,} | {step_time:.3f} | "
          f"{rss:.0f} | {s['wall_time_sec']:.0f} |" if rss else "")


if __name__ == "__main__":
  main()
