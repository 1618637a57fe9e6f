"""Reward functions for RL objectives (`grpo`): plain Python, registered by name.

A reward function scores one completion: `fn(completion: str, example: dict) -> float`, where
`example` is the prompt's record (`answer`, `extra` (the row's other fields), `messages`,
`id`). Register one with `@rewards.register("name")` in any module and name that module in
`objective.grpo.reward_modules` (a dotted module or a `.py` file); `objective.grpo.rewards`
names the functions a run uses and `reward_weights` their weights (the reward is the weighted
sum). A function that raises, or returns a non-number or a non-finite one, gives 0 for that
completion and is counted (`reward_errors/<name>` each step, never a crash mid-run).

Built in:
  exact_answer   1 if the completion's answer equals `example["answer"]`: numerically (the last
                 number in the completion) when the answer is a number, else as normalised text
  format         1 if the whole completion matches `objective.grpo.format_pattern` (a regex)
  reward_model   a classifier trained by ftjax (`objective.grpo.reward_model`, a workdir) scores
                 the completion: its probability of `reward_model_label`, or a reward model's
                 score (`ftjax/train/reward_model.py`, registered by `ftjax.train`)
  unit_tests     1 if the completion's code passes `extra["test"]` (HumanEval's `check(fn)` with
                 `extra["entry_point"]`) in a separate Python process within
                 `objective.grpo.unit_test_timeout` seconds, sockets disabled, memory capped
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import pathlib
import re
import subprocess
import sys
import tempfile
from typing import Callable

import numpy as np

from ftjax.errors import UserError

RewardFn = Callable[[str, dict], float]
# name -> factory(options) -> reward function; options: the run's `objective.grpo` settings
_REGISTRY: dict[str, Callable[[object], RewardFn]] = {}
_BATCHED: set[str] = set()  # names whose functions score lists of completions at once
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def register(name: str, *, factory: bool = False, batched: bool = False):
  """Registers a reward function (or, with `factory=True`, a function of the run's options that
  returns one) under `name`. `batched=True`: it scores a whole rollout at once,
  `fn(completions, examples) -> list of floats` (a model as the judge)."""
  def add(fn):
    _REGISTRY[name] = fn if factory else (lambda options: fn)
    if batched:
      _BATCHED.add(name)
    return fn
  return add


def names() -> list[str]:
  return sorted(_REGISTRY)


def load_modules(modules) -> None:
  """Imports the modules (dotted names or .py files) that register reward functions."""
  for module in modules or ():
    module = str(module)
    try:
      if module.endswith(".py"):
        path = pathlib.Path(module).expanduser()
        if not path.is_file():
          raise UserError(f"objective.grpo.reward_modules: file not found: {path}")
        spec = importlib.util.spec_from_file_location(f"ftjax_rewards_{path.stem}", path)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
      else:
        importlib.import_module(module)
    except UserError:
      raise
    except Exception as e:  # the user's module: name it and why, in one line
      raise UserError(f"objective.grpo.reward_modules: cannot import '{module}': "
                      f"{type(e).__name__}: {e}") from None


# Reward functions registered by a higher layer, and the module whose import registers them.
_PROVIDED_ELSEWHERE = {"reward_model": "ftjax.train"}


def get(name: str, options) -> RewardFn:
  if name not in _REGISTRY and name in _PROVIDED_ELSEWHERE:
    raise UserError(f"reward function '{name}' is registered by {_PROVIDED_ELSEWHERE[name]}: "
                    f"import it before loading this config (the ftjax commands do)")
  if name not in _REGISTRY:
    raise UserError(f"objective.grpo.rewards names an unknown reward function '{name}'; known: "
                    f"{', '.join(names())} (register your own with ftjax.tasks.rewards.register "
                    "in a module named in objective.grpo.reward_modules)")
  return _REGISTRY[name](options)


def score(functions: dict[str, RewardFn], completions: list[str], examples: list[dict]):
  """`(values [F, N] float64, errors {name: count})`: each function on each completion, 0 where
  it raised or gave a non-number / non-finite value."""
  values = np.zeros((len(functions), len(completions)))
  errors = dict.fromkeys(functions, 0)
  for f, (name, fn) in enumerate(functions.items()):
    if name in _BATCHED:
      results = list(fn(completions, examples))
      if len(results) != len(completions):
        raise UserError(f"reward function '{name}' returned {len(results)} values for "
                        f"{len(completions)} completions")
    else:
      results = []
      for completion, example in zip(completions, examples):
        try:
          results.append(fn(completion, example))
        except Exception:  # pylint: disable=broad-except  # counted and reported, by design
          results.append(None)
    for i, value in enumerate(results):
      value = float(value) if isinstance(value, (int, float, np.number)) and not isinstance(
          value, bool) else None
      if value is None or not math.isfinite(value):
        errors[name] += 1
      else:
        values[f, i] = value
  return values, errors


# --- built-in rewards ---------------------------------------------------------------------------


def _as_number(text: str) -> float | None:
  try:
    return float(text.replace(",", ""))
  except ValueError:
    return None


def _normalise(text: str) -> str:
  return " ".join(text.lower().split()).strip(" .!")


@register("exact_answer")
def exact_answer(completion: str, example: dict) -> float:
  answer = str(example.get("answer", "")).strip()
  if not answer:
    raise ValueError("the example has no answer")
  target = _as_number(answer)
  if target is None:
    return float(_normalise(completion) == _normalise(answer))
  found = _NUMBER.findall(completion)
  if not found:
    return 0.0
  value = _as_number(found[-1])
  return float(abs(value - target) <= 1e-6 * max(1.0, abs(target)))


@register("format", factory=True)
def _format(options) -> RewardFn:
  pattern = re.compile(options.format_pattern, re.DOTALL)
  return lambda completion, example: float(pattern.fullmatch(completion) is not None)


_SANDBOX = """\
import resource, socket, sys
resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
def _no_network(*args, **kwargs):
  raise OSError("network access is disabled in ftjax unit-test rewards")
