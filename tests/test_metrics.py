"""Eval metrics as sums: sklearn/numpy oracles, padding rows, batches and slices that add up."""

import types

import jax
import numpy as np
import pytest
from sklearn import metrics as skm

from ftjax import metrics
from ftjax.tasks import classification

C, BINS = 3, 10


def random_eval_set(n=200, padding=37, seed=0):
  """Random logits/labels; the last `padding` rows are padding (weight 0) with junk values."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n + padding, C)).astype(np.float32) * 2
  labels = rng.integers(0, C, n + padding).astype(np.int32)
  weights = np.r_[np.ones(n), np.zeros(padding)].astype(np.float32)
  return logits, labels, weights


def reference_ece(probs, labels, bins):
  """ECE with bins (i/B, (i+1)/B], as in Guo et al. 2017."""
  confidence, predictions = probs.max(1), probs.argmax(1)
  ece = 0.0
  for i in range(bins):
    lo, hi = i / bins, (i + 1) / bins
    in_bin = (confidence > lo) & (confidence <= hi) if i else (confidence <= hi)
    if in_bin.any():
      ece += in_bin.mean() * abs((predictions[in_bin] == labels[in_bin]).mean()
                                 - confidence[in_bin].mean())
  return ece


def sums_of(logits, labels, weights):
  return jax.device_get(metrics.classification_sums(logits, labels, weights, num_classes=C,
                                                    ece_bins=BINS))


def add(a, b):
  return jax.tree.map(np.add, a, b)


def test_metrics_match_sklearn_and_ignore_padding():
  logits, labels, weights = random_eval_set()
  real = weights > 0
  got = metrics.classification_metrics(sums_of(logits, labels, weights))

  probs = np.asarray(jax.nn.softmax(logits[real].astype(np.float64), -1))
  y, p = labels[real], logits[real].argmax(1)
  assert got["num_examples"] == real.sum()
  np.testing.assert_allclose(got["accuracy"], skm.accuracy_score(y, p), rtol=1e-6)
  np.testing.assert_allclose(got["loss"], skm.log_loss(y, probs, labels=range(C)), rtol=1e-5)
  np.testing.assert_allclose(got["macro_f1"], skm.f1_score(y, p, average="macro"), rtol=1e-6)
  precision, recall, f1, support = skm.precision_recall_fscore_support(y, p, labels=range(C))
  np.testing.assert_allclose(got["per_class"]["precision"], precision, rtol=1e-6)
  np.testing.assert_allclose(got["per_class"]["recall"], recall, rtol=1e-6)
  np.testing.assert_allclose(got["per_class"]["f1"], f1, rtol=1e-6)
  assert got["per_class"]["support"] == support.tolist()
  assert got["confusion"] == skm.confusion_matrix(y, p, labels=range(C)).tolist()
  np.testing.assert_allclose(got["ece"], reference_ece(probs, y, BINS), atol=1e-6)
  assert sum(got["calibration"]["count"]) == real.sum()


def test_sums_over_batches_equal_one_batch():
  logits, labels, weights = random_eval_set()
  whole = sums_of(logits, labels, weights)
  parts = [sums_of(logits[i:i + 64], labels[i:i + 64], weights[i:i + 64])
           for i in range(0, len(labels), 64)]
  total = parts[0]
  for part in parts[1:]:
    total = add(total, part)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4), whole, total)
  assert metrics.classification_metrics(total)["confusion"] == (
      metrics.classification_metrics(whole)["confusion"])


def test_undefined_scores_are_zero_like_sklearn():
  # Class 2 never occurs and is never predicted; class 1 is never predicted.
  confusion = np.array([[3, 0, 0], [2, 0, 0], [0, 0, 0]])
  y = [0, 0, 0, 1, 1]
  p = [0, 0, 0, 0, 0]
  scores = metrics.per_class_scores(confusion)
  f1 = skm.f1_score(y, p, labels=range(3), average=None, zero_division=0)
  np.testing.assert_allclose(scores["f1"], f1)
  assert metrics.expected_calibration_error(
      {"count": np.zeros(3), "confidence": np.zeros(3), "correct": np.zeros(3)}) == 0.0


def test_confidence_bins_edges():
  got = metrics.confidence_bins(np.array([0.0, 0.1, 0.1001, 0.5, 0.95, 1.0], np.float32), 10)
  assert np.asarray(got).tolist() == [0, 0, 1, 4, 9, 9]


class FixedLogits:
  """A stand-in model: returns the logits stored for each example id (input_ids[:, 0])."""

  def __init__(self, table):
    self.table = table

  def __call__(self, input_ids, attention_mask, token_type_ids, rngs=None):
    del attention_mask, token_type_ids, rngs
    return self.table[input_ids[:, 0]]


def test_task_eval_sums_per_slice_match_the_subsets():
  logits, labels, weights = random_eval_set(n=120, padding=8, seed=3)
  n = len(labels)
  rng = np.random.default_rng(1)
  slice_ids = rng.integers(0, 4, n)
  slices = np.eye(4, dtype=np.float32)[slice_ids]
  batch = {"input_ids": np.arange(n, dtype=np.int32)[:, None], "attention_mask": np.ones((n, 1), np.int32),
           "token_type_ids": np.zeros((n, 1), np.int32), "labels": labels, "weights": weights,
           "slices": slices}
  dataset = types.SimpleNamespace(num_classes=C, ece_bins=BINS)
  model = FixedLogits(jax.numpy.asarray(logits))
  step = jax.jit(lambda b: classification.eval_sums(model, b, dataset))
  halves = [jax.device_get(step({k: v[s] for k, v in batch.items()}))
            for s in (slice(0, 64), slice(64, None))]
  got = classification.finalize(add(*halves))

  assert got["num_examples"] == 120
  for s in range(4):
    keep = slice_ids == s
    expected = metrics.classification_metrics(sums_of(logits[keep], labels[keep], weights[keep]))
    for k in ("accuracy", "loss", "macro_f1", "ece", "num_examples"):
      assert got["slices"][s][k] == pytest.approx(expected[k], rel=1e-5, abs=1e-6), (s, k)
    assert got["slices"][s]["confusion"] == expected["confusion"]
