"""Objectives: what a model is trained to minimise, chosen by `config.objective.name`.

`model.task` names the model's *head* (`classification`: a sequence classifier; `causal_lm`: a
language model; `token_classification`: a label per token; `multiple_choice`: a score per
(question, choice); `question_answering`: an answer span's start and end; `base`: the bare
encoder); the
objective names the *loss and data* on that head. `objective.name = ""` (the default) is the
head's own objective: `classification` (cross-entropy on labels), `sft` (next-token loss on
assistant tokens), `token_classification` (cross-entropy on each word's first token, entity F1),
`multiple_choice` (cross-entropy over the choices), `question_answering` (span start and end
cross-entropies, SQuAD exact match and F1) or `embedding`. Others train the same heads on other data (`preference`:
DPO and its family on a causal LM; `reward`: a Bradley-Terry reward model on a one-label
classifier; `multi_label` and `regression`: the sequence classifier with sigmoid/BCE or MSE; `distill`: either head taught by a frozen teacher; `grpo`: RL on a causal LM's own
samples, scored by reward functions; `embedding`: a bare encoder, `model.task = "base"`, pooled
into sentence embeddings and trained contrastively on text pairs); an objective names its head
in `MODEL_TASK` and a run whose `model.task` differs is refused. Options live under `objective.<name>.*`.

An objective is a module that provides (see `classification.py`, the reference):
  MODEL_TASK                            the head `models.registry.build_model` builds (a module
                                        for several heads lists them in `MODEL_TASKS`, and the
                                        object `configure` returns names the run's)
  configure(cfg) -> objective           the module itself, or an object with the same names
                                        whose losses are bound to the run's options
  uses_reference                        True: the train state holds a frozen copy of the step-0
                                        trainable parameters and the losses get the model they
                                        make as `reference=` (DPO's reference policy)
  teacher_checkpoint, bind_teacher      optional: a model source the trainer builds frozen, with
                                        this head, into `TrainState.teacher` (never checkpointed);
                                        `bind_teacher(graphdef)` is the objective whose losses get
                                        that model as `teacher=` (distillation's teacher)
  load_data(data_cfg, tokenizer, *, seed) -> dataset with train_iterator / eval_batches /
                                           split_sizes (the Grain pipeline for the objective)
  model_kwargs(dataset) -> dict         extra build_model arguments (e.g. num_labels)
  train_loss(model, batch, rngs[, reference=, teacher=]) -> (loss, aux metrics)
                                        inside the jitted train step; aux["loss_weight"] = what the mean loss averages
                                        over (examples, tokens, pairs), for exact accumulation
  eval_sums(model, batch, dataset[, reference=, teacher=]) -> pytree of sums, in the eval step
  finalize(sums) -> dict of metrics     on the host, after a whole split
  row_outputs, metrics_from_rows        optional, instead of eval_sums / finalize, for metrics
                                        that need the whole split at once (`embedding.py`'s
                                        retrieval): per-row outputs from the jitted step, then
                                        metrics from all of them on the host
  batch_counts(local_batch) -> (examples, tokens)            for throughput, on the host
  rollout, updates_per_rollout, token_logps, eval_generations, train_batch_template
                                        optional, an RL objective's rollout phase (`grpo.py`):
                                        the trainer's batch source makes batches from the current
                                        policy (`ftjax.train.batches`) and its eval generates
  HEADLINE_METRICS                      metrics printed after each evaluation
  METRICS                               {scalar eval metric `eval.metric` may name: "max"/"min"}
"""

import importlib

from ftjax.errors import UserError

# the heads `model.task` may name
MODEL_TASKS = ("classification", "causal_lm", "base", "token_classification", "multiple_choice",
               "question_answering")

_OBJECTIVES = {
    "classification": "ftjax.tasks.classification",
    "sft": "ftjax.tasks.causal_lm",
    "preference": "ftjax.tasks.preference",
    "reward": "ftjax.tasks.reward",
    "distill": "ftjax.tasks.distill",
    "grpo": "ftjax.tasks.grpo",
    "embedding": "ftjax.tasks.embedding",
    "token_classification": "ftjax.tasks.token_classification",
    "multiple_choice": "ftjax.tasks.multiple_choice",
    "question_answering": "ftjax.tasks.question_answering",
    "multi_label": "ftjax.tasks.multi_label",
    "regression": "ftjax.tasks.regression",
}
# model.task -> objective
_DEFAULT = {"classification": "classification", "causal_lm": "sft", "base": "embedding",
            "token_classification": "token_classification", "multiple_choice": "multiple_choice",
            "question_answering": "question_answering"}


def names() -> list[str]:
  """The objectives `objective.name` may name."""
  return sorted(_OBJECTIVES)


def get(name: str):
  """The objective module registered as `name` (a head's name gives its default objective)."""
  name = _DEFAULT.get(name, name) if name not in _OBJECTIVES else name
  if name not in _OBJECTIVES:
    raise UserError(f"unknown objective '{name}' (config key objective.name); known: "
                    f"{', '.join(names())}")
  return importlib.import_module(_OBJECTIVES[name])


def objective_name(cfg) -> str:
  """The run's objective: `objective.name`, or the default of its `model.task`."""
  name = cfg.get("objective", {}).get("name", "")
  return name or _DEFAULT.get(cfg.model.task, cfg.model.task)


def heads(module) -> tuple[str, ...]:
  """The heads (`model.task`) an objective module trains: its `MODEL_TASKS`, or `MODEL_TASK`."""
  return tuple(getattr(module, "MODEL_TASKS", (getattr(module, "MODEL_TASK", ""),)))


def for_config(cfg):
  """The run's objective with its options bound (`configure(cfg)`); refuses a head mismatch."""
  name = objective_name(cfg)
  module = get(name)
  if cfg.model.task not in heads(module):
    raise UserError(f"objective '{name}' trains a {heads(module)[0]} model; set "
                    f"model.task={heads(module)[0]} (got '{cfg.model.task}')")
  return module.configure(cfg)
