"""The quickstart's recipe search, on the validation split only (the test split is never read).

  python experiments/quickstart/search.py --out runs/quickstart_search [--only NAME ...]

Runs each candidate of `CANDIDATES` (overrides of configs/quickstart.py) with the test split
switched off, and appends one JSON row per run to OUT/results.jsonl: the validation accuracy of
every eval, the best one and its step, and the wall time of the whole command (fresh workdir;
the data cache is shared, so only the first run builds it). `--table` prints the rows as
Markdown. The chosen recipe becomes configs/quickstart.py, whose test accuracy is then measured
once by the README's command.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]

# name -> overrides of configs/quickstart.py (as of the search: 400 steps of batch 32, lr 1e-4,
# linear decay, eval every 100 steps). The grid varies what the issue names: steps, learning
# rate, length grouping (faster steps) and evaluation cadence.
CANDIDATES = {
    "g0_s400_lr1e-4": ["data.group_by_length=0", "train.steps=400", "optimizer.lr=1e-4"],
    "g16_s400_lr1e-4": ["data.group_by_length=16", "train.steps=400", "optimizer.lr=1e-4"],
    "g16_s300_lr1e-4": ["data.group_by_length=16", "train.steps=300", "optimizer.lr=1e-4"],
    "g16_s300_lr2e-4": ["data.group_by_length=16", "train.steps=300", "optimizer.lr=2e-4"],
    "g16_s400_lr2e-4": ["data.group_by_length=16", "train.steps=400", "optimizer.lr=2e-4"],
    "g16_s500_lr1e-4": ["data.group_by_length=16", "train.steps=500", "optimizer.lr=1e-4"],
    # The fresh head at a larger rate; layer-wise decay (lower layers move less).
    "g16_s400_lr1e-4_head1e-3": ["data.group_by_length=16", "train.steps=400",
                                 "optimizer.lr=1e-4", "optimizer.head_lr=1e-3"],
    "g16_s400_lr2e-4_decay0.8": ["data.group_by_length=16", "train.steps=400",
                                 "optimizer.lr=2e-4", "optimizer.layer_decay=0.8"],
    "g16_s500_lr1e-4_head1e-3": ["data.group_by_length=16", "train.steps=500",
                                 "optimizer.lr=1e-4", "optimizer.head_lr=1e-3"],
}


def run(name: str, overrides: list[str], out: pathlib.Path) -> dict:
  workdir = out / name
  shutil.rmtree(workdir, ignore_errors=True)
  cmd = [sys.executable, "-m", "ftjax.main", "--config=configs/quickstart.py",
         f"--workdir={workdir}", "--config.data.test_split="] + [f"--config.{o}" for o in overrides]
  start = time.time()
  with open(out / f"{name}.log", "w") as log:
    proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  wall = time.time() - start
  if proc.returncode:
    raise SystemExit(f"{name} failed (exit {proc.returncode}); see {out / (name + '.log')}")
  summary = json.loads((workdir / "summary.json").read_text())
  evals = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {"name": name, "overrides": overrides, "wall_sec": round(wall, 1),
          "val_accuracy": {r["step"]: round(r["accuracy"], 4) for r in evals if r["split"] == "eval"},
          "best_step": summary["best_step"], "best_val_accuracy": summary["best_eval"]["accuracy"],
          "examples_per_sec": summary["examples_per_sec"], "test": summary["test"]}


def table(rows: list[dict]) -> str:
  lines = ["| candidate | overrides | best val acc (step) | val acc by step | wall s | train ex/s |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    curve = ", ".join(f"{s}: {a:.4f}" for s, a in r["val_accuracy"].items())
    lines.append(f"| {r['name']} | `{' '.join(r['overrides'])}` | {r['best_val_accuracy']:.4f} "
                 f"({r['best_step']}) | {curve} | {r['wall_sec']:.0f} | {r['examples_per_sec']:.1f} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="runs/quickstart_search")
  parser.add_argument("--only", nargs="*", help="candidate names (default: all)")
  parser.add_argument("--table", action="store_true", help="print OUT/results.jsonl as Markdown")
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  results = out / "results.jsonl"
  if args.table:
    print(table([json.loads(l) for l in results.read_text().splitlines()]))
    return
  for name in args.only or CANDIDATES:
    row = run(name, CANDIDATES[name], out)
    assert row["test"] is None, "the search must not read the test split"
    with open(results, "a") as f:
      f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