socket.socket = socket.create_connection = socket.getaddrinfo = _no_network
sys.argv = ["program.py"]
exec(compile(open("program.py").read(), "program.py", "exec"), {{"__name__": "__main__"}})
"""


def program_of(completion: str, example: dict) -> str:
  """The program a unit-test reward runs: the completion's code (its first fenced block when it
  has one; HumanEval's prompt code before it when the code does not define the entry point),
  then the tests and `check(entry_point)`."""
  extra = example.get("extra") or {}
  fenced = re.search(r"```(?:python|py)?\s*\n(.*?)```", completion, re.DOTALL)
  code = fenced.group(1) if fenced else completion
  entry = extra.get("entry_point", "")
  if entry and not re.search(rf"def\s+{re.escape(entry)}\s*\(", code):
    code = extra.get("prompt_code", "") + code
  test = extra.get("test")
  if not test:
    raise ValueError("the example has no 'test' field")
  return f"{code}\n\n{test}\n" + (f"\ncheck({entry})\n" if entry else "")


def passes(program: str, timeout: float, *, memory_bytes: int = 1 << 30) -> bool:
  """Whether `program` exits 0 in a separate, isolated Python process (`-I`, an empty
  environment apart from PATH, sockets disabled, address space capped at `memory_bytes`)
  within `timeout` seconds, in a temporary folder removed afterwards."""
  with tempfile.TemporaryDirectory(prefix="ftjax_unit_test_") as tmp:
    pathlib.Path(tmp, "program.py").write_text(program)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "1"}  # no proxies
    try:
      done = subprocess.run([sys.executable, "-I", "-c", _SANDBOX.format(memory=memory_bytes)],
                            cwd=tmp, env=env, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
      return False
    return done.returncode == 0


@register("unit_tests", factory=True)
def _unit_tests(options) -> RewardFn:
  timeout = float(options.unit_test_timeout)
  return lambda completion, example: float(passes(program_of(completion, example), timeout))
