"""Token classification (objective `token_classification`): a label per word, e.g. NER.

The model is a `*ForTokenClassification` (`model.task = "token_classification"`: BERT, RoBERTa,
XLM-RoBERTa, DistilBERT, and the Llama family's decoders), its logits [B, T, labels]. Only each
word's first token carries a label (`ftjax.data.token_labels`); the loss is the cross-entropy
over those tokens, a mean over the batch's labelled tokens (as transformers' `-100` labels).

Evaluation collects each sentence's predicted tags (`row_outputs`, every process's rows) and
scores them on the host (`metrics_from_rows`): at the word level, with the gold tags of every
word (a word cut off by `data.max_length` is predicted `O`), entity precision, recall and F1 in
seqeval's strict IOB2 mode (an entity counts only with its type and exact span; micro over
entities, `macro_entity_f1` over types, and per type in `per_type`), token accuracy over the
labelled tokens, and the loss.
"""

from __future__ import annotations

import sys

import jax.numpy as jnp
import numpy as np
import optax

from ftjax.data import iob2

MODEL_TASK = "token_classification"
uses_reference = False
HEADLINE_METRICS = ("entity_f1", "token_accuracy", "loss")
METRICS = {"entity_f1": "max", "entity_precision": "max", "entity_recall": "max",
           "macro_entity_f1": "max", "token_accuracy": "max", "loss": "min"}


def configure(cfg):
  del cfg  # no options
  return sys.modules[__name__]


def load_data(data_cfg, tokenizer, *, seed: int):
  from ftjax.data.token_labels import load_token_data  # pylint: disable=g-import-not-at-top
  return load_token_data(data_cfg, tokenizer, seed=seed)


def model_kwargs(dataset) -> dict:
  return {"num_labels": dataset.num_classes}


def batch_counts(local_batch) -> tuple[int, int]:
  return int(local_batch["weights"].sum()), int(local_batch["attention_mask"].sum())


def logits(model, batch, rngs=None):
  return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
               rngs=rngs).astype(jnp.float32)


def _token_losses(out, batch):
  mask = batch["label_mask"] * batch["weights"][:, None]
  return optax.softmax_cross_entropy_with_integer_labels(out, batch["labels"]) * mask, mask


def train_loss(model, batch, rngs):
  """Mean cross-entropy over the labelled tokens; their accuracy for the progress bar."""
  out = logits(model, batch, rngs)
  losses, mask = _token_losses(out, batch)
  count = mask.sum()
  correct = ((out.argmax(-1) == batch["labels"]) * mask).sum()
  denominator = jnp.maximum(count, 1.0)
  return losses.sum() / denominator, {"token_accuracy": correct / denominator,
                                      "loss_weight": count}


def row_outputs(model, batch):
  """Per sentence: predicted label ids [B, T], summed loss and labelled-token count, its row."""
  out = logits(model, batch)
  losses, mask = _token_losses(out, batch)
  return {"predictions": out.argmax(-1).astype(jnp.int32), "label_mask": batch["label_mask"],
          "loss": losses.sum(-1), "count": mask.sum(-1), "index": batch["index"]}


def _f1(precision: float, recall: float) -> float:
  return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict:
  """Strict IOB2 entity precision / recall / F1, micro and per type (seqeval's numbers)."""
  per_type: dict[str, list[int]] = {}  # type -> [true positives, predicted, gold]
  for g, p in zip(gold, predicted):
    g_set, p_set = iob2.entities(g), iob2.entities(p)
    for kind in {e[0] for e in g_set | p_set}:
      counts = per_type.setdefault(kind, [0, 0, 0])
      counts[0] += len({e for e in g_set & p_set if e[0] == kind})
      counts[1] += len({e for e in p_set if e[0] == kind})
      counts[2] += len({e for e in g_set if e[0] == kind})
  tp, n_pred, n_gold = (sum(c[i] for c in per_type.values()) for i in range(3))
  precision = tp / n_pred if n_pred else 0.0
  recall = tp / n_gold if n_gold else 0.0
  types = {}
  for kind, (t, n_p, n_g) in sorted(per_type.items()):
    p_k, r_k = (t / n_p if n_p else 0.0), (t / n_g if n_g else 0.0)
    types[kind] = {"precision": p_k, "recall": r_k, "f1": _f1(p_k, r_k), "support": n_g}
  gold_types = [v["f1"] for v in types.values() if v["support"]]
  return {"entity_precision": precision, "entity_recall": recall,
          "entity_f1": _f1(precision, recall),
          "macro_entity_f1": float(np.mean(gold_types)) if gold_types else 0.0,
          "num_gold_entities": n_gold, "num_predicted_entities": n_pred, "per_type": types}


def metrics_from_rows(outputs: list[dict], dataset, split: str) -> dict:
  """The split's metrics from every sentence's predictions (see the module doc)."""
  cat = lambda k: np.concatenate([np.asarray(o[k]) for o in outputs])
  index = cat("index")
  real = index >= 0
  rows = dataset.rows(split)
  predictions, label_mask = cat("predictions")[real], cat("label_mask")[real]
  gold, predicted = [], []
  correct = 0
  for row_index, pred, mask in zip(index[real], predictions, label_mask):
    row = rows[int(row_index)]
    first = pred[mask > 0]  # one prediction per kept word, in word order
    tags = [dataset.label_names[int(i)] for i in first]
    tags += ["O"] * (len(row["tags"]) - len(tags))  # words cut off by max_length
    correct += sum(t == g for t, g in zip(tags[:len(first)], row["tags"]))
    gold.append(row["tags"])
    predicted.append(tags)
  if len(gold) != len(rows):
    raise ValueError(f"scored {len(gold)} sentences of split '{split}', which has {len(rows)}")
  count = float(cat("count")[real].sum())
  out = entity_scores(gold, predicted)
  out.update(loss=float(cat("loss")[real].sum()) / max(count, 1.0),
             token_accuracy=correct / max(count, 1.0), num_examples=len(gold),
             num_labelled_tokens=int(count))
  return out
