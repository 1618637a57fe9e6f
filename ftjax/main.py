"""Train and evaluate: `python -m ftjax.main --config configs/x.py[:arg] --workdir DIR [--config.K=V ...]`.

Rerunning the same command on the same workdir resumes from the latest checkpoint.
"""

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging

from ftjax.errors import exit_on_user_error, parse_absl_flags

flags.DEFINE_string("config", None, "Config file, `path/to/config.py[:arg]`.", required=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summaries.", required=True)
flags.DEFINE_string("coordinator_address", None,
                    "Multi-process runs without auto-detection: host:port of process 0's coordinator "
                    "(with --num_processes and --process_id). Cloud TPU VMs need none of these.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
FLAGS = flags.FLAGS


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.KEY=VALUE` overrides (validated by ftjax.config) from absl flags."""
  rest, overrides = [], []
  args = iter(argv)
  for arg in args:
    if arg.startswith("--config."):
      body = arg[len("--config."):]
      if "=" not in body:  # `--config.key value`
        body = f"{body}={next(args, '')}"
      overrides.append(body)
    else:
      rest.append(arg)
  return rest, overrides


def run_config_command(body, *, log_level: int = logging.INFO) -> None:
  """The entry point of ftjax's config-driven commands (train, evaluate, data_report).

  Parses `--config FILE[:ARG]`, the command's absl flags and `--config.KEY=VALUE` overrides,
  keeps library logs quiet, loads and validates the config, and runs `body(cfg)`; a user error
  anywhere is one `error:` line on stderr and exit status 2.
  """
  argv, overrides = split_overrides(sys.argv)

  def main(argv: list[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Orbax and TFDS log every step of every save at INFO; keep the console for ftjax's lines.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("ftjax").setLevel(log_level)
    with exit_on_user_error():
      from ftjax import config as config_lib  # pylint: disable=g-import-not-at-top
      body(config_lib.load_config(FLAGS.config, overrides))

  app.run(main, argv=argv, flags_parser=parse_absl_flags)


def _train(cfg) -> None:
  from ftjax import sharding, train  # pylint: disable=g-import-not-at-top
  sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  train.train_and_evaluate(cfg, FLAGS.workdir)


def run() -> None:
  run_config_command(_train)


if __name__ == "__main__":
  run()
