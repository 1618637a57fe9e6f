"""Sentence embeddings on real pairs: all-MiniLM-L6-v2 before and after contrastive fine-tuning
to retrieve Rotten Tomatoes snippets about the same movie.

  python experiments/embeddings/minilm_rt.py --workdir /tmp/ftjax_embed [--method full]

1. Trains `configs/embed_minilm.py:METHOD` (MNRL, in-batch negatives, same-movie pairs with
   movie-disjoint splits); the trainer keeps the best checkpoint by validation nDCG@10 and reads
   the test split once, on it.
2. Evaluates the untouched base model on the test split (`ftjax.evaluate`, checkpoint `base`).
3. Exports the base and the best checkpoint as sentence-transformers models (`ftjax.export`),
   embeds the test pairs with `SentenceTransformer` (the `test` extra), and compares them query
   by query: each query's reciprocal rank (MRR@10's terms), the mean difference with a paired
   bootstrap 95% interval (10,000 resamples of the queries, seed 0), and how many queries got
   better or worse. The exported models' metrics must equal ftjax's own test evals (checked).
Writes `results.json` into the workdir; an existing run is reused.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from ftjax import config as config_lib  # pylint: disable=wrong-import-position
from ftjax import evaluate, export, retrieval, train  # pylint: disable=wrong-import-position
from ftjax.data import builders  # pylint: disable=wrong-import-position

KEYS = ("hit@1", "recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10", "loss")


def reciprocal_ranks(anchors, positives, groups, depth=10) -> np.ndarray:
  hits, _ = retrieval.first_ranks(anchors, positives, groups, groups, depth)
  first = np.where(hits.any(1), hits.argmax(1), depth)
  return np.where(first < depth, 1.0 / (first + 1), 0.0)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--method", default="full")
  args = parser.parse_args()
  workdir = pathlib.Path(args.workdir)
  spec = str(REPO / "configs" / f"embed_minilm.py:{args.method}")
  cfg = config_lib.load_config(spec)
  if not (workdir / "summary.json").is_file():
    train.train_and_evaluate(cfg, str(workdir))
  summary = json.loads((workdir / "summary.json").read_text())
  base_test = workdir / "eval_test_base.json"
  if not base_test.is_file():
    evaluate.run(cfg, workdir, checkpoint="base", split="test")
  evals = {"base": json.loads(base_test.read_text()),
           "tuned": json.loads((workdir / "eval_test_best.json").read_text())}

  from sentence_transformers import SentenceTransformer  # pylint: disable=g-import-not-at-top
  source = builders.prepare(cfg.data).as_data_source(split="test")
  rows = [source[i] for i in range(len(source))]
  text = lambda v: v.decode() if isinstance(v, bytes) else str(v)
  anchors = [text(r["anchor"]) for r in rows]
  positives = [text(r["positive"]) for r in rows]
  groups = np.unique([text(r["group"]) for r in rows], return_inverse=True)[1]
  rr, checks = {}, {}
  for name, checkpoint in (("base", "base"), ("tuned", "best")):
    out = workdir / f"st_{checkpoint}"
    if not out.is_dir():
      export.export(str(workdir), str(out), "hf", checkpoint=checkpoint)
    model = SentenceTransformer(str(out), device="cpu")
    a, p = model.encode(anchors, batch_size=128), model.encode(positives, batch_size=128)
    rr[name] = reciprocal_ranks(a, p, groups)
    again = retrieval.retrieval_metrics(a, p, groups, groups)
    checks[name] = {k: abs(again[k] - evals[name][k]) for k in ("mrr@10", "ndcg@10", "recall@10")}
    assert max(checks[name].values()) < 1e-3, (name, checks[name])  # the export embeds alike
  diff = rr["tuned"] - rr["base"]
  rng = np.random.default_rng(0)
  boot = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(10_000)])
  result = {
      "method": args.method, "test_queries": int(len(diff)), "best_step": summary["best_step"],
      "wall_s": summary["wall_time_sec"], "train_pairs": summary["split_sizes"]["train"],
      "validation": {"base": {k: summary["initial_eval"][k] for k in KEYS},
                     "best": {k: summary["best_eval"][k] for k in KEYS}},
      "test": {name: {k: evals[name][k] for k in KEYS} for name in evals},
      "paired_mrr@10_difference": {"mean": float(diff.mean()),
                                   "ci95": [float(np.percentile(boot, 2.5)),
                                            float(np.percentile(boot, 97.5))],
                                   "queries_better": int((diff > 0).sum()),
                                   "queries_worse": int((diff < 0).sum()),
                                   "queries_same": int((diff == 0).sum())},
      "export_vs_ftjax_max_abs_diff": checks,
  }
  (workdir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
