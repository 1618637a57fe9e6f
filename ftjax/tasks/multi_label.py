"""Multi-label classification (objective `multi_label`): any number of labels per text.

The model is the sequence classifier (`model.task = "classification"`), one logit per label,
read through sigmoids (HF's `problem_type = "multi_label_classification"`, which the export
writes). The loss is binary cross-entropy with logits, a mean over the batch's examples and
labels (`BCEWithLogitsLoss`'s mean); a label is predicted where its probability exceeds 0.5.
Eval sums per label the true/false positives and false negatives, exact matches and the loss,
so micro and macro F1 (and per-label scores) are exact over any batching.
"""

from __future__ import annotations

import sys

import jax.numpy as jnp
import numpy as np
import optax

from ftjax import metrics as metrics_lib

MODEL_TASK = "classification"
PROBLEM_TYPE = "multi_label_classification"  # config.json's, for transformers' loss
uses_reference = False
HEADLINE_METRICS = ("micro_f1", "macro_f1", "loss")
METRICS = {"micro_f1": "max", "macro_f1": "max", "subset_accuracy": "max", "loss": "min"}


def configure(cfg):
  del cfg  # no options
  return sys.modules[__name__]


def load_data(data_cfg, tokenizer, *, seed: int):
  from ftjax.data.targets import load_target_data  # pylint: disable=g-import-not-at-top
  return load_target_data(data_cfg, tokenizer, seed=seed, kind="multi_label")


def model_kwargs(dataset) -> dict:
  return {"num_labels": dataset.num_classes}


def batch_counts(local_batch) -> tuple[int, int]:
  return int(local_batch["weights"].sum()), int(local_batch["attention_mask"].sum())


def _logits(model, batch, rngs=None):
  return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
               rngs=rngs).astype(jnp.float32)


def train_loss(model, batch, rngs):
  out = _logits(model, batch, rngs)
  weights = batch["weights"]
  per_example = optax.sigmoid_binary_cross_entropy(out, batch["targets"]).mean(-1)
  denominator = jnp.maximum(weights.sum(), 1.0)
  exact = ((out > 0) == (batch["targets"] > 0)).all(-1).astype(jnp.float32)
  return (per_example * weights).sum() / denominator, {
      "subset_accuracy": (exact * weights).sum() / denominator, "loss_weight": weights.sum()}


def eval_sums(model, batch, dataset):
  del dataset
  out = _logits(model, batch)
  w = batch["weights"][:, None]
  predicted, gold = (out > 0).astype(jnp.float32), batch["targets"]
  return {"tp": (predicted * gold * w).sum(0), "fp": (predicted * (1 - gold) * w).sum(0),
          "fn": ((1 - predicted) * gold * w).sum(0),
          "exact": (((out > 0) == (gold > 0)).all(-1) * batch["weights"]).sum(),
          "loss": (optax.sigmoid_binary_cross_entropy(out, gold).mean(-1) * batch["weights"]).sum(),
          "count": batch["weights"].sum()}


def finalize(sums) -> dict:
  tp, fp, fn = (np.asarray(sums[k], np.float64) for k in ("tp", "fp", "fn"))
  precision = metrics_lib.safe_divide(tp, tp + fp)
  recall = metrics_lib.safe_divide(tp, tp + fn)
  f1 = metrics_lib.safe_divide(2 * precision * recall, precision + recall)
  micro_p = tp.sum() / max(tp.sum() + fp.sum(), 1.0)
  micro_r = tp.sum() / max(tp.sum() + fn.sum(), 1.0)
  n = float(sums["count"])
  return {"micro_f1": float(2 * micro_p * micro_r / (micro_p + micro_r)) if micro_p + micro_r
          else 0.0, "micro_precision": float(micro_p), "micro_recall": float(micro_r),
          "macro_f1": float(f1.mean()), "subset_accuracy": float(sums["exact"]) / max(n, 1.0),
          "loss": float(sums["loss"]) / max(n, 1.0), "num_examples": int(round(n)),
          "per_class": {"precision": precision.tolist(), "recall": recall.tolist(),
                        "f1": f1.tolist(), "support": (tp + fn).astype(int).tolist()}}
