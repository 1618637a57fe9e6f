"""Sentiment-steered generation, the DPO paper's first experiment on this project's assets: the
judge's positive rate of SmolLM2's continuations of Rotten Tomatoes openings and the policy's
KL to the base, before and after GRPO or DPO.

  python -m ftjax.main --config configs/quickstart.py --workdir runs/quickstart   # the judge
  python experiments/sentiment/steer.py --objective grpo --workdir /tmp/ftjax_grpo_sentiment --judge runs/quickstart
  python experiments/sentiment/steer.py --objective dpo --workdir /tmp/ftjax_dpo_sentiment --judge runs/quickstart

1. Writes prompt files (`WORKDIR_prompts/{train,validation,test}.jsonl`): "Continue this movie
   review in one sentence" with a snippet's first 4 words, snippets taken in file order per
   split of the Rotten Tomatoes builder's movie split (600 / 64 / 128 prompts).
2. GRPO: trains `configs/grpo_sentiment.py`, the judge (a classification workdir) as the reward.
   DPO: samples `--samples` continuations of the first `--pair_prompts` training prompts (and of
   every validation prompt) from the base at temperature 1, the judge ranks each prompt's
   samples, the most and least `fresh` become a chosen/rejected pair
   (`WORKDIR_pairs/*.jsonl`; prompts whose samples the judge scores within `--min_margin` of
   each other are skipped and counted); then trains `configs/dpo_sentiment.py` on them.
3. Scores the test prompts with the base and the best checkpoint (by validation only): the
   judge's mean P(fresh) of greedy continuations and the share judged fresh (> 0.5, 95% Wilson);
   then `--kl_samples` continuations per test prompt sampled from the policy at temperature 1:
   their judge score, and KL(policy || base) estimated on them (the mean of
   sum_t log pi(y_t) - log pi_base(y_t) per continuation, and per token), with standard errors.
Writes `results.json` / `results.md` into the workdir; an existing run (or pair file) is reused.
"""

from __future__ import annotations

import argparse
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
from ftjax import metrics, sources, train  # pylint: disable=wrong-import-position
from ftjax.data import packing, rotten_tomatoes  # pylint: disable=wrong-import-position
from ftjax.tasks import rewards  # pylint: disable=wrong-import-position
from ftjax.train.batches import stop_token_ids  # pylint: disable=wrong-import-position

SIZES = {"train": 600, "validation": 64, "test": 128}
PROMPT = 'Continue this movie review in one sentence: "{opening}'
CONFIGS = {"grpo": "configs/grpo_sentiment.py", "dpo": "configs/dpo_sentiment.py"}
ROWS = 64  # generation batch rows: one compiled program for every full chunk


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


def key_data(seed: int, index: int) -> np.ndarray:
  return np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(seed), index)))


def sample(exp, state, split: str, limit: int | None, samples: int, seed: int):
  """(examples, completions [token lists], texts, judge scores): `samples` continuations of each
  of the split's first `limit` prompts from `state`'s policy at temperature 1."""
  policy = train.Policy(exp, state, stop_token_ids(exp))
  examples = exp.dataset.examples(split)[:limit]
  per_chunk = ROWS // samples
  completions, texts, scores = [], [], []
  for c, start in enumerate(range(0, len(examples), per_chunk)):
    chunk = [e for e in examples[start:start + per_chunk] for _ in range(samples)]
    out = policy.generate([e["input_ids"] for e in chunk], key_data(seed, c),
                          max_new_tokens=exp.task.options.max_new_tokens, temperature=1.0)
    decoded = [exp.dataset.tokenizer.decode(t, skip_special_tokens=True) for t in out]
    values, errors = rewards.score({"reward_model": exp.task.functions["reward_model"]},
                                   decoded, chunk)
    if errors["reward_model"]:
      raise SystemExit(f"the judge failed on {errors['reward_model']} continuations")
    completions += out
    texts += decoded
    scores += values[0].tolist()
  return examples, completions, texts, np.asarray(scores)


