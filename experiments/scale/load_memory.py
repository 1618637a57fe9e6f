"""Host memory of building a >1B model on 8 fake CPU devices: the sharded build against the old one.

  python experiments/scale/load_memory.py [--dir /tmp/ftjax_scale] [--rows lora,qlora,full,procs,cgroup]

Makes once (in --dir) a random Llama-architecture checkpoint of 1.04B parameters (hidden 2048,
16 layers, MLP 8192, 32/8 heads, vocab 32000, tied embeddings: Llama-3.2-1B's shape with a
smaller vocabulary) saved as sharded bf16 safetensors, and a tiny model of the same family
(hidden 64, 2 layers) with the same tokenizer. Each row runs in fresh processes with
`--xla_force_host_platform_device_count=8` and `mesh.shape=(1,8,1)` (FSDP): `build_experiment`
(the trainer's own construction) then two train steps of the trainer's jitted step (batch 8 x 32
tokens of chat data). A process reports its peak RSS (`VmHWM`) and what device 0 holds.

- `lora`: LoRA r=8 on q/v with the frozen base in bf16 and the factors in fp32
  (`model.param_dtype=bfloat16`, `model.trainable_dtype=float32`), by the sharded build and by
  the build ftjax had before it (`legacy_build_state` below: the whole checkpoint read into host
  memory, an eager model, `put_global`). Target: peak RSS minus the tiny model's peak, at most
  1.25x the checkpoint's bytes.
- `qlora`: QLoRA (nf4, blocks of 64) on every linear layer, build only: each kernel quantized as
  it is read (`Method.load_transforms`) against all kernels read first and quantized in the one
  construction jit (`whole_kernels`, the build before that hook).
- `full`: full fine-tuning (AdamW) of the same checkpoint in bf16; parameter, gradient and
  optimizer bytes per device reported separately (gradients: the trainable params' bytes, which
  the compiled step holds among its temporaries).
- `procs`: 2 processes x 4 devices joined by `jax.distributed` on 127.0.0.1; the bytes each
  requests from the checkpoint through `get_slice` (`CheckpointReader.bytes_requested`).
  Target: at most ~55% of the checkpoint each.
- `cgroup`: both builds of the `lora` row (`build_experiment` and the step's compilation, no
  step) under a cgroup (v1) memory limit of the tiny model's peak after its build + 1.5x the
  checkpoint's bytes; needs root. The sharded one must finish and the old one be killed.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIG = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
           num_key_value_heads=8, vocab_size=32000)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=32000)
SHARD_BYTES = 512 * 2**20
CGROUP = pathlib.Path("/sys/fs/cgroup/memory/ftjax_load_memory")
QLORA_TARGETS = r"(q|k|v|o|gate|up|down)_proj"


# ------------------------------------------------------------------------------ assets

def make_checkpoint(path: pathlib.Path, dims: dict, tokenizer_dir: pathlib.Path) -> pathlib.Path:
  """A random Llama in bf16 safetensors shards of <= 512 MiB, written tensor by tensor."""
  import ml_dtypes
  import numpy as np
  from ftjax.weights import safetensors_io

  if (path / "config.json").exists():
    return path
  tmp = path.with_name(path.name + ".tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  h, f, n_layers = dims["hidden_size"], dims["intermediate_size"], dims["num_hidden_layers"]
  head_dim = h // dims["num_attention_heads"]
  kv = dims["num_key_value_heads"] * head_dim
  shapes = {"model.embed_tokens.weight": (dims["vocab_size"], h), "model.norm.weight": (h,)}
  for i in range(n_layers):
    p = f"model.layers.{i}."
    shapes.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                   p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                   p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                   p + "mlp.down_proj.weight": (h, f), p + "input_layernorm.weight": (h,),
                   p + "post_attention_layernorm.weight": (h,)})
  rng = np.random.default_rng(0)
  shards, current, size = [], {}, 0
  for name, shape in shapes.items():
    value = (np.ones(shape, np.float32) if len(shape) == 1
             else rng.standard_normal(shape, np.float32) * 0.02).astype(ml_dtypes.bfloat16)
    if size + value.nbytes > SHARD_BYTES and current:
      shards.append(current)
      current, size = {}, 0
    current[name] = value
    size += value.nbytes
  shards.append(current)
  weight_map = {}
  for k, shard in enumerate(shards):
    file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    safetensors_io.write_safetensors(shard, tmp / file)
    weight_map.update({name: file for name in shard})
    del shard
  (tmp / safetensors_io.INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
  config = dict(dims, model_type="llama", architectures=["LlamaForCausalLM"], rms_norm_eps=1e-5,
                max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=500000.0,
                hidden_act="silu", torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2)
  (tmp / "config.json").write_text(json.dumps(config, indent=2))
  for file in tokenizer_dir.iterdir():
    if file.name.startswith(("tokenizer", "special_tokens", "chat_template")):
      shutil.copy(file, tmp / file.name)
  tmp.rename(path)
  return path


def make_assets(root: pathlib.Path) -> dict:
  sys.path.insert(0, str(ROOT / "tests"))
  from tiny_assets import make_conversations, make_tiny_llama, write_jsonl  # the suite's helpers

  root.mkdir(parents=True, exist_ok=True)
  tokenizer = root / "tokenizer_source"
  if not (tokenizer / "config.json").exists():
    make_tiny_llama(tokenizer)
  return {"big": str(make_checkpoint(root / "llama_1b_bf16", BIG, tokenizer)),
          "tiny": str(make_checkpoint(root / "llama_tiny_bf16", TINY, tokenizer)),
          "train": str(write_jsonl(root / "chat_train.jsonl", make_conversations(64, 0))),
          "validation": str(write_jsonl(root / "chat_dev.jsonl", make_conversations(8, 1)))}


def checkpoint_bytes(path: str) -> int:
  return sum(f.stat().st_size for f in pathlib.Path(path).glob("*.safetensors"))


# ------------------------------------------------------------------------------ the child

def legacy_build_state(spec, reader, *, seed, method, trainable, scan_layers, mesh, rules,
                       trainable_dtype=None, why=""):
  """The construction ftjax had before `ftjax.train.construct` (commit f61afe2): the whole
  checkpoint in host memory, the model built and loaded eagerly, then copied onto the mesh."""
  import jax
  from flax import nnx
  from ftjax import sharding
  from ftjax.models import layer_stack
  from ftjax.train.construct import Built
  from ftjax.weights import safetensors_io

  rngs = nnx.Rngs(params=seed)
  model = spec.build(rngs)
  tensors = safetensors_io.read_safetensors_dir(spec.source)
  fresh = safetensors_io.load_params(model, tensors, spec.table, source=spec.source)
  del tensors
  model = method.apply(model, rngs=rngs)
  chosen = trainable(method)
  if scan_layers:
    model, chosen = layer_stack.stack_with_filter(model, chosen, why=why)
  graphdef, params, frozen = nnx.split(model, chosen, ...)
  del model
  if trainable_dtype is not None:
    params = jax.tree.map(lambda x: x.astype(trainable_dtype), params)
  params = sharding.put_global(params, sharding.variable_shardings(params, mesh, rules))
  frozen = sharding.put_global(frozen, sharding.variable_shardings(frozen, mesh, rules))
  return Built(graphdef, params, frozen, fresh, reader.total_bytes)


def _hwm() -> int:
  """This process's peak resident set so far (VmHWM), in bytes."""
  status = pathlib.Path("/proc/self/status").read_text()
  return 1024 * int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmHWM")))


