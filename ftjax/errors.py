"""User-facing errors.

A `UserError` is raised for anything the user can fix (bad config, data, weights or path).
Entry points catch it, print one line `error: <message>` to stderr and exit with status 2.
The message must name the culprit: the file (and line), the config key, or the tensor.
"""

import contextlib
import sys


class UserError(Exception):
  """A problem with the user's input; reported as one `error:` line and exit status 2."""


class RunError(Exception):
  """A run that cannot go on (e.g. non-finite loss under `train.on_nan=halt`); exit status 1."""


EXIT_USER_ERROR = 2
EXIT_RUN_ERROR = 1


@contextlib.contextmanager
def exit_on_user_error():
  """Turns a `UserError` (`RunError`) raised inside the block into `error: ...` and exit 2 (1)."""
  try:
    yield
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)
  except RunError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(EXIT_RUN_ERROR)


def parse_absl_flags(argv: list[str]) -> list[str]:
  """absl flag parsing for `app.run(flags_parser=...)`: a bad flag is a user error (exit 2)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
