"""Data quality report of a config's dataset (library: `ftjax.reports.data_quality`).

  python -m ftjax.data_report --config configs/quickstart.py [--out report.json] [--workdir DIR] \
      [--config.K=V ...]

prints the report as markdown, writes the JSON to `--out`, and both files to `--workdir`.
"""

from __future__ import annotations

import logging
import pathlib

from absl import flags

from ftjax import cli, sources, tasks
from ftjax.data.tokenization import load_tokenizer
from ftjax.errors import UserError
from ftjax.metric_writers import write_json
from ftjax.reports import data_quality

def _report(cfg) -> None:
  if tasks.objective_name(cfg) not in data_quality.SECTIONS:
    raise UserError(f"no data report for objective '{tasks.objective_name(cfg)}' yet (config key "
                    "objective.name)")
  tokenizer = load_tokenizer(sources.resolve(cfg.model.checkpoint))
  dataset = tasks.for_config(cfg).load_data(cfg.data, tokenizer, seed=cfg.seed)
  if cli.FLAGS.workdir:
    report = data_quality.write(cli.FLAGS.workdir, dataset, tokenizer, cfg)
  else:
    report = data_quality.build(dataset, tokenizer, cfg)
  if cli.FLAGS.out:
    out = pathlib.Path(cli.FLAGS.out)
    try:
      write_json(out, report)
    except OSError as e:
      raise UserError(f"--out '{out}' is not writable: {e.strerror}") from None
  print(data_quality.markdown(report), end="")


def run() -> None:
  flags.DEFINE_string("out", None, "Write the JSON report here (the markdown goes to stdout).")
  cli.run_config_command(_report, log_level=logging.WARNING,
                         optional_workdir=True)  # if given, the files are written there too


if __name__ == "__main__":
  run()
