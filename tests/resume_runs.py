"""A run trained straight and the same run stopped and resumed, for exact-resume tests."""

from ftjax import train


def straight_and_resumed(config, root, steps: int, stop: int):
  """(summary of `config(steps)` trained into root/a, summary of `config(stop)` then
  `config(steps)` trained into root/b); asserts that the second run resumed from `stop`."""
  straight = train.train_and_evaluate(config(steps), str(root / "a"))
  train.train_and_evaluate(config(stop), str(root / "b"))
  resumed = train.train_and_evaluate(config(steps), str(root / "b"))
  assert resumed["resumed_from_step"] == stop, resumed
  return straight, resumed