def write_pairs(exp, folder: pathlib.Path, splits: dict[str, int | None], samples: int,
                min_margin: float) -> dict:
  """Chosen/rejected pairs from the base's samples ranked by the judge; returns their stats."""
  folder.mkdir(parents=True, exist_ok=True)
  stats_file = folder / "stats.json"
  if stats_file.exists():
    return json.loads(stats_file.read_text())
  stats = {}
  for s, (split, limit) in enumerate(splits.items()):
    start = time.time()
    examples, _, texts, scores = sample(exp, exp.state, split, limit, samples, seed=1000 + s)
    scores = scores.reshape(len(examples), samples)
    lines, skipped, margins = [], 0, []
    for i, example in enumerate(examples):
      hi, lo = int(scores[i].argmax()), int(scores[i].argmin())
      if scores[i, hi] - scores[i, lo] < min_margin:
        skipped += 1
        continue
      margins.append(float(scores[i, hi] - scores[i, lo]))
      lines.append(json.dumps({"messages": example["messages"],
                               "chosen": texts[i * samples + hi].strip(),
                               "rejected": texts[i * samples + lo].strip()}))
    (folder / f"{split}.jsonl").write_text("".join(l + "\n" for l in lines))
    stats[split] = {"prompts": len(examples), "pairs": len(lines), "skipped_small_margin": skipped,
                    "mean_margin": float(np.mean(margins)) if margins else None,
                    "sample_mean_p_fresh": float(scores.mean()), "seconds": time.time() - start}
  stats_file.write_text(json.dumps(stats, indent=1))
  return stats


def sampled_kl(exp, state, base, split: str, samples: int) -> dict:
  """The judge on `samples` temperature-1 continuations per prompt of `state`'s policy, and
  KL(policy || base) estimated on them (per continuation and per token, with standard errors)."""
  examples, completions, _, scores = sample(exp, state, split, None, samples, seed=2000)
  logps = jax.jit(lambda params, frozen, batch: exp.task.token_logps(
      nnx.merge(exp.graphdef, params, frozen), batch))
  per_sequence, tokens = [], []
  prompts = [e["input_ids"] for e in examples for _ in range(samples)]
  for start in range(0, len(prompts), ROWS):
    batch = packing.collate_completions(prompts[start:start + ROWS],
                                        completions[start:start + ROWS],
                                        length=exp.dataset.max_length, pad_id=exp.dataset.pad_id,
                                        batch_size=ROWS)
    real = len(prompts[start:start + ROWS])
    mask = batch["loss_mask"][:real]
    policy_lp = np.asarray(logps(state.params, state.frozen, batch))[:real]
    base_lp = np.asarray(logps(base.params, base.frozen, batch))[:real]
    per_sequence += ((policy_lp - base_lp) * mask).sum(1).tolist()
    tokens += mask.sum(1).tolist()
  per_sequence, tokens = np.asarray(per_sequence), np.asarray(tokens)
  n = len(per_sequence)
  return {"samples": n, "sample_mean_p_fresh": float(scores.mean()),
          "sample_fresh_rate": float((scores > 0.5).mean()),
          "kl_per_continuation": float(per_sequence.mean()),
          "kl_per_continuation_se": float(per_sequence.std(ddof=1) / np.sqrt(n)),
          "kl_per_token": float(per_sequence.sum() / tokens.sum()),
          "sample_tokens": float(tokens.mean())}


def greedy_scores(exp, state, split: str) -> dict:
  scored = exp.task.eval_generations(train.Policy(exp, state, stop_token_ids(exp)), exp.dataset,
                                     split, exp.cfg.eval.batch_size, per_prompt=True)
  p = [r["reward_model"] for r in scored["per_prompt"]]
  k, n = sum(x > 0.5 for x in p), len(p)
  return {"mean_p_fresh": sum(p) / n, "fresh": k, "n": n, "fresh_rate": k / n,
          "ci95": metrics.wilson_interval(k, n), "completion_length": scored["completion_length"],
          "examples": [r["completion"] for r in scored["per_prompt"][:6]]}


def train_or_reuse(cfg, workdir: pathlib.Path) -> dict:
  summary_file = workdir / "summary.json"
  if summary_file.exists() and not json.loads(summary_file.read_text()).get("preempted"):
    return json.loads(summary_file.read_text())
  summary = train.train_and_evaluate(cfg, str(workdir))
  if summary.get("preempted"):
    sys.exit("preempted: rerun the same command to resume")
  return summary


