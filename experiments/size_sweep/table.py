"""Prints the size-sweep table from the workdirs' metrics.jsonl.

  bash experiments/size_sweep/run.sh && python experiments/size_sweep/table.py

Train accuracy is the mean accuracy of the training batches over the last 50 steps (the model
as it trains, dropout on); early stopping is replayed on the eval history with
`ftjax.early_stopping.EarlyStopping` (metric val accuracy, patience 2 evaluations).
"""

import json
import pathlib

from ftjax.early_stopping import EarlyStopping

RUNS = {"100": "runs/size_sweep/n100", "1,000": "runs/size_sweep/n1000", "all (10,505)": "runs/methods/full"}


def main():
  print("| train examples | val acc step 0 | best val acc (step) | final val acc (step 400) | "
        "train acc, last 50 steps | val loss best / final | early stopping (patience 2) |")
  print("|---|---|---|---|---|---|---|")
  for label, workdir in RUNS.items():
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not (pathlib.Path(workdir) / "summary.json").exists():
      continue  # not run, or still running
    records = [json.loads(line) for line in path.read_text().splitlines()]
    evals = [r for r in records if r["split"] == "eval"]
    train = [r for r in records if r["split"] == "train" and r["step"] > evals[-1]["step"] - 50]
    best = max(evals, key=lambda r: (r["accuracy"], -r["step"]))
    stopper = EarlyStopping("accuracy", "max", patience=2)
    stop = None
    for r in evals:
      stopper.update(r)
      if stopper.should_stop and stop is None:
        stop = r["step"]
    stopped = (f"stops at step {stop} (best {stopper.best['accuracy']:.4f} at "
               f"{stopper.best['step']}), {400 - stop} steps saved" if stop else "does not stop")
    train_acc = sum(r["accuracy"] for r in train) / max(len(train), 1)
    print(f"| {label} | {evals[0]['accuracy']:.4f} | {best['accuracy']:.4f} ({best['step']}) | "
          f"{evals[-1]['accuracy']:.4f} | {train_acc:.4f} | {best['loss']:.3f} / {evals[-1]['loss']:.3f} | "
          f"{stopped} |")


if __name__ == "__main__":
  main()