def child(args) -> None:
  import jax
  import numpy as np
  from ftjax import sharding, train
  from ftjax.config import base_config
  from ftjax.methods import qlora
  from ftjax.train import construct

  if args.num_processes > 1:
    jax.distributed.initialize(f"127.0.0.1:{args.port}", num_processes=args.num_processes,
                               process_id=args.process_id)
  if args.build == "legacy":  # the planned (abstract) state as today, loaded the old way
    plan_state = construct.plan_state
    construct.plan_state = lambda spec, reader, **kw: construct.Blueprint(
        plan_state(spec, reader, **kw).abstract, lambda: legacy_build_state(spec, reader, **kw))
  if args.build == "whole_kernels":  # QLoRA quantizing in the one construction jit, as before
    qlora.QLoRA.load_transforms = lambda self, model: {}
  assets = json.loads(args.assets)
  c = base_config()
  c.model.checkpoint = assets[args.model]
  c.model.task = "causal_lm"
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "bfloat16"
  c.method.name = args.method
  if args.method in ("lora", "qlora"):
    c.model.trainable_dtype = "float32"
  c.method.qlora.targets = QLORA_TARGETS
  c.data.name = "chat_files"
  c.data.files.train, c.data.files.validation = assets["train"], assets["validation"]
  c.data.test_split = ""
  c.data.max_length = 32
  c.data.padding = "max_length"
  c.data.bucket_boundaries = (32,)
  c.train.batch_size = 8
  c.train.steps = args.steps
  c.mesh.shape = (1, 8, 1)
  c.model.scan_layers = bool(args.scan)
  t0 = time.time()
  exp = train.build_experiment(c)
  built_s = time.time() - t0
  build_hwm = _hwm()
  dev = jax.local_devices()[0]
  on_device = lambda tree: sum(s.data.nbytes for x in jax.tree.leaves(tree)
                               for s in x.addressable_shards if s.device == dev)
  step = jax.jit(train.make_train_step(exp.graphdef, exp.tx, exp.schedule, exp.task),
                 in_shardings=(exp.state_shardings, sharding.batch_sharding(exp.mesh)),
                 out_shardings=(exp.state_shardings, sharding.replicated(exp.mesh)),
                 donate_argnums=0)
  batches = exp.dataset.train_iterator(train.local_batch_size(c.train.batch_size, exp.mesh),
                                       seed=0, shard_index=jax.process_index(),
                                       shard_count=jax.process_count())
  batch = sharding.put_batch(next(batches), sharding.batch_sharding(exp.mesh))
  compiled = step.lower(exp.state, batch).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  state = exp.state
  params_dev, frozen_dev, opt_dev = (on_device(state.params), on_device(state.frozen),
                                     on_device(state.opt_state))
  t1 = time.time()
  loss = None
  for _ in range(c.train.steps):
    state, metrics = compiled(state, batch)
    loss = float(metrics["loss"])
  step_s = (time.time() - t1) / max(c.train.steps, 1)
  total = lambda tree: sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))
  print("RESULT " + json.dumps(dict(
      build=args.build, model=args.model, method=args.method, process=jax.process_index(),
      hwm_bytes=_hwm(), build_hwm_bytes=build_hwm, scan=bool(args.scan), build_s=round(built_s, 1), step_s=round(step_s, 1), loss=loss,
      requested=exp.checkpoint_bytes_read, trainable_dev=params_dev, frozen_dev=frozen_dev,
      opt_dev=opt_dev, temp_dev=temp, params_total=total(state.params) + total(state.frozen),
      trainable_total=total(state.params), devices=jax.device_count())), flush=True)


