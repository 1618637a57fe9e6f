"""One bench measurement in its own process: a workload in ftjax or in PyTorch, or a matmul peak.

  python experiments/bench/worker.py --setup --workdir DIR           # write the checkpoints
  python experiments/bench/worker.py --workload smollm2_lora --framework ftjax --workdir DIR
  python experiments/bench/worker.py --workload peak --framework torch

`run.py` starts one of these per (workload, framework), so each gets its own peak RSS and a
clean allocator, and reads the last stdout line (`BENCH_RESULT {json}`).

Both frameworks load the same HF checkpoint directory (random init of the real architecture,
written once by `--setup` with transformers, seed 0), so they run the same weights.

Memory: `rss_load_mib` is the process's peak RSS up to the end of model (and optimizer) setup;
then the peak is reset (`/proc/self/clear_refs` 5). ftjax training also records the peak of
lowering + compiling (`rss_compile_mib`) and resets again. `rss_run_mib` is the peak of what
follows (warm-up and timed steps, or every generate call including the first, which compiles);
`rss_peak_mib` is the largest, the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

RESULT_PREFIX = "BENCH_RESULT "


# ------------------------------------------------------------------------------------ memory

def peak_rss_mib() -> float:
  """Peak RSS since start or the last `reset_peak_rss` (Linux VmHWM; else ru_maxrss)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def summarize(times: list[float]) -> dict:
  return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
          "times_s": [round(t, 5) for t in times]}


# ------------------------------------------------------------------------------------ setup

def _write_tokenizer(out: pathlib.Path) -> None:
  """A 4-token placeholder tokenizer: `build_experiment` loads one; the bench feeds token ids."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                       pad_token="[PAD]").save_pretrained(out)


def setup(workdir: pathlib.Path, models: list[str]) -> dict:
  """Writes `workdir/<model>/`: config.json + model.safetensors (transformers' random init of
  the architecture, seed 0) and a placeholder tokenizer."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  done = {}
  for name in models:
    out = workdir / name
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
      done[name] = "exists"
    else:
      torch.manual_seed(0)
      config = transformers.AutoConfig.for_model(**common.MODELS[name])
      cls = (transformers.AutoModelForSequenceClassification if name == "minilm"
             else transformers.AutoModelForCausalLM)
      model = cls.from_config(config)
      tmp = workdir / f".{name}.tmp-{os.getpid()}"
      model.save_pretrained(tmp)
      _write_tokenizer(tmp)
      os.replace(tmp, out)
      done[name] = f"written ({sum(p.numel() for p in model.parameters()):,} params)"
    if not (out / "tokenizer.json").is_file():
      _write_tokenizer(out)
  return done


# ------------------------------------------------------------------------------------ peaks

