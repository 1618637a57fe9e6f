"""Tasks: what a model is trained to do, chosen by `config.model.task`.

A task is a module that provides (see `classification.py`, the reference):
  MODEL_TASK                            the head `models.registry.build_model` builds
  load_data(data_cfg, tokenizer, *, seed) -> dataset with train_iterator / eval_batches /
                                           split_sizes (the Grain pipeline for the task)
  model_kwargs(dataset) -> dict         extra build_model arguments (e.g. num_labels)
  train_loss(model, batch, rngs) -> (loss, aux metrics)      inside the jitted train step;
                                        aux["loss_weight"] = what the mean loss averages over
                                        (examples, tokens), for exact gradient accumulation
  eval_sums(model, batch, dataset) -> pytree of sums         inside the jitted eval step
  finalize(sums) -> dict of metrics     on the host, after a whole split
  batch_counts(local_batch) -> (examples, tokens)            for throughput, on the host
  HEADLINE_METRICS                      metrics printed after each evaluation
  METRICS                               {scalar eval metric `eval.metric` may name: "max"/"min"}
"""

import importlib

from ftjax.errors import UserError

_TASKS = {
    "classification": "ftjax.tasks.classification",
    "causal_lm": "ftjax.tasks.causal_lm",
}


def names() -> list[str]:
  return sorted(_TASKS)


def get(name: str):
  if name not in _TASKS:
    raise UserError(f"unknown task '{name}' (config key model.task); known: {', '.join(names())}")
  return importlib.import_module(_TASKS[name])
