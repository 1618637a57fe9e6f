"""What a run needs per device, before any weight is read.

  python -m ftjax.plan --config configs/x.py[:arg] [--config.K=V ...]

Plans the experiment (`train.plan_experiment(cfg)`: the model, the
method and the optimizer state as shapes with their shardings; the data is loaded, no weight is
read), compiles the train step on it for the largest batch the data can give, and prints per
device: the bytes of the parameters (trainable and frozen), of the optimizer state, and the
compiled step's arguments, outputs and temporaries (`memory_analysis()`), the mesh, and whether
that fits the device's memory where the backend reports it (GPUs and TPUs do; CPUs do not). A
config that cannot fit is an error naming the largest consumer and the config keys that shrink
it, before any weight has been read. Training runs print and check the same before they read
their weights (`ftjax/train/memory_plan.py`).
"""

from __future__ import annotations

import jax

from ftjax import cli, sharding, train
from ftjax.train import memory_plan


def make_plan(cfg) -> memory_plan.Plan:
  _, _, plan = memory_plan.compile_step(train.plan_experiment(cfg))
  return plan


def _plan(cfg) -> None:
  sharding.initialize_distributed(cli.FLAGS.coordinator_address, cli.FLAGS.num_processes,
                                  cli.FLAGS.process_id)
  plan = make_plan(cfg)
  if jax.process_index() == 0:
    print(memory_plan.report(plan), flush=True)
  memory_plan.check_fits(plan)


def run() -> None:
  cli.run_config_command(_plan, optional_workdir=True)


if __name__ == "__main__":
  run()
