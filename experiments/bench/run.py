"""ftjax vs PyTorch (transformers + peft, eager) on the same workloads, in one run.

  python experiments/bench/run.py                              # everything (~15-20 min, 2 CPUs)
  python experiments/bench/run.py --only=minilm_full,minilm_lora --steps=5
  python experiments/bench/run.py --only=gen_b1 --frameworks=ftjax --out=/tmp/gen.json

Each (workload, framework) runs in its own `worker.py` process (own peak RSS, clean allocator),
one after the other; the matmul peaks (`jnp.dot` and `torch.mm`, n^3 in --dtype) are measured in the
same run. Prints markdown tables (training, generation, targets) and writes every raw number to
`--out` (JSON). See README.md for what each column means and the formulas.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import worker  # pylint: disable=g-import-not-at-top,wrong-import-position

FRAMEWORKS = ("ftjax", "torch")


def _tunables(results: dict, framework: str) -> str:
  """The glibc tunables the framework's workers ran with (ftjax's: huge pages, as its entry
  points set them; PyTorch's: the environment's)."""
  return next((r.get("glibc_tunables", "") for (_, f), r in results.items() if f == framework), "")


def run_worker(argv: list[str], log_path: pathlib.Path, timeout: float | None) -> dict:
  """Runs worker.py with `argv`; returns its result dict or {"error": ...}."""
  cmd = [sys.executable, str(HERE / "worker.py"), *argv]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
  start = time.perf_counter()
  try:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, timeout=timeout, check=False)
    output, code = proc.stdout, proc.returncode
  except subprocess.TimeoutExpired as e:
    output = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    code = "timeout"
  log_path.write_text(" ".join(cmd) + "\n\n" + output)
  wall = time.perf_counter() - start
  for line in reversed(output.splitlines()):
    if line.startswith(worker.RESULT_PREFIX):
      result = json.loads(line[len(worker.RESULT_PREFIX):])
      result["process_wall_s"] = wall
      return result
  tail = "\n".join(output.splitlines()[-15:])
  return {"error": f"exit {code}; see {log_path}", "tail": tail, "process_wall_s": wall}


# ------------------------------------------------------------------------------------ tables

def _fmt(x, spec=".0f", missing="–"):
  return missing if x is None else format(x, spec)


def _ratio(a, b):
  return a / b if a and b else None


def _get(results, workload, framework):
  r = results.get((workload, framework))
  return r if r and "error" not in r else None


def _xla_mib(r):
  """The compiled step's own memory: its arguments (the TrainState and batch) plus XLA's temp."""
  m = r.get("xla_memory_mib") or {}
  if "temp_size_in_bytes" not in m:
    return None
  return m["argument_size_in_bytes"] + m["temp_size_in_bytes"]


def train_rows(results, peak):
  rows = []
  for name, w in common.WORKLOADS.items():
    if w.kind != "train" or not any((name, f) in results for f in FRAMEWORKS):
      continue
    flops = common.train_flops(w)
    row = {"workload": name, "flops": flops}
    for f in FRAMEWORKS:
      r = _get(results, name, f)
      if r:
        scanned = any(o.replace(" ", "").lower() == "model.scan_layers=true"
                      for o in r.get("overrides", []))
        row[f] = {"tok_s": flops["tokens"] / r["median_s"], "step_ms": 1e3 * r["median_s"],
                  "mfu": flops["flops"] / r["median_s"] / (peak * 1e9) if peak else None,
                  "rss": r["rss_peak_mib"], "rss_run": r["rss_run_mib"],
                  "compile_s": (r.get("lower_s", 0) + r.get("compile_s", 0)
                                if f == "ftjax" else None),
                  "first_step_s": r["first_step_s"],
                  "xla_flops": None if scanned else r.get("xla_flops"),  # a scan body counts once
                  "xla_mib": _xla_mib(r), "device_mib": r.get("device_peak_mib")}
    rows.append(row)
  return rows


def gen_rows(results):
  rows = []
  for name, w in common.WORKLOADS.items():
    if w.kind != "generate" or not any((name, f) in results for f in FRAMEWORKS):
      continue
    row = {"workload": name}
    for f in FRAMEWORKS:
      r = _get(results, name, f)
      if r:
        row[f] = {"tok_s": w.batch * w.new_tokens / r["median_s"], "call_s": r["median_s"],
                  "ms_per_step": 1e3 * r["median_s"] / w.new_tokens,  # one token for every row
                  "compile_s": r.get("compile_s"), "first_s": r["first_call_s"],
                  "rss": r["rss_peak_mib"]}
    rows.append(row)
  return rows


def train_table(rows) -> str:
  # On an accelerator the memory that matters is the device's: each side's peak, as its
  # allocator reports it (JAX's peak_bytes_in_use, torch.cuda.max_memory_allocated).
  device = any(row.get(f, {}).get("device_mib") for row in rows for f in FRAMEWORKS)
  head = ("| workload | ftjax tok/s | PyTorch tok/s | ftjax / PyTorch | ftjax step (ms) | "
          "PyTorch step (ms) | ftjax compile (s) | model GFLOP / step (XLA) | ftjax MFU | "
          "PyTorch MFU | ftjax peak RSS (MiB) | PyTorch peak RSS (MiB) | ftjax step memory (MiB) |"
          + (" ftjax device peak (MiB) | PyTorch device peak (MiB) |" if device else ""))
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for row in rows:
    j, t = row.get("ftjax", {}), row.get("torch", {})
    xla = j.get("xla_flops")
    lines.append("| " + " | ".join([
        row["workload"], _fmt(j.get("tok_s")), _fmt(t.get("tok_s")),
        _fmt(_ratio(j.get("tok_s"), t.get("tok_s")), ".2f"), _fmt(j.get("step_ms")),
        _fmt(t.get("step_ms")), _fmt(j.get("compile_s"), ".1f"),
        f"{row['flops']['flops'] / 1e9:.1f} ({_fmt(xla and xla / 1e9, '.1f')})",
        _fmt(j.get("mfu") and 100 * j["mfu"], ".1f") + ("%" if j.get("mfu") else ""),
        _fmt(t.get("mfu") and 100 * t["mfu"], ".1f") + ("%" if t.get("mfu") else ""),
        _fmt(j.get("rss")), _fmt(t.get("rss")), _fmt(j.get("xla_mib"))]
        + ([_fmt(j.get("device_mib")), _fmt(t.get("device_mib"))] if device else [])) + " |")
  return "\n".join(lines)


def gen_table(rows) -> str:
  head = ("| workload | ftjax tok/s | transformers tok/s | ftjax / transformers | ftjax ms/step | "
          "transformers ms/step | ftjax compile (s) | ftjax peak RSS (MiB) | "
          "transformers peak RSS (MiB) |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for row in rows:
    j, t = row.get("ftjax", {}), row.get("torch", {})
    lines.append("| " + " | ".join([
        row["workload"], _fmt(j.get("tok_s"), ".1f"), _fmt(t.get("tok_s"), ".1f"),
        _fmt(_ratio(j.get("tok_s"), t.get("tok_s")), ".2f"), _fmt(j.get("ms_per_step"), ".1f"),
        _fmt(t.get("ms_per_step"), ".1f"), _fmt(j.get("compile_s"), ".1f"), _fmt(j.get("rss")),
        _fmt(t.get("rss"))]) + " |")
  return "\n".join(lines)


def targets(train, gen) -> list[tuple[str, str, str, bool | None]]:
  """(target, required, measured, met) for what this run measured."""
  out = []
  by = {r["workload"]: r for r in train}
  for r in train:
    ratio = _ratio(r.get("ftjax", {}).get("tok_s"), r.get("torch", {}).get("tok_s"))
    out.append((f"{r['workload']}: ftjax / PyTorch tokens/s", f">= {common.TRAIN_SPEEDUP}",
                _fmt(ratio, ".2f"), None if ratio is None else ratio >= common.TRAIN_SPEEDUP))
  full = by.get("smollm2_full", {}).get("ftjax", {})
  if full.get("mfu") is not None:
    out.append(("smollm2_full: ftjax MFU", f">= {100 * common.FULL_MFU:.0f}%",
                f"{100 * full['mfu']:.1f}%", full["mfu"] >= common.FULL_MFU))
  for model in ("minilm", "smollm2"):
    f, l = by.get(f"{model}_full", {}).get("ftjax"), by.get(f"{model}_lora", {}).get("ftjax")
    if f and l:
      step = l["step_ms"] / f["step_ms"]
      out.append((f"{model}: ftjax LoRA step / full step", f"<= {common.LORA_STEP_RATIO}",
                  f"{step:.2f}", step <= common.LORA_STEP_RATIO))
      mem = l["rss"] / f["rss"]
      out.append((f"{model}: ftjax LoRA peak RSS / full", f"<= {common.LORA_MEMORY_RATIO}",
                  f"{mem:.2f}", mem <= common.LORA_MEMORY_RATIO))
      if l.get("xla_mib") and f.get("xla_mib"):
        xla = l["xla_mib"] / f["xla_mib"]
        out.append((f"{model}: ftjax LoRA step memory / full (XLA arguments + temp)",
                    f"<= {common.LORA_MEMORY_RATIO}", f"{xla:.2f}",
                    xla <= common.LORA_MEMORY_RATIO))
  for r in gen:
    ratio = _ratio(r.get("ftjax", {}).get("tok_s"), r.get("torch", {}).get("tok_s"))
    out.append((f"{r['workload']}: ftjax / transformers tokens/s", f">= {common.GEN_SPEEDUP}",
                _fmt(ratio, ".2f"), None if ratio is None else ratio >= common.GEN_SPEEDUP))
  return out


def targets_table(rows) -> str:
  lines = ["| target | required | measured | met |", "|---|---|---|---|"]
  for name, need, got, met in rows:
    verdict = "–" if met is None else ("yes" if met else "NO")
    lines.append(f"| {name} | {need} | {got} | {verdict} |")
  return "\n".join(lines)


# ------------------------------------------------------------------------------------ main

def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--only", default="",
                 help=f"comma-separated subset of: {', '.join(common.WORKLOADS)}")
  p.add_argument("--frameworks", default="ftjax,torch")
  p.add_argument("--steps", type=int, default=7, help="timed training steps (median reported)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps / generate calls first")
  p.add_argument("--gen_repeats", type=int, default=3, help="timed generate calls (median)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
  p.add_argument("--torch_adamw", default="fused", choices=("fused", "foreach", "loop"))
  p.add_argument("--skip_peak", action="store_true", help="no matmul peak (no MFU)")
  p.add_argument("--peak_n", type=int, default=4096,
                 help="matmul peak: n x n by n x n in --dtype (8192 on a GPU)")
  p.add_argument("--workdir", default=None,
                 help="checkpoints and logs (default $FTJAX_CACHE/bench)")
  p.add_argument("--timeout", type=float, default=None, help="seconds per worker process")
  p.add_argument("--ftjax_config", action="append", default=[],
                 help="KEY=VALUE ftjax config override for the training rows (repeatable), e.g. "
                 "model.scan_layers=true")
  p.add_argument("--preload", default="", help="Python file run first in every ftjax worker "
                 "(monkeypatches for A/B experiments; recorded in the results)")
  p.add_argument("--out", default="", help="write all results as JSON here")
  args = p.parse_args(argv)

  names = [n for n in args.only.split(",") if n] or list(common.DEFAULT)
  unknown = [n for n in names if n not in common.WORKLOADS]
  if unknown:
    print(f"error: unknown workload(s) {', '.join(unknown)}; choose from "
          f"{', '.join(common.WORKLOADS)}", file=sys.stderr)
    return 2
  frameworks = [f for f in args.frameworks.split(",") if f]
  if not frameworks or any(f not in FRAMEWORKS for f in frameworks):
    print(f"error: --frameworks must be a subset of {','.join(FRAMEWORKS)}", file=sys.stderr)
    return 2
  workdir = pathlib.Path(args.workdir or pathlib.Path(
      os.environ.get("FTJAX_CACHE", "~/.cache/ftjax")) / "bench").expanduser()
  logs = workdir / "logs"
  logs.mkdir(parents=True, exist_ok=True)
  start = time.perf_counter()
  load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  if load_start is not None and load_start > 0.5:
    print(f"warning: load average {load_start:.1f} before the bench: other processes share the "
          "CPUs, so timings (PyTorch's above all: OpenMP threads spin when a core is taken) are "
          "not a quiet-machine measurement", file=sys.stderr)

  models = sorted({common.WORKLOADS[n].model for n in names})
  setup = run_worker(["--setup", "--workdir", str(workdir), "--models", ",".join(models)],
                     logs / "setup.log", args.timeout)
  if "error" in setup:
    print(f"error: checkpoint setup failed: {setup['error']}\n{setup.get('tail', '')}",
          file=sys.stderr)
    return 1
  print(f"checkpoints in {workdir}: {setup['setup']}", flush=True)

  common_args = ["--workdir", str(workdir), "--steps", str(args.steps),
                 "--warmup", str(args.warmup),
                 "--gen_repeats", str(args.gen_repeats), "--dtype", args.dtype,
                 "--threads", str(args.threads), "--torch_adamw", args.torch_adamw,
                 "--peak_n", str(args.peak_n)]
  # The matmul peaks are measured first and last; the best of the two is the peak.
  jobs = [] if args.skip_peak else [("peak", f) for f in FRAMEWORKS]
  jobs += [(n, f) for n in names for f in frameworks]
  jobs += [] if args.skip_peak else [("peak_end", f) for f in FRAMEWORKS]
  results = {}
  for name, framework in jobs:
    if name == "peak_end":
      r = run_worker(["--workload", "peak", "--framework", framework, *common_args],
                     logs / f"peak_end.{framework}.log", args.timeout)
      results[(name, framework)] = r
      if "error" not in r:
        print(f"  {'peak (end)':14s} {framework:6s} {r['gflops']:.0f} GFLOP/s {args.dtype} matmul",
              flush=True)
      continue
    extra = []
    if framework == "ftjax":
      if args.preload:
        extra += ["--preload", str(pathlib.Path(args.preload).resolve())]
      for item in args.ftjax_config:
        extra += ["--ftjax_config", item]
    r = run_worker(["--workload", name, "--framework", framework, *common_args, *extra],
                   logs / f"{name}.{framework}.log", args.timeout)
    results[(name, framework)] = r
    if args.out:  # what a run cut short still leaves behind
      pathlib.Path(args.out + ".partial").write_text(json.dumps(
          [{"workload": n, "framework": f, **x} for (n, f), x in results.items()]) + "\n")
    if "error" in r:
      print(f"  {name:14s} {framework:6s} FAILED: {r['error']}\n{r['tail']}", flush=True)
    elif name == "peak":
      print(f"  {name:14s} {framework:6s} {r['gflops']:.0f} GFLOP/s {args.dtype} matmul", flush=True)
    else:
      print(f"  {name:14s} {framework:6s} median {r['median_s'] * 1e3:.0f} ms "
            f"(min {r['min_s'] * 1e3:.0f}, max {r['max_s'] * 1e3:.0f}), peak RSS "
            f"{r['rss_peak_mib']:.0f} MiB  [{r['process_wall_s']:.0f} s]", flush=True)

  def best_peak(framework):
    found = [r["gflops"] for r in (_get(results, "peak", framework),
                                   _get(results, "peak_end", framework)) if r]
    return max(found) if found else None

  peak, peak_torch = best_peak("ftjax"), best_peak("torch")
  train = train_rows(results, peak)
  gen = gen_rows(results)
  goals = targets(train, gen)
  wall = time.perf_counter() - start
  load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

  import importlib.metadata as md  # pylint: disable=g-import-not-at-top
  versions = {}
  for pkg in ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "peft"):
    try:
      versions[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      versions[pkg] = None
  threads = next((r["threads"] for (_, f), r in results.items()
                  if f == "torch" and r.get("threads")), None)
  header = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
            f"dtype {args.dtype}; PyTorch eager, torch.set_num_threads({threads}), AdamW "
            f"{args.torch_adamw}; XLA_FLAGS='{os.environ.get('XLA_FLAGS', '')}'; "
            + f"ftjax workers' GLIBC_TUNABLES '{_tunables(results, 'ftjax')}', PyTorch's "
            f"'{_tunables(results, 'torch')}'; "
            + (f"ftjax preload {args.preload}; " if args.preload else "")
            + (f"ftjax config {' '.join(args.ftjax_config)}; " if args.ftjax_config else "")
            + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
  peaks = (f"matmul peak ({args.peak_n}^2 {args.dtype}, best of 5 at the start and 5 at the end): jnp.dot "
           f"{_fmt(peak, '.0f')} GFLOP/s, torch.mm {_fmt(peak_torch, '.0f')} GFLOP/s; MFU (both "
           "columns) is against jnp.dot's.")
  out = [header, "", peaks, ""]
  if train:
    out += [f"Training: median of {args.steps} steps after {args.warmup} warm-up steps.", "",
            train_table(train), ""]
  if gen:
    out += [f"Generation: prompt 32 tokens, 128 new tokens forced (greedy), median of "
            f"{args.gen_repeats} calls after {args.warmup} warm-up call(s); ms/step = call time / "
            "128 (prefill included; one step makes one token for every row).", "",
            gen_table(gen), ""]
  if goals:
    out += [targets_table(goals), ""]
  out.append(f"bench wall time: {wall / 60:.1f} min; 1-minute load average "
             f"{_fmt(load_start, '.1f')} "
             f"at the start, {_fmt(load_end, '.1f')} at the end (a quiet machine is ~0; the bench "
             "itself adds ~1-2).")
  text = "\n".join(out)
  print("\n" + text, flush=True)

  if args.out:
    payload = {"header": header, "versions": versions, "args": vars(args), "wall_s": wall,
               "load_average": {"start": load_start, "end": load_end},
               "peak_gflops": {"ftjax": peak, "torch": peak_torch},
               "train": train, "generate": gen,
               "targets": [dict(zip(("target", "required", "measured", "met"), g)) for g in goals],
               "raw": [{"workload": n, "framework": f, **r} for (n, f), r in results.items()],
               "markdown": text}
    pathlib.Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    print(f"results written to {args.out}")
  return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
  sys.exit(main())
