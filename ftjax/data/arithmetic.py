"""TFDS builder of seeded arithmetic problems with checkable answers (`data.name = "arithmetic"`).

GRPO with a verifiable reward needs problems whose answers a program can check and whose
train and test problems never overlap. Problems are `a op b` with operands in
[0, data.arithmetic.max_operand] and op from `data.arithmetic.operations` (`+`, `-`, `*`),
drawn without repetition from one seeded stream and dealt out in order: the first
`train` to the train split, the next `validation`, then `test` (so no problem, nor its
commuted twin for + and *, is in two splits). The prompt asks for the answer on its own at the
end; `answer` is the exact integer result. Features as `prompt_files`.
"""

import dataclasses
import json
import random

import tensorflow_datasets as tfds

from ftjax.data import prompt_files
from ftjax.errors import UserError

OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
PROMPT = "What is {a} {op} {b}? Reply with the number only."


@dataclasses.dataclass(eq=False)
class ArithmeticConfig(tfds.core.BuilderConfig):
  seed: int = 0
  sizes: tuple = (("train", 2000), ("validation", 200), ("test", 500))
  max_operand: int = 99
  operations: str = "+-"


def make_config(seed: int, sizes: dict, max_operand: int, operations: str) -> ArithmeticConfig:
  bad = sorted(set(operations) - set(OPERATIONS))
  if not operations or bad:
    raise UserError(f"data.arithmetic.operations={operations!r}: use characters of "
                    f"{''.join(OPERATIONS)!r}")
  if max_operand < 1:
    raise UserError(f"data.arithmetic.max_operand must be >= 1, got {max_operand}")
  sizes = tuple((k, int(v)) for k, v in sizes.items() if int(v) > 0)
  k = max_operand + 1
  # Distinct problems: a + b and b + a (a * b and b * a) are one, a - b and b - a two.
  distinct = sum(k * (k + 1) // 2 if op in "+*" else k * k for op in set(operations))
  if sum(n for _, n in sizes) > distinct:
    raise UserError(f"data.arithmetic asks for {sum(n for _, n in sizes)} problems; operands "
                    f"up to {max_operand} with {operations!r} give {distinct}")
  key = json.dumps([seed, sizes, max_operand, "".join(sorted(set(operations)))])
  name = "s{}_o{}_{}_{}".format(seed, max_operand, "".join(
      {"+": "add", "-": "sub", "*": "mul"}[o] for o in sorted(set(operations))),
                                "_".join(f"{k}{n}" for k, n in sizes))
  return ArithmeticConfig(name=name, description=key, seed=seed, sizes=sizes,
                          max_operand=max_operand, operations="".join(sorted(set(operations))))


def from_data_config(data_cfg, data_dir) -> "Arithmetic":
  a = data_cfg.arithmetic
  return Arithmetic(data_dir=data_dir, config=make_config(
      int(a.seed), {"train": a.train, "validation": a.validation, "test": a.test},
      int(a.max_operand), str(a.operations)))


def problems(config: ArithmeticConfig) -> dict[str, list[tuple[int, str, int, int]]]:
  """Split name -> its problems `(a, op, b, answer)`, disjoint across splits."""
  rng = random.Random(config.seed)
  seen, out = set(), {}
  for split, n in config.sizes:
    rows = []
    while len(rows) < n:
      a, b = rng.randint(0, config.max_operand), rng.randint(0, config.max_operand)
      op = rng.choice(config.operations)
      canonical = (min(a, b), op, max(a, b)) if op in "+*" else (a, op, b)
      if canonical in seen:
        continue
      seen.add(canonical)
      rows.append((a, op, b, OPERATIONS[op](a, b)))
    out[split] = rows
  return out


class Arithmetic(tfds.core.GeneratorBasedBuilder):
  """Seeded `a op b` problems, disjoint train/validation/test."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = []

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Seeded arithmetic problems: " + self.builder_config.description,
        features=prompt_files.features(), metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager  # generated
    return {split: self._generate_examples(split, rows)
            for split, rows in problems(self.builder_config).items()}

  def _generate_examples(self, split, rows):
    for i, (a, op, b, answer) in enumerate(rows):
      example_id = f"{split}:{i}"
      yield example_id, prompt_files.encode_example(
          example_id, [{"role": "user", "content": PROMPT.format(a=a, op=op, b=b)}], str(answer))
