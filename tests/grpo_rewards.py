"""A reward function registered by a user module (`objective.grpo.reward_modules`), for the GRPO
tests: the share of a completion's words that are positive words of the tiny vocabulary."""

import pathlib
import sys

from ftjax.tasks import rewards

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # loaded by path from a run
from tiny_assets import POSITIVE  # pylint: disable=wrong-import-position


@rewards.register("positive_share")
def positive_share(completion: str, example: dict) -> float:
  del example
  words = completion.split()
  return sum(w in POSITIVE for w in words) / max(len(words), 1)


@rewards.register("broken")
def broken(completion: str, example: dict):
  """Raises on some completions and returns a non-number on others: counted, never a crash."""
  if len(completion.split()) % 2:
    raise RuntimeError("a reward function bug")
  return "not a number"
