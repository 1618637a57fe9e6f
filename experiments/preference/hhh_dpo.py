"""DPO on BIG-bench's HHH pairs: held-out preference accuracy before and after, by category.

  python experiments/preference/hhh_dpo.py --workdir /tmp/ftjax_hhh [--variant sigmoid] [--steps N]

Trains `configs/dpo_hhh.py` (SmolLM2-135M-Instruct, LoRA, DPO) with the trainer, model selection
on the validation split only (its test split is switched off in the run), then reads the test
split once and scores every pair with the base model (step 0) and the best checkpoint:

* `logp accuracy`: the model gives the chosen reply the higher mean per-token log-prob
  (reference-free, so it scores the base model too);
* `reward accuracy` (trained model only): DPO's implicit reward beta * (log pi - log pi_ref)
  is higher for the chosen reply (the base has reward 0 for both: a tie, counted wrong).

Each with a 95% Wilson interval, per category and overall; the paired change of logp accuracy
(pairs that flipped right / wrong) is printed too. Writes `hhh_results.json` and
`hhh_results.md` into the workdir.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys
import time

import jax
import numpy as np
from flax import nnx

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from ftjax import config as config_lib  # pylint: disable=wrong-import-position
from ftjax import metrics  # pylint: disable=wrong-import-position
from ftjax import sharding, train  # pylint: disable=wrong-import-position
from ftjax.tasks import preference  # pylint: disable=wrong-import-position




def score_split(exp, state, split: str) -> dict[str, np.ndarray]:
  """Per pair: policy and reference reply log-probs [N, 2] and reply token counts [N, 2]."""
  objective = exp.task

  @jax.jit
  def per_pair(state, batch):
    model = nnx.merge(exp.graphdef, state.params, state.frozen)
    reference = nnx.merge(exp.graphdef, state.reference, state.frozen)
    logps, counts, _ = preference.reply_logps(model, batch, logits_chunk=objective.logits_chunk)
    ref, _, _ = preference.reply_logps(reference, batch, logits_chunk=objective.logits_chunk)
    return logps, counts, ref

  out = collections.defaultdict(list)
  batch_sharding = sharding.batch_sharding(exp.mesh)
  for local in exp.dataset.eval_batches(split, exp.cfg.eval.batch_size):
    real = np.asarray(local["weights"]) > 0
    logps, counts, ref = jax.device_get(per_pair(state, sharding.put_batch(local, batch_sharding)))
    out["logps"].append(logps[real])
    out["counts"].append(counts[real])
    out["ref"].append(ref[real])
  return {k: np.concatenate(v) for k, v in out.items()}


def summarize(base: dict, tuned: dict, categories: list[str], beta: float) -> dict:
  mean = lambda s: s["logps"] / np.maximum(s["counts"], 1)
  right = {
      "base logp accuracy": mean(base)[:, 0] > mean(base)[:, 1],
      "tuned logp accuracy": mean(tuned)[:, 0] > mean(tuned)[:, 1],
      "tuned reward accuracy": (beta * (tuned["logps"] - tuned["ref"]) @ np.array([1, -1])) > 0,
  }
  rows = {}
  for group in sorted(set(categories)) + ["all"]:
    members = np.array([group in ("all", c) for c in categories])
    n = int(members.sum())
    row = {"pairs": n}
    for name, hits in right.items():
      k = int(hits[members].sum())
      row[name] = {"correct": k, "accuracy": k / max(n, 1), "ci95": metrics.wilson_interval(k, n)}
    b, t = right["base logp accuracy"][members], right["tuned logp accuracy"][members]
    row["logp flips"] = {"to right": int((~b & t).sum()), "to wrong": int((b & ~t).sum())}
    rows[group] = row
  return rows


def markdown(rows: dict, header: str) -> str:
  lines = [header, "", "| category | pairs | base logp acc. | tuned logp acc. | tuned reward acc. | "
           "logp flips (to right / to wrong) |", "|---|---:|---|---|---|---|"]
  cell = lambda r: f"{r['accuracy']:.3f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"
  for group, r in rows.items():
    lines.append(f"| {group} | {r['pairs']} | {cell(r['base logp accuracy'])} | "
                 f"{cell(r['tuned logp accuracy'])} | {cell(r['tuned reward accuracy'])} | "
                 f"{r['logp flips']['to right']} / {r['logp flips']['to wrong']} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", default="/tmp/ftjax_hhh")
  parser.add_argument("--variant", default="sigmoid", help="objective.preference.loss")
  parser.add_argument("--steps", type=int, default=0, help="override train.steps (0: the config's)")
  parser.add_argument("--score_only", action="store_true",
                      help="score the workdir's best checkpoint so far; no training")
  args = parser.parse_args()
  cfg = config_lib.load_config(f"{REPO}/configs/dpo_hhh.py:{args.variant}")
  with cfg.unlocked():
    test_split, cfg.data.test_split = cfg.data.test_split, ""  # read once, below
    if args.steps:
      cfg.train.steps = args.steps
  config_lib.validate(cfg)
  start = time.time()
  summary = {} if args.score_only else train.train_and_evaluate(cfg, args.workdir)
  train_seconds = time.time() - start

  exp = train.build_experiment(cfg, optimizer=False)
  best, best_step = train.restore_state(exp, args.workdir, "best")
  categories = [p["category"] for p in exp.dataset.pairs(test_split)]
  base_scores = score_split(exp, exp.state, test_split)  # step 0: the untouched base
  tuned_scores = score_split(exp, best, test_split)
  rows = summarize(base_scores, tuned_scores, categories, cfg.objective.preference.beta)
  header = (f"DPO ({args.variant}, beta {cfg.objective.preference.beta}) on HHH: "
            f"{exp.dataset.split_sizes} pairs, best step {best_step} of {cfg.train.steps} by "
            f"validation reward accuracy"
            + ("" if args.score_only else f"; {train_seconds / 60:.1f} min of training and evals"))
  result = {"variant": args.variant, "best_step": best_step, "split_sizes": exp.dataset.split_sizes,
            "train_seconds": train_seconds, "initial_eval": summary.get("initial_eval"),
            "final_eval": summary.get("final_eval"), "test": rows,
            "truncated": exp.dataset.truncated, "devices": jax.devices()[0].device_kind}
  workdir = pathlib.Path(args.workdir)
  (workdir / "hhh_results.json").write_text(json.dumps(result, indent=1))
  text = markdown(rows, header)
  (workdir / "hhh_results.md").write_text(text)
  print(text)


if __name__ == "__main__":
  main()
