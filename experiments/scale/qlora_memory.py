"""Compiled train-step memory of QLoRA against LoRA (XLA `memory_analysis`).

  python experiments/scale/qlora_memory.py                    # SmolLM2-135M shape, 30 layers
  python experiments/scale/qlora_memory.py --layers 8 --dtypes float32   # quicker

The model is SmolLM2-135M's shape (Llama, hidden 576, 9 / 3 heads of 64, MLP 1536, vocab 49152,
tied embeddings), randomly initialised: the figures are about the program, not the weights. For
LoRA and QLoRA (NF4, block 64, double quantization) on every linear projection of every layer
(QLoRA's setting), rank 16, it builds the state as `train.build_experiment` does (the method's
`apply` and trainable filter, `optim.make_optimizer`, `train.TrainState`) and compiles ftjax's
real `train.make_train_step` for the causal-LM task (no execution), then prints XLA's
`compiled.memory_analysis()`: argument bytes (state + batch), output bytes, temporary bytes
(activations kept for the backward pass and scratch), and their sum less the donated aliases,
the step's peak estimate. Parameters are fp32; `--dtypes` are the compute dtypes.
"""

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

from compile_time import batch  # experiments/scale/compile_time.py, the same synthetic batch
from ftjax import methods, optim, train
from ftjax.config import base_config
from ftjax.models import llama, rope
from ftjax.tasks import causal_lm

ALL_LINEAR = r"\.(q|k|v|o|gate|up|down)_proj$"


def smollm2_135m(layers: int) -> llama.LlamaConfig:
  return llama.LlamaConfig(
      vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
      num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
      rms_norm_eps=1e-5, rope=rope.RopeConfig(theta=100000.0), tie_word_embeddings=True)


def compiled_memory(method_name: str, layers: int, dtype, batch_size: int, seq: int) -> dict:
  cfg = base_config()
  cfg.method.name = method_name
  cfg.method[method_name].update(targets=ALL_LINEAR, rank=16, alpha=32.0)
  if method_name == "qlora":
    cfg.method.qlora.update(quant="nf4", block_size=64, double_quant=True)
  rngs = nnx.Rngs(params=0)
  model = llama.LlamaForCausalLM(smollm2_135m(layers), dtype=dtype, rngs=rngs)
  method = methods.get(method_name, cfg.method)
  model = method.apply(model, rngs=rngs)
  graphdef, params, frozen = nnx.split(model, train.trainable_filter(method, ""), ...)
  tx = optim.make_optimizer(cfg.optimizer, 1000)
  state = train.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, frozen=frozen, opt_state=tx.init(params),
      rng=jax.random.key_data(jax.random.key(1)), nonfinite=jnp.zeros((), jnp.int32),
      first_nonfinite=jnp.full((), -1, jnp.int32))
  data = jax.tree.map(jnp.asarray, batch(batch_size, seq, 49152))
  step = jax.jit(train.make_train_step(graphdef, tx, optim.make_schedule(cfg.optimizer, 1000),
                                       causal_lm), donate_argnums=0)
  memory = step.lower(state, data).compile().memory_analysis()
  mib = lambda name: getattr(memory, name) / 2**20
  out = {k: mib(f"{k}_size_in_bytes") for k in ("argument", "output", "temp", "alias")}
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  out["frozen"] = sum(x.nbytes for x in jax.tree.leaves(frozen)) / 2**20
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", type=int, default=30)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq", type=int, default=256)
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--label", default="", help="appended to the method name in the table")
  args = parser.parse_args()
  print(f"SmolLM2-135M shape, {args.layers} layers, batch {args.batch} x {args.seq} tokens, "
        f"{jax.devices()[0].platform}; MiB\n")
  print("| method | compute dtype | frozen (state) | argument | output | alias | temp | peak |")
  print("|---|---|---|---|---|---|---|---|")
  for dtype in args.dtypes.split(","):
    for name in ("lora", "qlora"):
      m = compiled_memory(name, args.layers, jnp.dtype(dtype), args.batch, args.seq)
      print(f"| {name}{args.label} | {dtype} | {m['frozen']:.1f} | {m['argument']:.1f} | "
            f"{m['output']:.1f} | {m['alias']:.1f} | {m['temp']:.1f} | {m['peak']:.1f} |",
            flush=True)


if __name__ == "__main__":
  main()
