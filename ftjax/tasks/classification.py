"""Sequence classification: the loss a train step minimises and the sums an eval step returns.

Eval steps return *sums* (not means) so that batches, padding examples (weight 0) and devices
combine exactly: the caller adds sums over batches and divides once at the end.
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ftjax import metrics as metrics_lib

MODEL_TASK = "classification"
uses_reference = False
HEADLINE_METRICS = ("accuracy", "loss")
METRICS = {"accuracy": "max", "loss": "min", "macro_f1": "max", "ece": "min"}  # eval.metric -> mode


def configure(cfg):
  del cfg  # no options
  return sys.modules[__name__]


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
  # loss_weight: what the mean is over, so gradient accumulation can weight microbatches exactly.
  return loss, {"accuracy": (correct * weights).sum() / denominator, "loss_weight": weights.sum()}


def eval_sums(model, batch, dataset):
  """Loss, accuracy, confusion and calibration sums for one batch (see `ftjax.metrics`).

  If the batch carries `slices` ([batch, num_slices] 0/1 membership, see `ftjax.eval_slices`),
  the same sums are also returned per slice under `slices`, with a leading slice axis.
  The number of calibration bins is `dataset.ece_bins` when set (by `ftjax.evaluate.configure`).
  """
  out = logits(model, batch).astype(jnp.float32)
  sums_for = functools.partial(
      metrics_lib.classification_sums, out, batch["labels"], num_classes=dataset.num_classes,
      ece_bins=getattr(dataset, "ece_bins", metrics_lib.DEFAULT_ECE_BINS))
  sums = sums_for(batch["weights"])
  if "slices" in batch:
    slice_weights = batch["slices"].astype(jnp.float32) * batch["weights"][:, None]
    sums["slices"] = jax.vmap(sums_for)(slice_weights.T)
  return sums


_SLICE_METRICS = ("loss", "accuracy", "macro_f1", "ece", "num_examples", "confusion")


def finalize(sums) -> dict:
  """Turns summed eval statistics into metrics (plain Python numbers and lists).

  Per-slice metrics, when present, come back as a list under `slices` in slice order;
  `ftjax.evaluate.name_slices` keys them by slice name.
  """
  sums = dict(sums)
  per_slice = sums.pop("slices", None)
  out = metrics_lib.classification_metrics(sums)
  if per_slice is not None:
    num_slices = len(np.asarray(per_slice["count"]))
    out["slices"] = []
    for i in range(num_slices):
      one = metrics_lib.classification_metrics(jax.tree.map(lambda x, i=i: np.asarray(x)[i], per_slice))
      out["slices"].append({k: one[k] for k in _SLICE_METRICS})
  return out
