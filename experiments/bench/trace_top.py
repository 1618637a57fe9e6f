"""The ops that take the time in a `jax.profiler` trace (worker.py --profile_dir=DIR).

  python experiments/bench/trace_top.py DIR [--top=25] [--steps=N]

Sums the complete events of the newest `perfetto_trace.json.gz` under DIR by name, per
profiler process (`/device:GPU:0` holds the GPU kernels; on CPU the XLA thunks sit in
`/host:CPU`), and prints the top names with their share of that process's summed time and,
with --steps, their time per step. Python-frame events (`$file:line`) and the runtime's
wrapper events are left out, so the shares are of op time.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib

# Wrapper events that contain the ops rather than being ops.
_WRAPPERS = ("ThunkExecutor", "PjitFunction", "SlinkyThreadPool", "PjRt", "TfrtCpu",
             "ExecuteHelper", "XlaModule", "Thunk::")


def op_times(trace_dir: pathlib.Path) -> dict[str, collections.Counter]:
  """{process name: Counter(op name -> summed microseconds)} of the newest trace in trace_dir."""
  files = sorted(trace_dir.glob("**/perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
  if not files:
    raise SystemExit(f"error: no perfetto_trace.json.gz under {trace_dir}")
  data = json.load(gzip.open(files[-1]))
  events = data["traceEvents"] if isinstance(data, dict) else data
  names = {e["pid"]: e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or name.startswith("$") or name.startswith(_WRAPPERS):
      continue
    out[names.get(e["pid"], str(e["pid"]))][name] += float(e.get("dur", 0.0))
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("trace_dir", type=pathlib.Path)
  p.add_argument("--top", type=int, default=25)
  p.add_argument("--steps", type=int, default=0, help="profiled steps (adds a ms/step column)")
  args = p.parse_args()
  for process, times in sorted(op_times(args.trace_dir).items()):
    total = sum(times.values())
    per_step = f", {total / 1e3 / args.steps:.2f} ms/step" if args.steps else ""
    print(f"## {process}: {len(times)} op names, {total / 1e3:.1f} ms summed{per_step}")
    for name, us in times.most_common(args.top):
      step = f" {us / 1e3 / args.steps:9.3f} ms/step" if args.steps else ""
      print(f"{100 * us / total:6.2f}% {us / 1e3:10.2f} ms{step}  {name[:110]}")


if __name__ == "__main__":
  main()
