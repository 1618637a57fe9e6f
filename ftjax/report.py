"""End-of-training report of a workdir (library: `ftjax.reports.run_report`).

  python -m ftjax.report --workdir runs/quickstart

writes `report.md` and its PNG plots from the workdir's files alone.
"""

from __future__ import annotations

import argparse
import sys

from ftjax.errors import EXIT_USER_ERROR, exit_on_user_error
from ftjax.paths import as_path
from ftjax.reports import run_report


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  args = parser.parse_args()
  with exit_on_user_error():
    workdir = as_path(args.workdir)
  if not workdir.is_dir():
    print(f"error: workdir '{workdir}' does not exist", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
  print(f"wrote {run_report.write(workdir)}")


if __name__ == "__main__":
  main()