def markdown(objective: str, judge: str, rows: list[dict], summary: dict, pairs: dict | None) -> str:
  lines = [f"{objective.upper()} with the judge `{judge}` (test prompts, n={rows[0]['n']})", "",
           "| checkpoint | step | greedy: judge's mean P(fresh) | greedy: judged fresh (95% Wilson) "
           "| sampled (T=1): mean P(fresh) | KL to base, nats per continuation (per token) "
           "| greedy tokens |", "|---|---:|---:|---|---:|---|---:|"]
  for r in rows:
    lines.append(f"| {r['checkpoint']} | {r['step']} | {r['mean_p_fresh']:.3f} | "
                 f"{r['fresh_rate']:.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}) | "
                 f"{r['sample_mean_p_fresh']:.3f} | {r['kl_per_continuation']:.2f} "
                 f"+- {r['kl_per_continuation_se']:.2f} ({r['kl_per_token']:.3f}) | "
                 f"{r['completion_length']:.1f} |")
  lines.append("")
  if pairs:
    lines.append("Pairs from the base's samples: " + "; ".join(
        f"{split} {s['pairs']} of {s['prompts']} prompts (mean margin {s['mean_margin']:.2f}, "
        f"{s['skipped_small_margin']} skipped)" for split, s in pairs.items()) + ".")
  lines.append(f"Train time {summary['train_time_sec'] / 60:.1f} min (steps only).")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--objective", choices=sorted(CONFIGS), required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--judge", required=True, help="a classification workdir (the quickstart)")
  parser.add_argument("--pair_prompts", type=int, default=256, help="DPO: training prompts sampled")
  parser.add_argument("--samples", type=int, default=4, help="DPO: base samples per prompt")
  parser.add_argument("--min_margin", type=float, default=0.05,
                      help="DPO: least judge-score gap between a pair's chosen and rejected")
  parser.add_argument("--kl_samples", type=int, default=4, help="samples per test prompt for KL")
  args, overrides = parser.parse_known_args()
  workdir = pathlib.Path(args.workdir)
  files = write_prompts(workdir.parent / f"{workdir.name}_prompts")
  overrides = [o.removeprefix("--config.") for o in overrides]
  # The GRPO config scores every policy: its data are the prompts, its reward the judge.
  score_cfg = config_lib.load_config(
      f"{REPO}/{CONFIGS['grpo']}", [f"objective.grpo.reward_model={args.judge}"] + [
          f"data.files.{split}={path}" for split, path in files.items()]
      + (overrides if args.objective == "grpo" else []))
  score_exp = train.build_experiment(score_cfg, optimizer=False)
  pairs = None
  if args.objective == "grpo":
    cfg = score_cfg
  else:
    pairs = write_pairs(score_exp, workdir.parent / f"{workdir.name}_pairs",
                        {"train": args.pair_prompts, "validation": None}, args.samples,
                        args.min_margin)
    print(json.dumps(pairs, indent=1))
    folder = workdir.parent / f"{workdir.name}_pairs"
    cfg = config_lib.load_config(f"{REPO}/{CONFIGS['dpo']}", [
        f"data.files.{split}={folder / f'{split}.jsonl'}" for split in ("train", "validation")]
        + overrides)
  summary = train_or_reuse(cfg, workdir)
  if cfg is score_cfg:
    tuned, step = train.restore_state(score_exp, str(workdir), "best")
  else:  # the DPO run's best LoRA parameters, in the scoring experiment's (equal) tree
    train_exp = train.build_experiment(cfg, optimizer=False)
    best, step = train.restore_state(train_exp, str(workdir), "best")
    tuned = score_exp.state.replace(params=best.params)
    del train_exp
  rows = []
  for label, state, at in (("base", score_exp.state, 0), ("best", tuned, step)):
    row = {"checkpoint": label, "step": at, **greedy_scores(score_exp, state, "test"),
           **sampled_kl(score_exp, state, score_exp.state, "test", args.kl_samples)}
    rows.append(row)
    print(json.dumps({k: v for k, v in row.items() if k != "examples"}), flush=True)
  train_rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  results = {"objective": args.objective, "rows": rows, "pairs": pairs, "summary": summary,
             "train_metrics": [r for r in train_rows if r["split"] in ("train", "eval")],
             "cpu": jax.devices()[0].device_kind}
  (workdir / "results.json").write_text(json.dumps(results, indent=2))
  text = markdown(args.objective, args.judge, rows, summary, pairs)
  (workdir / "results.md").write_text(text)
  print(text)


if __name__ == "__main__":
  main()
