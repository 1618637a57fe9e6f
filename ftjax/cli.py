"""What ftjax's config-driven commands share: the `--config`/`--workdir` flags, the
multi-process flags, and `run_config_command` (parse, validate, run, exit 2 on a user error).

Only entry points (`ftjax.main`, `ftjax.evaluate`, `ftjax.data_report`, ...) import this module.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging

from ftjax import config as config_lib
from ftjax.errors import exit_on_user_error, parse_absl_flags
from ftjax.train import reward_model as _reward_model  # registers 'reward_model' before configs are checked

FLAGS = flags.FLAGS


def define_config_flags(*, optional_workdir: bool = False) -> None:
  """`--config`, `--workdir` and the multi-process flags; defined when a command runs, not on
  import, so that importing several entry points (as tests do) defines no flag twice."""
  flags.DEFINE_string("config", None, "Config file, `path/to/config.py[:arg]`.", required=True)
  flags.DEFINE_string("workdir", "" if optional_workdir else None,
                      "Directory for checkpoints, metrics and summaries.",
                      required=not optional_workdir)
  flags.DEFINE_string("coordinator_address", None,
                      "Multi-process runs without auto-detection: host:port of process 0's "
                      "coordinator (with --num_processes and --process_id). Cloud TPU VMs need "
                      "none of these.")
  flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")


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


def run_config_command(body, *, log_level: int = logging.INFO,
                       optional_workdir: bool = False) -> None:
  """The entry point of ftjax's config-driven commands (train, evaluate, data_report).

  Parses `--config FILE[:ARG]`, the command's absl flags and `--config.KEY=VALUE` overrides,
  keeps library logs quiet, loads and validates the config, and runs `body(cfg)`; a user error
  anywhere is one `error:` line on stderr and exit status 2.
  """
  define_config_flags(optional_workdir=optional_workdir)
  argv, overrides = split_overrides(sys.argv)

  def main(argv: list[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Orbax and TFDS log every step of every save at INFO; keep the console for ftjax's lines.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("ftjax").setLevel(log_level)
    with exit_on_user_error():
      body(config_lib.load_config(FLAGS.config, overrides))

  app.run(main, argv=argv, flags_parser=parse_absl_flags)