# ------------------------------------------------------------------------------ the driver

def run_child(assets, *, build, model, method, procs=1, limit_bytes=None, scan=0,
              steps=2) -> list[dict]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // procs}")
  port = 20000 + os.getpid() % 10000
  cmd = lambda pid: [sys.executable, __file__, "--child", "--assets", json.dumps(assets),
                     "--build", build, "--model", model, "--method", method,
                     "--num_processes", str(procs), "--process_id", str(pid), "--port", str(port),
                     "--scan", str(int(scan)), "--steps", str(steps)]
  preexec = None
  if limit_bytes is not None:
    CGROUP.mkdir(exist_ok=True)
    (CGROUP / "memory.limit_in_bytes").write_text(str(limit_bytes))
    preexec = lambda: (CGROUP / "cgroup.procs").write_text(str(os.getpid()))
  children = [subprocess.Popen(cmd(pid), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, preexec_fn=preexec) for pid in range(procs)]
  rows = []
  for proc in children:
    out, _ = proc.communicate(timeout=3600)
    results = [json.loads(l[len("RESULT "):]) for l in out.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
      rows.append(dict(build=build, model=model, method=method, returncode=proc.returncode,
                       tail=out[-1500:]))
    else:
      rows.extend(results)
  return rows


def mib(x) -> str:
  return f"{x / 2**20:,.0f}"


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--dir", default="/tmp/ftjax_scale")
  parser.add_argument("--rows", default="lora,qlora,full,procs,cgroup")
  parser.add_argument("--child", action="store_true")
  for flag in ("assets", "build", "model", "method"):
    parser.add_argument(f"--{flag}")
  parser.add_argument("--steps", type=int, default=2)
  for flag in ("num_processes", "process_id", "port", "scan"):
    parser.add_argument(f"--{flag}", type=int, default=0)
  args = parser.parse_args()
  if args.child:
    return child(args)
  assets = make_assets(pathlib.Path(args.dir))
  ckpt = checkpoint_bytes(assets["big"])
  rows = set(args.rows.split(","))
  results = {}
  print(f"checkpoint: {assets['big']}, {ckpt / 2**30:.2f} GiB of bf16 safetensors\n", flush=True)
  baseline = {}
  variants = [(build, scan) for scan in (0, 1) for build in ("sharded", "legacy")]
  if rows & {"lora", "cgroup"}:
    for build, scan in variants if "lora" in rows else [("sharded", 0), ("legacy", 0)]:
      (baseline[build, scan],) = run_child(assets, build=build, model="tiny", method="lora", scan=scan)
  if "lora" in rows:
    print("| build | scan_layers | after build: peak RSS MiB | - tiny, / checkpoint | after 2 steps: "
          "peak RSS MiB | - tiny, / checkpoint | step temporaries MiB / device | build s | step s | "
          "device 0 frozen MiB | device 0 trainable MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for build, scan in variants:
      (r,) = run_child(assets, build=build, model="big", method="lora", scan=scan)
      results[f"lora_{build}_scan{scan}"] = r
      if "hwm_bytes" not in r:
        print(f"| {build} | {bool(scan)} | failed (rc {r['returncode']}) |\n{r['tail']}")
        continue
      base = baseline[build, scan]
      print(f"| {build} | {bool(scan)} | {mib(r['build_hwm_bytes'])} | "
            f"{(r['build_hwm_bytes'] - base['build_hwm_bytes']) / ckpt:.2f}x | {mib(r['hwm_bytes'])} | "
            f"{(r['hwm_bytes'] - base['hwm_bytes']) / ckpt:.2f}x | {mib(r['temp_dev'])} | "
            f"{r['build_s']} | {r['step_s']} | {mib(r['frozen_dev'])} | "
            f"{r['trainable_dev'] / 2**20:.1f} |", flush=True)
  if "full" in rows:
    (r,) = run_child(assets, build="sharded", model="big", method="full")
    results["full"] = r
    if "hwm_bytes" in r:
      print(f"\nfull fine-tuning, bf16, AdamW, device 0 of 8: params {mib(r['trainable_dev'] + r['frozen_dev'])}"
            f" MiB, gradients {mib(r['trainable_total'] / 8)} MiB (1/8 of the trainable params), "
            f"optimizer {mib(r['opt_dev'])} MiB, compiled step temporaries {mib(r['temp_dev'])} MiB;"
            f" peak RSS {mib(r['hwm_bytes'])} MiB; step {r['step_s']} s; loss {r['loss']:.4f}",
            flush=True)
    else:
      print(f"\nfull fine-tuning failed: rc {r['returncode']}\n{r['tail']}")
  if "qlora" in rows:
    # Every linear layer quantized (nf4, blocks of 64), as the QLoRA paper trains.
    print("\n| QLoRA build | after build: peak RSS MiB | - tiny, / checkpoint | build s | "
          "device 0 frozen MiB |\n|---|---|---|---|---|")
    for build in ("sharded", "whole_kernels"):
      (base,) = run_child(assets, build=build, model="tiny", method="qlora", steps=0)
      (r,) = run_child(assets, build=build, model="big", method="qlora", steps=0)
      results[f"qlora_{build}"] = r
      if "hwm_bytes" not in r or "hwm_bytes" not in base:
        print(f"| {build} | failed |\n{r.get('tail', '')}{base.get('tail', '')}")
        continue
      print(f"| {build} | {mib(r['build_hwm_bytes'])} | "
            f"{(r['build_hwm_bytes'] - base['build_hwm_bytes']) / ckpt:.2f}x | {r['build_s']} | "
            f"{mib(r['frozen_dev'])} |", flush=True)
  if "procs" in rows:
    got = run_child(assets, build="sharded", model="big", method="lora", procs=2)
    results["procs"] = got
    print("\n| process | requested MiB | of the checkpoint | peak RSS MiB |\n|---|---|---|---|")
    for r in got:
      if "requested" not in r:
        print(f"| failed (rc {r['returncode']}) | | | |\n{r['tail']}")
        continue
      print(f"| {r['process']} | {mib(r['requested'])} | {r['requested'] / ckpt:.1%} | "
            f"{mib(r['hwm_bytes'])} |", flush=True)
  if "cgroup" in rows:
    if not CGROUP.parent.is_dir() or os.geteuid() != 0:
      print("\ncgroup: skipped (needs root and cgroup v1's memory controller)")
    else:
      limit = int(baseline["sharded", 0]["build_hwm_bytes"] + 1.5 * ckpt)
      print(f"\ncgroup memory limit {mib(limit)} MiB (tiny peak + 1.5x checkpoint):")
      for build in ("sharded", "legacy"):
        (r,) = run_child(assets, build=build, model="big", method="lora", limit_bytes=limit, steps=0)
        results[f"cgroup_{build}"] = r
        outcome = (f"finished, peak RSS {mib(r['hwm_bytes'])} MiB" if "hwm_bytes" in r
                   else f"killed by the kernel (return code {r['returncode']})"
                   if r["returncode"] in (-9, 137) else
                   f"FAILED otherwise (return code {r['returncode']}):\n{r['tail']}")
        print(f"- {build}: {outcome}", flush=True)
      CGROUP.rmdir()
  out = pathlib.Path(args.dir) / "results.json"
  out.write_text(json.dumps(dict(checkpoint_bytes=ckpt, **results,
                                baseline={f"{b}_scan{s}": r for (b, s), r in baseline.items()}),
                           indent=1))
  print(f"\nraw results: {out}")


if __name__ == "__main__":
  main()
