#!/usr/bin/env bash
# One command per method: MiniLM on Rotten Tomatoes under the quickstart's identical budget
# (400 steps of batch 32, same schedule shape, seed and data order). Writes
# runs/methods/METHOD/{summary.json,time.txt}; `python experiments/methods/table.py` prints the table.
set -euo pipefail
cd "$(dirname "$0")/../.."
# The quickstart's budget when the table was measured (before its recipe search of 2026-12-07).
BUDGET=(--config.train.steps=400 --config.data.group_by_length=0 --config.optimizer.head_lr=0
        --config.eval.every_steps=100 --config.checkpoint.every_steps=200)
for method in "${@:-full lora linear_probe}"; do
  for m in $method; do
    /usr/bin/time -v -o "runs/methods/$m.time.txt" \
      python -m ftjax.main --config "configs/quickstart.py:$m" --workdir "runs/methods/$m" \
        "${BUDGET[@]}"
  done
done