def peak_ftjax(n: int = 4096, repeats: int = 5, dtype: str = "float32") -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    dot(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  return {"gflops": 2 * n ** 3 / min(times) / 1e9, "n": n, **summarize(times),
          "device": str(jax.devices()[0]), "peak_dtype": dtype}


def peak_torch(n: int = 4096, repeats: int = 5, device: str = "cpu",
               dtype: str = "float32") -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
  b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
  sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
  a @ b
  sync()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    a @ b
    sync()
    times.append(time.perf_counter() - t)
  return {"gflops": 2 * n ** 3 / min(times) / 1e9, "n": n, **summarize(times), "device": device,
          "peak_dtype": dtype}


# ------------------------------------------------------------------------------------ ftjax

class _BenchData:
  """Stands in for a task's dataset in `build_experiment`: the bench feeds its own batches."""
  num_classes = 2
  split_sizes: dict = {}


def ftjax_config(w: common.Workload, ckpt: pathlib.Path, dtype: str = "float32",
                 overrides: tuple[str, ...] = ()):
  """The ftjax config of a training workload (optimizer and LoRA as in `common`)."""
  from ftjax import config as config_lib  # pylint: disable=g-import-not-at-top
  cfg = config_lib.base_config()
  cfg.model.checkpoint = str(ckpt)
  cfg.model.task = "classification" if w.model == "minilm" else "causal_lm"
  cfg.model.dtype = cfg.model.param_dtype = dtype
  cfg.method.name = w.method
  cfg.method.lora.rank = common.LORA["rank"]
  cfg.method.lora.alpha = common.LORA["alpha"]
  cfg.optimizer.lr = common.LR
  cfg.optimizer.schedule = "constant"
  cfg.optimizer.weight_decay = common.WEIGHT_DECAY
  cfg.optimizer.clip_norm = common.CLIP_NORM
  cfg.train.steps = 1_000_000
  cfg.train.batch_size = w.batch
  cfg.data.max_length = w.seq
  if cfg.model.task == "causal_lm":
    cfg.eval.metric, cfg.eval.mode = "loss", "min"
  for item in overrides:  # e.g. model.remat=dots_saveable, parsed like the trainer's flags
    key, _, value = item.partition("=")
    node = cfg
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    old = node[leaf]
    node[leaf] = type(old)(value) if not isinstance(old, bool) else value.lower() in ("1", "true")
  return cfg


def build_ftjax_train(w: common.Workload, ckpt: pathlib.Path, dtype: str = "float32",
                      overrides: tuple[str, ...] = ()):
  """ftjax's own trainer objects: `build_experiment` and the jitted `make_train_step`.

  Everything is the trainer's (`ftjax.train.build_experiment`: model from the HF directory via
  `models.registry`, the method, optimizer, mesh, shardings, TrainState; then the same `jax.jit`
  with shardings and donation as `train_and_evaluate`) except the data: the task's `load_data`
  is replaced by a stub and one fixed device batch is fed every step, as on the PyTorch side.

  Returns (jitted step, state, batch, info dict).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ftjax import sharding, tasks  # pylint: disable=g-import-not-at-top
  from ftjax import train as train_lib  # pylint: disable=g-import-not-at-top

  cfg = ftjax_config(w, ckpt, dtype, overrides)
  task = tasks.get(cfg.model.task)
  task.load_data = lambda data_cfg, tokenizer, *, seed: _BenchData()
  exp = train_lib.build_experiment(cfg)

  rng = np.random.default_rng(0)
  b, t = w.batch, w.seq
  vocab = common.MODELS[w.model]["vocab_size"]
  if cfg.model.task == "classification":
    local = {"input_ids": rng.integers(1000, vocab, (b, t)).astype(np.int32),
             "attention_mask": np.ones((b, t), np.int32),
             "token_type_ids": np.zeros((b, t), np.int32),
             "labels": rng.integers(0, 2, (b,)).astype(np.int32),
             "weights": np.ones((b,), np.float32)}
  else:  # one sequence per row, every token a loss token (the chat pipeline's batch layout)
    tokens = rng.integers(3, vocab, (b, t + 1)).astype(np.int32)
    local = {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:],
             "attention_mask": np.ones((b, t), np.int32),
             "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
             "segment_ids": np.ones((b, t), np.int32),
             "loss_mask": np.ones((b, t), np.int32)}
  batch_sharding = sharding.batch_sharding(exp.mesh)
  batch = sharding.put_batch(local, batch_sharding)
  state = exp.state
  jax.block_until_ready((state, batch))
  step_fn = jax.jit(train_lib.make_train_step(exp.graphdef, exp.tx, exp.schedule, exp.task,
                                              cfg.train.grad_accum_steps),
                    in_shardings=(exp.state_shardings, batch_sharding),
                    out_shardings=(exp.state_shardings, sharding.replicated(exp.mesh)),
                    donate_argnums=0)
  info = {"params": exp.param_counts, "overrides": list(overrides)}
  return step_fn, state, batch, info


def ftjax_train(w: common.Workload, ckpt: pathlib.Path, args) -> dict:
  """Times ftjax's jitted train step: lower, compile, warm-up, then the timed steps."""
  import jax  # pylint: disable=g-import-not-at-top
  step_fn, state, batch, info = build_ftjax_train(w, ckpt, args.dtype, tuple(args.ftjax_config))
  rss_load = peak_rss_mib()
  reset = reset_peak_rss()
  t0 = time.perf_counter()
  lowered = step_fn.lower(state, batch)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  xla_flops = float((cost or {}).get("flops", 0.0))
  memory = {}
  try:
    m = compiled.memory_analysis()
    memory = {k: getattr(m, k) / 2 ** 20 for k in (
        "temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
        "alias_size_in_bytes") if hasattr(m, k)}
  except Exception:  # pylint: disable=broad-except
    pass

  rss_compile = peak_rss_mib()
  reset_peak_rss()

  def run_step():
    nonlocal state
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    return metrics

  t = time.perf_counter()
  metrics = run_step()
  first = time.perf_counter() - t
  for _ in range(max(args.warmup - 1, 0)):
    run_step()
  if args.profile_dir:
    jax.profiler.start_trace(args.profile_dir, create_perfetto_trace=True)
  times, cpu = [], []
  for _ in range(args.steps):
    t, c = time.perf_counter(), time.process_time()
    metrics = run_step()
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
  if args.profile_dir:
    jax.profiler.stop_trace()
  loss = float(metrics["loss"])
  return {"lower_s": t1 - t0, "compile_s": t2 - t1, "first_step_s": first, **summarize(times),
          "cpu_median_s": statistics.median(cpu),
          "xla_flops": xla_flops, "xla_memory_mib": memory, **info, "loss": loss,
          "rss_load_mib": rss_load,
          "rss_compile_mib": rss_compile,
          "rss_reset": reset, "device": str(jax.devices()[0]),
          "device_peak_mib": _jax_device_peak_mib(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _jax_device_peak_mib():
  """Peak device memory of the process on an accelerator (None on CPU, which keeps no stats)."""
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.devices()[0].memory_stats() or {}
  return stats["peak_bytes_in_use"] / 2 ** 20 if "peak_bytes_in_use" in stats else None


def ftjax_generate(w: common.Workload, ckpt: pathlib.Path, args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from ftjax import generate  # pylint: disable=g-import-not-at-top
  from ftjax.models import registry  # pylint: disable=g-import-not-at-top

  model, _ = registry.build_model(ckpt, task="causal_lm", dtype=jnp.dtype(args.dtype),
                                  param_dtype=jnp.dtype(args.dtype), rngs=nnx.Rngs(0))
  vocab = common.MODELS[w.model]["vocab_size"]
  prompts = np.random.default_rng(0).integers(3, vocab, (w.batch, w.seq)).tolist()
  rss_load = peak_rss_mib()
  reset = reset_peak_rss()

  def call():
    out = generate.generate(model, prompts, max_new_tokens=w.new_tokens, temperature=0.0)
    assert all(len(row) == w.new_tokens for row in out), [len(r) for r in out]
    return out

  t = time.perf_counter()
  call()
  first = time.perf_counter() - t
  for _ in range(max(args.warmup - 1, 0)):
    call()
  times = []
  for _ in range(args.gen_repeats):
    t = time.perf_counter()
    call()
    times.append(time.perf_counter() - t)
  s = summarize(times)
  return {"first_call_s": first, "compile_s": max(first - s["median_s"], 0.0), **s,
          "rss_load_mib": rss_load, "rss_reset": reset, "device": str(jax.devices()[0]),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


# ------------------------------------------------------------------------------------ torch

def _torch_setup(args):
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  device = args.torch_device
  if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
  sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
  return torch, device, sync


def torch_train(w: common.Workload, ckpt: pathlib.Path, args) -> dict:
  """transformers + peft in eager mode, the same step: forward, backward, clip, AdamW."""
  torch, device, sync = _torch_setup(args)
  import numpy as np  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
  classification = w.model == "minilm"
  cls = (transformers.AutoModelForSequenceClassification if classification
         else transformers.AutoModelForCausalLM)
  model = cls.from_pretrained(ckpt, dtype=dtype).to(device)
  if w.method == "lora":
    import peft  # pylint: disable=g-import-not-at-top
    targets = ["query", "value"] if classification else ["q_proj", "v_proj"]
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=common.LORA["rank"], lora_alpha=common.LORA["alpha"], lora_dropout=0.0,
        target_modules=targets, task_type="SEQ_CLS" if classification else "CAUSAL_LM"))
  model.train()
  named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
  decay = [p for n, p in named if p.ndim >= 2 and "norm" not in n.lower()]
  no_decay = [p for n, p in named if not (p.ndim >= 2 and "norm" not in n.lower())]
  trainable = [p for _, p in named]
  opt_kwargs = {"fused": True} if args.torch_adamw == "fused" else (
      {"foreach": True} if args.torch_adamw == "foreach" else {"foreach": False})
  optimizer = torch.optim.AdamW(
      [{"params": decay, "weight_decay": common.WEIGHT_DECAY},
       {"params": no_decay, "weight_decay": 0.0}], lr=common.LR, betas=(0.9, 0.999), eps=1e-8,
      **opt_kwargs)

  rng = np.random.default_rng(0)
  b, t = w.batch, w.seq
  vocab = common.MODELS[w.model]["vocab_size"]
  if classification:
    batch = {"input_ids": torch.from_numpy(rng.integers(1000, vocab, (b, t))),
             "attention_mask": torch.ones(b, t, dtype=torch.long),
             "token_type_ids": torch.zeros(b, t, dtype=torch.long),
             "labels": torch.from_numpy(rng.integers(0, 2, (b,)))}
  else:
    tokens = torch.from_numpy(rng.integers(3, vocab, (b, t + 1)))
    # transformers shifts labels inside the loss: predicting tokens 1..T-1 of the row.
    batch = {"input_ids": tokens[:, :-1].contiguous(),
             "attention_mask": torch.ones(b, t, dtype=torch.long),
             "labels": tokens[:, :-1].contiguous()}
  batch = {k: v.to(device) for k, v in batch.items()}
  rss_load = peak_rss_mib()
  reset = reset_peak_rss()
  cuda = device.startswith("cuda")
  if cuda:
    torch.cuda.reset_peak_memory_stats()

  def run_step():
    optimizer.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, common.CLIP_NORM)
    optimizer.step()
    sync()
    return loss

  t0 = time.perf_counter()
  loss = run_step()
  first = time.perf_counter() - t0
  for _ in range(max(args.warmup - 1, 0)):
    run_step()
  times, cpu = [], []
  for _ in range(args.steps):
    t0, c = time.perf_counter(), time.process_time()
    loss = run_step()
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c)
  base = model.get_base_model() if hasattr(model, "get_base_model") else model
  return {"first_step_s": first, **summarize(times), "cpu_median_s": statistics.median(cpu),
          "loss": float(loss.detach()),
          "params": {"trainable": sum(p.numel() for p in trainable),
                     "total": sum(p.numel() for p in model.parameters())},
          "rss_load_mib": rss_load, "rss_reset": reset, "device": device,
          "threads": torch.get_num_threads(), "adamw": args.torch_adamw,
          "device_peak_mib": torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None,
          "attn_implementation": getattr(base.config, "_attn_implementation", None)}


def torch_generate(w: common.Workload, ckpt: pathlib.Path, args) -> dict:
  torch, device, sync = _torch_setup(args)
  import numpy as np  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
  model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype).to(device).eval()
  vocab = common.MODELS[w.model]["vocab_size"]
  ids = torch.from_numpy(np.random.default_rng(0).integers(3, vocab, (w.batch, w.seq))).to(device)
  mask = torch.ones_like(ids)
  rss_load = peak_rss_mib()
  reset = reset_peak_rss()

  def call():
    with torch.inference_mode():
      out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                           max_new_tokens=w.new_tokens, min_new_tokens=w.new_tokens,
                           pad_token_id=common.MODELS[w.model]["pad_token_id"])
    sync()
    assert out.shape == (w.batch, w.seq + w.new_tokens), out.shape
    return out

  t0 = time.perf_counter()
  call()
  first = time.perf_counter() - t0
  for _ in range(max(args.warmup - 1, 0)):
    call()
  times = []
  for _ in range(args.gen_repeats):
    t0 = time.perf_counter()
    call()
    times.append(time.perf_counter() - t0)
  return {"first_call_s": first, **summarize(times), "rss_load_mib": rss_load,
          "rss_reset": reset, "device": device, "threads": torch.get_num_threads(),
          "attn_implementation": getattr(model.config, "_attn_implementation", None),
          "cache": "DynamicCache (default)"}


