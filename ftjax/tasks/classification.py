"""Sequence classification: the loss a train step minimises and the sums an eval step returns.

Eval steps return *sums* (not means) so that batches, padding examples (weight 0) and devices
combine exactly: the caller adds sums over batches and divides once at the end.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

MODEL_TASK = "classification"
HEADLINE_METRICS = ("accuracy", "loss")
METRICS = ("accuracy", "loss")  # scalar eval metrics `eval.metric` may name


def load_data(data_cfg, tokenizer, *, seed: int):
  from ftjax.data.classification import load_classification_data  # pylint: disable=g-import-not-at-top
  return load_classification_data(data_cfg, tokenizer, seed=seed)


def model_kwargs(dataset) -> dict:
  return {"num_labels": dataset.num_classes}


def batch_counts(local_batch) -> tuple[int, int]:
  """Real examples and non-padding tokens in a host batch."""
  return int(local_batch["weights"].sum()), int(local_batch["attention_mask"].sum())


def logits(model, batch, rngs=None):
  return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], rngs=rngs)


def train_loss(model, batch, rngs):
  """Mean cross-entropy over real examples, plus batch accuracy for the progress bar."""
  out = logits(model, batch, rngs).astype(jnp.float32)
  weights = batch["weights"]
  per_example = optax.softmax_cross_entropy_with_integer_labels(out, batch["labels"])
  denominator = jnp.maximum(weights.sum(), 1.0)
  loss = (per_example * weights).sum() / denominator
  correct = (out.argmax(-1) == batch["labels"]).astype(jnp.float32)
  return loss, {"accuracy": (correct * weights).sum() / denominator}


def eval_sums(model, batch, dataset):
  """Loss sum, correct count, example count and the confusion matrix for one batch."""
  num_classes = dataset.num_classes
  out = logits(model, batch).astype(jnp.float32)
  weights = batch["weights"]
  labels = batch["labels"]
  predictions = out.argmax(-1)
  per_example = optax.softmax_cross_entropy_with_integer_labels(out, labels)
  # confusion[true, predicted], with padding examples weighted out.
  confusion = jnp.einsum("bt,bp->tp", jnp.eye(num_classes)[labels] * weights[:, None],
                         jnp.eye(num_classes)[predictions])
  return {
      "loss_sum": (per_example * weights).sum(),
      "correct": ((predictions == labels) * weights).sum(),
      "count": weights.sum(),
      "confusion": confusion,
  }


def finalize(sums) -> dict:
  """Turns summed eval statistics into metrics (plain Python numbers)."""
  count = float(sums["count"])
  denominator = max(count, 1.0)
  confusion = np.asarray(sums["confusion"])
  return {
      "loss": float(sums["loss_sum"]) / denominator,
      "accuracy": float(sums["correct"]) / denominator,
      "num_examples": int(round(count)),
      "confusion": confusion.round().astype(int).tolist(),
  }
