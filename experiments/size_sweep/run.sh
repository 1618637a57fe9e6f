#!/usr/bin/env bash
# Training-set-size sweep: the quickstart (MiniLM, full fine-tuning, 400 steps of batch 32) on a
# deterministic subset of 100 and 1,000 training snippets (the full-data row is the quickstart),
# evaluating every 50 steps to see where overfitting starts and what early stopping saves.
set -euo pipefail
cd "$(dirname "$0")/../.."
# The quickstart's budget when the table was measured (before its recipe search of 2026-12-07).
BUDGET=(--config.train.steps=400 --config.data.group_by_length=0 --config.optimizer.head_lr=0
        --config.eval.every_steps=100 --config.checkpoint.every_steps=200)
for n in ${@:-100 1000}; do
  python -m ftjax.main --config configs/quickstart.py --workdir "runs/size_sweep/n$n" "${BUDGET[@]}" \
    --config.data.max_train_examples="$n" --config.eval.every_steps=50 --config.checkpoint.every_steps=400
done
