"""Sentiment-steered generation with GRPO: the judge's positive rate of SmolLM2's continuations of
Rotten Tomatoes openings, before and after.

  python experiments/grpo/sentiment.py --workdir /tmp/ftjax_sentiment --judge runs/quickstart

1. Writes prompt files (`WORKDIR/prompts/{train,validation,test}.jsonl`): "Continue this movie
   review in one sentence" with a snippet's first 4 words, snippets taken in file order per
   split of the Rotten Tomatoes builder's movie split (600 / 64 / 128 prompts).
2. Trains `configs/grpo_sentiment.py` with the judge (a classification workdir) as the reward.
3. Scores the test prompts' greedy continuations by the base and the best checkpoint: the judge's
   mean P(fresh), the share judged fresh (> 0.5, 95% Wilson), and the mean continuation length.
Writes `results.json` / `results.md`; an existing run is reused.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from ftjax import config as config_lib  # pylint: disable=wrong-import-position
from ftjax import metrics, sources, train  # pylint: disable=wrong-import-position
from ftjax.train.batches import stop_token_ids  # pylint: disable=wrong-import-position
from ftjax.data import rotten_tomatoes  # pylint: disable=wrong-import-position

SIZES = {"train": 600, "validation": 64, "test": 128}
PROMPT = 'Continue this movie review in one sentence: "{opening}'


def write_prompts(folder: pathlib.Path) -> dict[str, str]:
  folder.mkdir(parents=True, exist_ok=True)
  rows = rotten_tomatoes.read_reviews(sources.resolve(rotten_tomatoes.DEFAULT_SOURCE))
  by_split = {split: [] for split in SIZES}
  for row in rows:
    split = rotten_tomatoes.split_of_movie(row["movie_name"])
    words = row["text"].split()
    if len(words) >= 8 and len(by_split[split]) < SIZES[split]:
      by_split[split].append({"prompt": PROMPT.format(opening=" ".join(words[:4]))})
  files = {}
  for split, prompts in by_split.items():
    path = folder / f"{split}.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    files[split] = str(path)
  return files


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--judge", required=True, help="a classification workdir (the quickstart)")
  args, overrides = parser.parse_known_args()
  workdir = pathlib.Path(args.workdir)
  files = write_prompts(workdir.parent / f"{workdir.name}_prompts")
  overrides = [o.removeprefix("--config.") for o in overrides] + [
      f"objective.grpo.reward_model={args.judge}"] + [
      f"data.files.{split}={path}" for split, path in files.items()]
  cfg = config_lib.load_config(f"{REPO}/configs/grpo_sentiment.py", overrides)
  summary_file = workdir / "summary.json"
  if summary_file.exists() and not json.loads(summary_file.read_text()).get("preempted"):
    summary = json.loads(summary_file.read_text())
  else:
    summary = train.train_and_evaluate(cfg, str(workdir))
    if summary.get("preempted"):
      sys.exit("preempted: rerun the same command to resume")
  exp = train.build_experiment(cfg, optimizer=False)
  rows, stops = [], stop_token_ids(exp)
  for label in ("base", "best"):
    state, step = train.restore_state(exp, str(workdir), label)
    scored = exp.task.eval_generations(train.Policy(exp, state, stops), exp.dataset, "test",
                                       cfg.eval.batch_size, per_prompt=True)
    p = [r["reward_model"] for r in scored["per_prompt"]]
    k, n = sum(x > 0.5 for x in p), len(p)
    rows.append({"checkpoint": label, "step": step, "mean_p_fresh": sum(p) / n, "fresh": k,
                 "n": n, "fresh_rate": k / n, "ci95": metrics.wilson_interval(k, n),
                 "completion_length": scored["completion_length"],
                 "examples": [r["completion"] for r in scored["per_prompt"][:6]]})
  train_rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  kl = [r["kl"] for r in train_rows if r["split"] == "train" and "kl" in r]
  results = {"rows": rows, "final_train_kl": kl[-1] if kl else None, "summary": summary}
  (workdir / "results.json").write_text(json.dumps(results, indent=2))
  lines = [f"GRPO with the judge `{args.judge}` (test prompts, n={rows[0]['n']}, greedy)", "",
           "| checkpoint | step | judge's mean P(fresh) | judged fresh (95% Wilson) | tokens |",
           "|---|---:|---:|---|---:|"]
  for r in rows:
    lines.append(f"| {r['checkpoint']} | {r['step']} | {r['mean_p_fresh']:.3f} | "
                 f"{r['fresh_rate']:.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}) | "
                 f"{r['completion_length']:.1f} |")
  lines += ["", f"KL to the base on the last logged rollouts: {results['final_train_kl']}; "
            f"train time {summary['train_time_sec'] / 60:.1f} min."]
  (workdir / "results.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