# ------------------------------------------------------------------------------------ main

def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--setup", action="store_true", help="write the checkpoints and exit")
  p.add_argument("--models", default="minilm,smollm2", help="with --setup")
  p.add_argument("--workload", help=f"peak or one of {', '.join(common.WORKLOADS)}")
  p.add_argument("--framework", choices=("ftjax", "torch"))
  p.add_argument("--workdir", default=None)
  p.add_argument("--steps", type=int, default=7)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--gen_repeats", type=int, default=3)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--torch_device", default="auto")
  p.add_argument("--peak_n", type=int, default=4096, help="matmul peak: n x n x n, --dtype")
  p.add_argument("--torch_adamw", default="fused", choices=("fused", "foreach", "loop"))
  p.add_argument("--profile_dir", default="",
                 help="ftjax training: jax.profiler trace of the timed steps")
  p.add_argument("--ftjax_config", action="append", default=[],
                 help="KEY=VALUE override of the ftjax config (repeatable), e.g. model.remat=full")
  p.add_argument("--preload", default="", help="a Python file run first in ftjax workers (A/B "
                 "experiments: monkeypatch a proposed ftjax change without editing ftjax)")
  args = p.parse_args(argv)
  if args.preload and args.framework == "ftjax":
    import runpy  # pylint: disable=g-import-not-at-top
    runpy.run_path(args.preload)

  workdir = pathlib.Path(args.workdir or pathlib.Path(
      os.environ.get("FTJAX_CACHE", "~/.cache/ftjax")) / "bench").expanduser()
  if args.setup:
    workdir.mkdir(parents=True, exist_ok=True)
    result = {"setup": setup(workdir, args.models.split(","))}
  elif args.workload == "peak":
    result = (peak_ftjax(args.peak_n, dtype=args.dtype) if args.framework == "ftjax"
              else peak_torch(args.peak_n, device=_torch_setup(args)[1], dtype=args.dtype))
    if args.framework == "torch":
      import torch  # pylint: disable=g-import-not-at-top
      result["threads"] = torch.get_num_threads()
  else:
    w = common.WORKLOADS[args.workload]
    ckpt = workdir / w.model
    fn = {("ftjax", "train"): ftjax_train, ("ftjax", "generate"): ftjax_generate,
          ("torch", "train"): torch_train, ("torch", "generate"): torch_generate}[
              (args.framework, w.kind)]
    result = fn(w, ckpt, args)
    result["rss_run_mib"] = peak_rss_mib()
    result["rss_peak_mib"] = max(result["rss_run_mib"], result["rss_load_mib"],
                                 result.get("rss_compile_mib", 0))
  result.update(workload=args.workload, framework=args.framework, dtype=args.dtype,
                glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""))
  if args.preload and args.framework == "ftjax":
    result["preload"] = args.preload
  print(RESULT_PREFIX + json.dumps(result), flush=True)


def _framework(argv: list[str]) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith("--framework="):
      return arg.split("=", 1)[1]
    if arg == "--framework" and i + 1 < len(argv):
      return argv[i + 1]
  return ""


if __name__ == "__main__":
  if _framework(sys.argv[1:]) == "ftjax":  # as ftjax's entry points run (ftjax/malloc_tuning.py)
    from ftjax import malloc_tuning  # pylint: disable=g-import-not-at-top
    malloc_tuning.reexec_with_huge_pages()
  main()
