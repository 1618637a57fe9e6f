"""`train_step` compile time against depth, with and without `model.scan_layers`, and the
compiled temporary memory per `model.remat` policy.

  python experiments/scale/compile_time.py                       # depths 2 4 8 16 32
  python experiments/scale/compile_time.py --depths 2,8 --steps 3 # quicker

The model is SmolLM2-shaped (Llama, GQA 3:1 heads, SwiGLU, tied embeddings, RMSNorm) but
narrow, randomly initialised, so the figures are about the program, not the arithmetic: what a
deeper stack costs the compiler. Each row builds the state the way `train.build_experiment`
does (method `full`, the model built with `remat`, `layer_stack.stack_with_filter` when scanned,
`optim.make_optimizer`) and compiles ftjax's real `train.make_train_step` for the causal-LM task
with `jax.jit(...).lower(...)` then `.compile()`, timed separately; step time is the median of
`--steps` executed steps after the compile. Temporary memory is XLA's `memory_analysis()` of the
compiled step (activations kept for the backward pass and scratch), per remat policy, at
`--remat_depth` layers.
"""

import argparse
import statistics
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from ftjax import optim, train
from ftjax.config import base_config
from ftjax.models import layer_stack, llama, rope
from ftjax.tasks import causal_lm


def model_config(depth: int, hidden: int) -> llama.LlamaConfig:
  """SmolLM2-135M's shape (hidden 576, 9 heads / 3 kv heads of 64, MLP 1536, tied), narrowed."""
  heads = 6
  return llama.LlamaConfig(
      vocab_size=2048, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
      num_hidden_layers=depth, num_attention_heads=heads, num_key_value_heads=heads // 3,
      head_dim=hidden // heads, max_position_embeddings=2048, rms_norm_eps=1e-5,
      rope=rope.RopeConfig(theta=100000.0), tie_word_embeddings=True)


def build(depth: int, hidden: int, scan: bool, remat: str):
  """(graphdef, state, tx, schedule) as `train.build_experiment` builds them (method `full`)."""
  model = llama.LlamaForCausalLM(model_config(depth, hidden), rngs=nnx.Rngs(0), remat=remat)
  trainable = nnx.Param
  if scan:
    model, trainable = layer_stack.stack_with_filter(model, trainable, why='benchmark')
  graphdef, params, frozen = nnx.split(model, trainable, ...)
  opt_cfg = base_config().optimizer
  tx = optim.make_optimizer(opt_cfg, 1000)
  schedule = optim.make_schedule(opt_cfg, 1000)
  state = train.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, frozen=frozen, opt_state=tx.init(params),
      rng=jax.random.key_data(jax.random.key(1)), nonfinite=jnp.zeros((), jnp.int32),
      first_nonfinite=jnp.full((), -1, jnp.int32))
  return graphdef, state, tx, schedule


def batch(batch_size: int, seq: int, vocab: int) -> dict:
  rng = np.random.default_rng(0)
  ids = rng.integers(0, vocab, (batch_size, seq + 1)).astype(np.int32)
  ones = np.ones((batch_size, seq), np.int32)
  return {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "attention_mask": ones,
          "loss_mask": ones, "segment_ids": ones,
          "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch_size, seq)).copy()}


def measure(depth, hidden, scan, remat, batch_size, seq, steps) -> dict:
  graphdef, state, tx, schedule = build(depth, hidden, scan, remat)
  data = jax.tree.map(jnp.asarray, batch(batch_size, seq, 2048))
  step = jax.jit(train.make_train_step(graphdef, tx, schedule, causal_lm), donate_argnums=0)
  t0 = time.perf_counter()
  lowered = step.lower(state, data)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  memory = compiled.memory_analysis()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  return {"lower_s": t1 - t0, "compile_s": t2 - t1, "step_ms": 1000 * statistics.median(times),
          "temp_mib": getattr(memory, "temp_size_in_bytes", 0) / 2**20,
          "loss": float(metrics["loss"])}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depths", default="2,4,8,16,32")
  parser.add_argument("--hidden", type=int, default=96)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--remat_depth", type=int, default=8)
  args = parser.parse_args()
  run = lambda depth, scan, remat: measure(depth, args.hidden, scan, remat, args.batch, args.seq,
                                           args.steps)
  run(1, False, "none")  # warm up JAX/XLA once, off the clock

  print(f"Compile time of `train_step` (hidden {args.hidden}, batch {args.batch} x {args.seq} "
        f"tokens, AdamW, remat none), {jax.devices()[0].platform}:\n")
  print("| layers | lower s (list) | compile s (list) | lower s (scan) | compile s (scan) "
        "| compile speed-up | step ms (list) | step ms (scan) |")
  print("|---|---|---|---|---|---|---|---|")
  for depth in (int(d) for d in args.depths.split(",")):
    plain, scanned = run(depth, False, "none"), run(depth, True, "none")
    assert abs(plain["loss"] - scanned["loss"]) < 1e-4, (plain, scanned)
    print(f"| {depth} | {plain['lower_s']:.2f} | {plain['compile_s']:.2f} | "
          f"{scanned['lower_s']:.2f} | {scanned['compile_s']:.2f} | "
          f"{(plain['lower_s'] + plain['compile_s']) / (scanned['lower_s'] + scanned['compile_s']):.1f}x | "
          f"{plain['step_ms']:.1f} | {scanned['step_ms']:.1f} |", flush=True)

  print(f"\nCompiled temporary memory per remat policy ({args.remat_depth} layers, same shapes):\n")
  print("| model.remat | temp MiB (list) | temp MiB (scan) | step ms (list) | step ms (scan) |")
  print("|---|---|---|---|---|")
  for policy in layer_stack.REMAT_POLICIES:
    if policy == "nothing_saveable":
      continue  # the same policy as "full"
    plain, scanned = run(args.remat_depth, False, policy), run(args.remat_depth, True, policy)
    print(f"| {policy} | {plain['temp_mib']:.1f} | {scanned['temp_mib']:.1f} | "
          f"{plain['step_ms']:.1f} | {scanned['step_ms']:.1f} |", flush=True)


if __name__ == "__main__":
  main()
