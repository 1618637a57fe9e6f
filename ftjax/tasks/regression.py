"""Regression (objective `regression`): one number per text, e.g. a rating.

The model is the sequence classifier with one output (`model.task = "classification"`, HF's
`problem_type = "regression"`, which the export writes); the loss is the mean squared error
(`MSELoss`). Evaluation collects every prediction (`row_outputs`) and reports the MSE, RMSE and
MAE, and the Pearson and Spearman correlations with the targets over the whole split
(`metrics_from_rows`: correlations are not sums).
"""

from __future__ import annotations

import sys

import jax.numpy as jnp
import numpy as np

from ftjax import metrics as metrics_lib

MODEL_TASK = "classification"
PROBLEM_TYPE = "regression"  # config.json's, for transformers' loss
uses_reference = False
HEADLINE_METRICS = ("rmse", "pearson", "spearman")
METRICS = {"mse": "min", "rmse": "min", "mae": "min", "loss": "min", "pearson": "max",
           "spearman": "max"}


def configure(cfg):
  del cfg  # no options
  return sys.modules[__name__]


def load_data(data_cfg, tokenizer, *, seed: int):
  from ftjax.data.targets import load_target_data  # pylint: disable=g-import-not-at-top
  return load_target_data(data_cfg, tokenizer, seed=seed, kind="regression")


def model_kwargs(dataset) -> dict:
  del dataset
  return {"num_labels": 1}


def batch_counts(local_batch) -> tuple[int, int]:
  return int(local_batch["weights"].sum()), int(local_batch["attention_mask"].sum())


def predict(model, batch, rngs=None):
  return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
               rngs=rngs).astype(jnp.float32)[:, 0]


def train_loss(model, batch, rngs):
  weights = batch["weights"]
  squared = jnp.square(predict(model, batch, rngs) - batch["targets"])
  return (squared * weights).sum() / jnp.maximum(weights.sum(), 1.0), {"loss_weight": weights.sum()}


def row_outputs(model, batch):
  return {"predictions": predict(model, batch), "index": batch["index"]}


def metrics_from_rows(outputs: list[dict], dataset, split: str) -> dict:
  index = np.concatenate([np.asarray(o["index"]) for o in outputs])
  predictions = np.concatenate([np.asarray(o["predictions"]) for o in outputs])
  real = index >= 0
  order = np.argsort(index[real], kind="stable")
  predictions = predictions[real][order].astype(np.float64)
  targets = dataset.targets(split).astype(np.float64)
  if len(predictions) != len(targets):
    raise ValueError(f"predicted {len(predictions)} rows of split '{split}', which has "
                     f"{len(targets)}")
  errors = predictions - targets
  mse = float(np.mean(errors ** 2))
  return {"mse": mse, "loss": mse, "rmse": mse ** 0.5, "mae": float(np.mean(np.abs(errors))),
          "pearson": metrics_lib.pearson(predictions, targets),
          "spearman": metrics_lib.spearman(predictions, targets), "num_examples": len(targets)}
