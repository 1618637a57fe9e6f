"""Extractive question answering (objective `question_answering`): the answer as a context span.

The model is a `*ForQuestionAnswering` (`model.task = "question_answering"`: BERT, RoBERTa,
XLM-R, DistilBERT) giving start and end logits per token of each context window
(`ftjax.data.qa`). The loss is HF's: the mean of the start and end tokens' cross-entropies.

Evaluation collects every window's logits (`row_outputs`) and, per question, picks the best
span over all its windows (`metrics_from_rows`, as HF's run_qa post-processing): among the
`n_best` highest start and end logits of each window, spans inside the context with start <=
end and at most `max_answer_length` tokens, scored start + end logit; the span's text is the
context's characters under its tokens. When a split holds unanswerable questions (SQuAD 2.0),
a question is answered "" where its null score (the smallest start + end logit at token 0 over
its windows) beats the best span. Scores follow the official SQuAD script: answers normalised
(lowercased, punctuation and English articles dropped, whitespace collapsed), `exact_match` and
token-overlap `f1` against the best-matching reference, means over questions (0-1, not 0-100).
"""

from __future__ import annotations

import collections
import dataclasses
import re
import string

import jax.numpy as jnp
import numpy as np
import optax

from ftjax.errors import UserError

MODEL_TASK = "question_answering"
uses_reference = False


def load_data(data_cfg, tokenizer, *, seed: int):
  from ftjax.data.qa import load_qa_data  # pylint: disable=g-import-not-at-top
  return load_qa_data(data_cfg, tokenizer, seed=seed)


def model_kwargs(dataset) -> dict:
  del dataset
  return {}


def batch_counts(local_batch) -> tuple[int, int]:
  return int(local_batch["weights"].sum()), int(local_batch["attention_mask"].sum())


def normalize_answer(text: str) -> str:
  """The official SQuAD normalisation."""
  text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(reference))


def f1(prediction: str, reference: str) -> float:
  pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
  if not pred or not ref:  # an unanswerable reference: right only when the prediction is empty
    return float(pred == ref)
  common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
  if not common:
    return 0.0
  precision, recall = common / len(pred), common / len(ref)
  return 2 * precision * recall / (precision + recall)


@dataclasses.dataclass(frozen=True)
class Options:
  max_answer_length: int = 30
  n_best: int = 20


def configure(cfg) -> "QuestionAnswering":
  q = cfg.objective.question_answering
  for key in ("max_answer_length", "n_best"):
    value = q[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise UserError(f"config key 'objective.question_answering.{key}' must be an integer >= 1, "
                      f"got {value!r}")
  return QuestionAnswering(Options(max_answer_length=q.max_answer_length, n_best=q.n_best))


def _logits(model, batch, rngs=None):
  start, end = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                     rngs=rngs)
  return start.astype(jnp.float32), end.astype(jnp.float32)


def best_span(start_logits, end_logits, offsets, opt: Options):
  """(score, first char, end char) of a window's best span inside the context, or None."""
  length = len(offsets)
  start_logits, end_logits = np.asarray(start_logits)[:length], np.asarray(end_logits)[:length]
  best = None
  for s in np.argsort(-start_logits, kind="stable")[:opt.n_best]:
    for e in np.argsort(-end_logits, kind="stable")[:opt.n_best]:
      if offsets[s][0] < 0 or offsets[e][0] < 0 or e < s or e - s + 1 > opt.max_answer_length:
        continue
      score = float(start_logits[s] + end_logits[e])
      if best is None or score > best[0]:
        best = (score, offsets[s][0], offsets[e][1])
  return best


class QuestionAnswering:
  """The `question_answering` objective with its options bound."""

  MODEL_TASK = MODEL_TASK
  uses_reference = False
  HEADLINE_METRICS = ("exact_match", "f1", "loss")
  METRICS = {"exact_match": "max", "f1": "max", "loss": "min"}
  load_data = staticmethod(load_data)
  model_kwargs = staticmethod(model_kwargs)
  batch_counts = staticmethod(batch_counts)

  def __init__(self, options: Options):
    self.options = options

  @staticmethod
  def _window_losses(start, end, batch):
    return (optax.softmax_cross_entropy_with_integer_labels(start, batch["start_positions"])
            + optax.softmax_cross_entropy_with_integer_labels(end, batch["end_positions"])) / 2

  def train_loss(self, model, batch, rngs):
    start, end = _logits(model, batch, rngs)
    weights = batch["weights"]
    denominator = jnp.maximum(weights.sum(), 1.0)
    loss = (self._window_losses(start, end, batch) * weights).sum() / denominator
    both = ((start.argmax(-1) == batch["start_positions"])
            & (end.argmax(-1) == batch["end_positions"])).astype(jnp.float32)
    return loss, {"span_accuracy": (both * weights).sum() / denominator,
                  "loss_weight": weights.sum()}

  def row_outputs(self, model, batch):
    start, end = _logits(model, batch)
    return {"start": start, "end": end, "window": batch["window"],
            "loss": self._window_losses(start, end, batch) * batch["weights"]}

  def predictions(self, outputs: list[dict], dataset, split: str) -> list[str]:
    """Each question's predicted answer text, in row order."""
    windows = dataset.windows(split)
    rows = dataset.rows(split)
    best: dict[int, tuple] = {}
    null: dict[int, float] = {}
    for o in outputs:
      for start, end, w in zip(np.asarray(o["start"]), np.asarray(o["end"]),
                               np.asarray(o["window"])):
        if w < 0:
          continue
        window = windows[int(w)]
        i = window["example"]
        null[i] = min(null.get(i, np.inf), float(start[0] + end[0]))
        span = best_span(start, end, window["offsets"], self.options)
        if span is not None and (i not in best or span[0] > best[i][0]):
          best[i] = span
    unanswerable = any(not r["answers"] for r in rows)
    out = []
    for i, r in enumerate(rows):
      span = best.get(i)
      if span is None or (unanswerable and null.get(i, -np.inf) > span[0]):
        out.append("")
      else:
        out.append(r["context"][span[1]:span[2]])
    return out

  def metrics_from_rows(self, outputs: list[dict], dataset, split: str) -> dict:
    rows = dataset.rows(split)
    predicted = self.predictions(outputs, dataset, split)
    em, f = [], []
    for r, p in zip(rows, predicted):
      references = [a[0] for a in r["answers"]] or [""]
      em.append(max(exact_match(p, ref) for ref in references))
      f.append(max(f1(p, ref) for ref in references))
    windows = sum(int((np.asarray(o["window"]) >= 0).sum()) for o in outputs)
    loss = sum(float(np.asarray(o["loss"]).sum()) for o in outputs)
    return {"exact_match": float(np.mean(em)), "f1": float(np.mean(f)),
            "loss": loss / max(windows, 1), "num_examples": len(rows), "num_windows": windows,
            "num_unanswerable": sum(1 for r in rows if not r["answers"])}
