"""Training: the state and its construction (`state`), the pure steps and the evaluator
(`steps`), the loop (`loop`) and restoring a workdir's checkpoints (`restore`).

The names below are the package's public API, used by the entry points and experiments.
"""

from ftjax.train import reward_model as _reward_model  # registers the `reward_model` reward
from ftjax.train.batches import Policy, stop_token_ids
from ftjax.train.loop import train_and_evaluate
from ftjax.train.restore import (CHECKPOINTS, load_workdir_config, model_from_state,
                                 parse_checkpoint, restore_state)
from ftjax.train.state import (Experiment, TrainState, build_experiment, count_params,
                               load_experiment, local_batch_size, plan_experiment,
                               trainable_filter)
from ftjax.train.steps import Evaluator, make_eval_step, make_train_step

__all__ = ["CHECKPOINTS", "Evaluator", "Experiment", "Policy", "TrainState", "build_experiment",
           "count_params", "load_experiment", "load_workdir_config", "local_batch_size", "make_eval_step", "make_train_step",
           "model_from_state", "parse_checkpoint", "plan_experiment", "restore_state", "stop_token_ids",
           "train_and_evaluate", "trainable_filter"]
