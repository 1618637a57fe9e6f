"""Distillation: MiniLM-L6 cut to its first 3 layers, taught by the quickstart's fine-tuned MiniLM.

  python -m ftjax.main --config configs/quickstart.py --workdir runs/quickstart
  python -m ftjax.export --workdir runs/quickstart --format hf --out runs/quickstart/hf
  python -m ftjax.main --config configs/distill_minilm.py --workdir runs/distill_minilm \
      --config.objective.distill.teacher=runs/quickstart/hf

The student is all-MiniLM-L6-v2's pretrained weights with only layers 0-2 kept
(`model.num_layers=3`: half the encoder, ~1.7x faster) and a fresh classifier; it learns from the
teacher's label distribution at temperature 2 (`forward_kl`) mixed half and half with the labels'
cross-entropy. The variant `configs/distill_minilm.py:labels` is the same student, data, steps
and schedule on the labels alone (no teacher): the baseline of `experiments/distill`.
"""

import importlib.util
import pathlib

# The quickstart's config, loaded by path as the trainer loads config files (configs/ is no package).
_SPEC = importlib.util.spec_from_file_location("ftjax_quickstart_config",
                                               pathlib.Path(__file__).with_name("quickstart.py"))
quickstart = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(quickstart)


def get_config(variant: str = "teacher"):
  if variant not in ("teacher", "labels"):
    raise ValueError(f"variant must be 'teacher' or 'labels', got '{variant}'")
  c = quickstart.get_config("full")
  c.model.num_layers = 3
  c.optimizer.lr = 2e-4  # a smaller encoder with a fresh head: twice the quickstart's LR
  if variant == "teacher":
    c.objective.name = "distill"
    c.objective.distill.teacher = "runs/quickstart/hf"  # the quickstart's export (see above)
    c.objective.distill.divergence = "forward_kl"
    c.objective.distill.temperature = 2.0
    c.objective.distill.task_weight = 0.5
  return c
