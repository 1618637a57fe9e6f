"""Train and evaluate: `python -m ftjax.main --config configs/x.py[:arg] --workdir DIR [--config.K=V ...]`.

Rerunning the same command on the same workdir resumes from the latest checkpoint.
"""

if __name__ == "__main__":  # before the heavy imports, which a re-exec would repeat
  from ftjax import malloc_tuning  # pylint: disable=g-import-not-at-top
  malloc_tuning.reexec_with_huge_pages()

from ftjax import cli, sharding, train


def _train(cfg) -> None:
  sharding.initialize_distributed(cli.FLAGS.coordinator_address, cli.FLAGS.num_processes,
                                  cli.FLAGS.process_id)
  train.train_and_evaluate(cfg, cli.FLAGS.workdir)


def run() -> None:
  cli.run_config_command(_train)


if __name__ == "__main__":
  run()
