"""`model.attention=cudnn` against the default "xla" attention on a GPU: same loss and gradients.

  python experiments/bench/cudnn_attention_check.py [--workdir DIR]   # after run.py's --setup

One bf16 SmolLM2-shape train step (the bench's checkpoint and trainer objects) with each
implementation, on two batches: full-length rows (causal mask only), then rows with two packed
sequences and right padding (segment and padding masks, fully masked padding queries). Prints
the loss and gradient norm of each and exits non-zero when they differ by more than bf16
rounding allows. tests/models/test_attention_impl.py checks the same wrapper on CPU (with
jax's XLA implementation); this is the check of cuDNN's kernel itself.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import worker  # pylint: disable=g-import-not-at-top,wrong-import-position

RTOL = 2e-2  # bf16 activations: ~3 significant digits


def packed_batch(b: int, t: int, vocab: int) -> dict:
  """Rows of two packed sequences (split at t // 3) with the last t // 8 tokens padding."""
  rng = np.random.default_rng(1)
  tokens = rng.integers(3, vocab, (b, t + 1)).astype(np.int32)
  cut, pad = t // 3, t - t // 8
  seg = np.where(np.arange(t) < cut, 1, 2)[None].repeat(b, 0).astype(np.int32)
  seg[:, pad:] = 0
  pos = np.where(np.arange(t) < cut, np.arange(t), np.arange(t) - cut)[None].repeat(b, 0)
  real = (seg > 0).astype(np.int32)
  return {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:], "attention_mask": real,
          "positions": (pos * real).astype(np.int32), "segment_ids": seg, "loss_mask": real}


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--workdir", default=str(pathlib.Path(os.environ.get(
      "FTJAX_CACHE", "~/.cache/ftjax")).expanduser() / "bench"))
  p.add_argument("--impls", default="xla,cudnn", help="the two implementations compared")
  args = p.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  from ftjax import sharding  # pylint: disable=g-import-not-at-top

  w = common.WORKLOADS["smollm2_full"]
  ckpt = pathlib.Path(args.workdir) / w.model
  results = []  # per implementation: {batch name: (loss, grad norm)}
  impls = args.impls.split(",")
  for impl in impls:
    step, state, batch, _ = worker.build_ftjax_train(w, ckpt, "bfloat16",
                                                     (f"model.attention={impl}",))
    state, full = step(state, batch)  # the second batch starts from the updated state
    packed = sharding.put_batch(packed_batch(w.batch, w.seq, common.MODELS[w.model]["vocab_size"]),
                                jax.tree.leaves(batch)[0].sharding)
    _, pad = step(state, packed)
    results.append({name: (float(m["loss"]), float(m["grad_norm"]))
                    for name, m in (("full rows", full), ("packed + padded", pad))})
    print(impl, results[-1], flush=True)
  bad = 0
  for name in results[0]:
    (lx, gx), (lc, gc) = results[0][name], results[1][name]
    ok = abs(lc - lx) <= RTOL * abs(lx) and abs(gc - gx) <= RTOL * abs(gx)
    bad += not ok
    print(f"{name}: loss {impls[0]} {lx:.5f} {impls[1]} {lc:.5f}; grad norm {gx:.5f} / {gc:.5f}: "
          + ("agree" if ok else f"DIFFER (rtol {RTOL})"))
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
