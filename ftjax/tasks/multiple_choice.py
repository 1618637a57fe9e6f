"""Multiple choice (objective `multiple_choice`): pick the right answer among a question's choices.

The model is a `*ForMultipleChoice` (`model.task = "multiple_choice"`: BERT, RoBERTa, XLM-R,
DistilBERT): one score per (question, choice) row of a [B, C, T] batch (`ftjax.data.choices`).
The loss is the cross-entropy of the right choice among the question's own choices (a question
with fewer than C choices gives the missing ones no probability), a mean over questions; eval
sums the loss and the right picks, so accuracy and its Wilson interval come out exact over any
batching.
"""

from __future__ import annotations

import sys

import jax.numpy as jnp
import optax

from ftjax import metrics as metrics_lib

MODEL_TASK = "multiple_choice"
uses_reference = False
HEADLINE_METRICS = ("accuracy", "loss")
METRICS = {"accuracy": "max", "loss": "min"}
_MISSING = -1e9  # a missing choice's score: exp() of it is 0 in fp32


def configure(cfg):
  del cfg  # no options
  return sys.modules[__name__]


def load_data(data_cfg, tokenizer, *, seed: int):
  from ftjax.data.choices import load_choice_data  # pylint: disable=g-import-not-at-top
  return load_choice_data(data_cfg, tokenizer, seed=seed)


def model_kwargs(dataset) -> dict:
  del dataset
  return {}


def batch_counts(local_batch) -> tuple[int, int]:
  return int(local_batch["weights"].sum()), int(local_batch["attention_mask"].sum())


def choice_logits(model, batch, rngs=None):
  """[B, C] fp32 scores, the missing choices at -1e9."""
  out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], rngs=rngs)
  return jnp.where(batch["choice_mask"] > 0, out.astype(jnp.float32), _MISSING)


def _per_question(model, batch, rngs=None):
  out = choice_logits(model, batch, rngs)
  loss = optax.softmax_cross_entropy_with_integer_labels(out, batch["labels"])
  return loss, (out.argmax(-1) == batch["labels"]).astype(jnp.float32)


def train_loss(model, batch, rngs):
  loss, correct = _per_question(model, batch, rngs)
  weights = batch["weights"]
  denominator = jnp.maximum(weights.sum(), 1.0)
  return (loss * weights).sum() / denominator, {"accuracy": (correct * weights).sum() / denominator,
                                                "loss_weight": weights.sum()}


def eval_sums(model, batch, dataset):
  del dataset
  loss, correct = _per_question(model, batch)
  weights = batch["weights"]
  return {"loss": (loss * weights).sum(), "correct": (correct * weights).sum(),
          "count": weights.sum()}


def finalize(sums) -> dict:
  n = float(sums["count"])
  correct = float(sums["correct"])
  low, high = metrics_lib.wilson_interval(correct, int(round(n)))
  return {"accuracy": correct / max(n, 1.0), "loss": float(sums["loss"]) / max(n, 1.0),
          "accuracy_ci95_low": low, "accuracy_ci95_high": high, "num_examples": int(round(n))}
