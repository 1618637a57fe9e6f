"""Evaluation metrics as sums: computed per batch on device, added up, finalised on the host.

Every `*_sums` function takes per-example `weights` (0 for padding rows) and returns a dict of
arrays that *add* across batches, devices and processes: counts, sums of losses, confusion
counts, calibration-bin counts. Only the host-side `*_metrics` functions divide, once per split.
So a split evaluated in one batch or in many, on one device or eight, gives the same numbers.

The sums functions are plain `jax.numpy` code meant to run inside a jitted eval step; calling
them under `jax.vmap` over a leading axis of weights gives per-slice sums (see
`ftjax.tasks.classification.eval_sums`). The host functions accept numpy arrays or scalars.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

DEFAULT_ECE_BINS = 15


# ---------------------------------------------------------------------------- on device


def confidence_bins(confidence: jax.Array, num_bins: int) -> jax.Array:
  """Equal-width bin of each confidence: bin i holds (i/B, (i+1)/B]; 0 falls in bin 0."""
  index = jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1
  return jnp.clip(index, 0, num_bins - 1)


def calibration_sums(confidence: jax.Array, correct: jax.Array, weights: jax.Array,
                     num_bins: int) -> dict:
  """Per-bin weighted example count, confidence sum and correct count (for ECE)."""
  in_bin = jax.nn.one_hot(confidence_bins(confidence, num_bins), num_bins) * weights[:, None]
  return {"count": in_bin.sum(0), "confidence": in_bin.T @ confidence,
          "correct": in_bin.T @ correct.astype(jnp.float32)}


def classification_sums(logits: jax.Array, labels: jax.Array, weights: jax.Array, *,
                        num_classes: int, ece_bins: int = DEFAULT_ECE_BINS) -> dict:
  """Sums for loss, accuracy, the confusion matrix and calibration of one batch.

  Args:
    logits: [batch, num_classes] (cast to float32 here).
    labels: [batch] integer classes.
    weights: [batch] example weights; 0 for padding rows.
    num_classes: number of classes (static).
    ece_bins: number of equal-width confidence bins (static).

  Returns:
    `loss_sum`, `correct`, `count` (scalars), `confusion` [true, predicted] and
    `calibration` (`count`, `confidence`, `correct`, each [ece_bins]).
  """
  logits = logits.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  predictions = logits.argmax(-1)
  confidence = jax.nn.softmax(logits, -1).max(-1)
  correct = (predictions == labels).astype(jnp.float32)
  per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  true_onehot = jax.nn.one_hot(labels, num_classes) * weights[:, None]
  return {
      "loss_sum": (per_example * weights).sum(),
      "correct": (correct * weights).sum(),
      "count": weights.sum(),
      "confusion": true_onehot.T @ jax.nn.one_hot(predictions, num_classes),
      "calibration": calibration_sums(confidence, correct, weights, ece_bins),
  }


# ---------------------------------------------------------------------------- on the host


def wilson_interval(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
  """The Wilson score interval (95% at z = 1.96) of a proportion k / n; (nan, nan) for n = 0.
  Experiments report accuracies with it: unlike the normal approximation it stays inside [0, 1]
  and is honest near 0 and 1 on the few hundred examples a task split here has."""
  if n == 0:
    return (float("nan"), float("nan"))
  p = k / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return float(centre - half), float(centre + half)


def safe_divide(numerator, denominator) -> np.ndarray:
  """Elementwise numerator / denominator, 0 where the denominator is 0 (sklearn's zero_division=0)."""
  numerator = np.asarray(numerator, np.float64)
  denominator = np.asarray(denominator, np.float64)
  return np.divide(numerator, denominator, out=np.zeros(np.broadcast(numerator, denominator).shape),
                   where=denominator != 0)


def per_class_scores(confusion) -> dict[str, np.ndarray]:
  """Precision, recall, F1 and support per class from a [true, predicted] confusion matrix."""
  confusion = np.asarray(confusion, np.float64)
  true_positive = np.diag(confusion)
  predicted = confusion.sum(0)
  support = confusion.sum(1)
  precision = safe_divide(true_positive, predicted)
  recall = safe_divide(true_positive, support)
  f1 = safe_divide(2 * true_positive, predicted + support)
  return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def expected_calibration_error(calibration: Mapping) -> float:
  """ECE = sum over bins of |accuracy - mean confidence| weighted by the bin's share."""
  count = np.asarray(calibration["count"], np.float64)
  total = count.sum()
  if total == 0:
    return 0.0
  gap = np.abs(np.asarray(calibration["correct"], np.float64)
               - np.asarray(calibration["confidence"], np.float64))
  return float(gap.sum() / total)


def reliability(calibration: Mapping) -> dict[str, list]:
  """Per-bin edges, counts, mean confidence and accuracy (for a reliability diagram)."""
  count = np.asarray(calibration["count"], np.float64)
  bins = len(count)
  return {
      "bin_upper_edges": [round((i + 1) / bins, 6) for i in range(bins)],
      "count": [int(round(c)) for c in count],
      "confidence": safe_divide(calibration["confidence"], count).tolist(),
      "accuracy": safe_divide(calibration["correct"], count).tolist(),
  }


def classification_metrics(sums: Mapping, label_names: Sequence[str] | None = None) -> dict:
  """Finalises `classification_sums` (added over a split) into plain Python metrics.

  Scalars: `loss`, `accuracy`, `macro_f1`, `ece`, `num_examples`. Structured: `confusion`
  (a [true][predicted] list of ints), `per_class` (precision, recall, f1, support lists),
  `calibration` (the reliability-diagram bins). A class with no examples and no predictions
  scores 0, as sklearn does with `zero_division=0`.
  """
  count = float(sums["count"])
  confusion = np.asarray(sums["confusion"], np.float64)
  scores = per_class_scores(confusion)
  out = {
      "loss": float(sums["loss_sum"]) / max(count, 1.0),
      "accuracy": float(sums["correct"]) / max(count, 1.0),
      "macro_f1": float(scores["f1"].mean()) if len(scores["f1"]) else 0.0,
      "ece": expected_calibration_error(sums["calibration"]),
      "num_examples": int(round(count)),
      "confusion": confusion.round().astype(int).tolist(),
      "per_class": {k: (v.round().astype(int) if k == "support" else v).tolist()
                    for k, v in scores.items()},
      "calibration": reliability(sums["calibration"]),
  }
  if label_names is not None:
    out["per_class"]["label"] = list(label_names)
  return out


def scalars(metrics: Mapping) -> dict:
  """The plain-number entries of a metrics dict (what metrics.jsonl and TensorBoard take)."""
  return {k: v for k, v in metrics.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


def pearson(x, y) -> float:
  """Pearson's correlation of two 1-D arrays (NaN when either is constant)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  x, y = x - x.mean(), y - y.mean()
  denominator = np.sqrt((x * x).sum() * (y * y).sum())
  return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


def average_ranks(x) -> np.ndarray:
  """1-based ranks of a 1-D array, ties given their mean rank (scipy's `rankdata`)."""
  x = np.asarray(x)
  order = np.argsort(x, kind="stable")
  sorted_x = x[order]
  starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
  ends = np.r_[starts[1:], len(x)]
  ranks = np.empty(len(x), np.float64)
  ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)  # mean of start+1 .. end
  return ranks


def spearman(x, y) -> float:
  """Spearman's rank correlation: Pearson's of the average ranks."""
  return pearson(average_ranks(x), average_ranks(y))
