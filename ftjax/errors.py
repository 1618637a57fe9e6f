"""User-facing errors.

A `UserError` is raised for anything the user can fix (bad config, data, weights or path).
Entry points catch it, print one line `error: <message>` to stderr and exit with status 2.
The message must name the culprit: the file (and line), the config key, or the tensor.
"""

import contextlib
import sys


class UserError(Exception):
  """A problem with the user's input; reported as one `error:` line and exit status 2."""


EXIT_USER_ERROR = 2


@contextlib.contextmanager
def exit_on_user_error():
  """Turns a `UserError` raised inside the block into `error: ...` on stderr and exit 2."""
  try:
    yield
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)
