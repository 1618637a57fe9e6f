"""Block-wise weight quantization for QLoRA: NF4 (Dettmers et al. 2023) and int8.

A weight is flattened (row-major), padded to whole blocks of `block_size` values, and each block
is stored as codes plus its absmax scale:
  nf4:  4-bit indices into the NormalFloat4 table (quantiles of N(0, 1) scaled to [-1, 1],
        exact zero), two per uint8;
  int8: round(127 * w / absmax) as int8.
Double quantization (QLoRA section 3) quantizes the fp32 absmax scales again: minus their mean,
int8 in blocks of `double_quant_block` with one fp32 scale each (QLoRA uses 8-bit floats; int8
after centring keeps this small and exact enough: the scales' error is ~0.4% of their spread).

All functions are jnp and jit-able; dequantization runs inside the forward pass.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.errors import UserError

# The NF4 code table of the QLoRA paper (appendix E) / bitsandbytes.
NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], np.float32)
KINDS = ("nf4", "int8")


class Quantized(NamedTuple):
  """A quantized array: codes, per-block scales (maybe themselves quantized)."""
  codes: jax.Array  # uint8 [n / 2] (nf4, packed) or int8 [n] (int8)
  scales: jax.Array  # fp32 [blocks], or int8 [blocks] with double quantization
  scales_scale: jax.Array | None  # fp32 [blocks / dq_block] (double quantization)
  scales_mean: jax.Array | None  # fp32 [] (double quantization)


def _blocks(x: jax.Array, block: int) -> jax.Array:
  flat = x.reshape(-1)
  pad = (-flat.size) % block
  return jnp.pad(flat, (0, pad)).reshape(-1, block)


def _absmax(blocks: jax.Array) -> jax.Array:
  scale = jnp.max(jnp.abs(blocks), axis=1)
  return jnp.where(scale == 0, 1.0, scale)  # an all-zero block: any scale works


def quantize(w: jax.Array, kind: str, block_size: int, double_quant: bool = False,
             double_quant_block: int = 256) -> Quantized:
  if kind not in KINDS:
    raise UserError(f"unknown quantization '{kind}'; known: {', '.join(KINDS)}")
  if block_size <= 0 or block_size % 2:
    raise UserError(f"quantization block size must be a positive even number, got {block_size}")
  blocks = _blocks(w.astype(jnp.float32), block_size)
  scales = _absmax(blocks)
  normalised = blocks / scales[:, None]
  if kind == "nf4":
    # Nearest code: the midpoints between neighbouring table values split [-1, 1].
    midpoints = jnp.asarray((NF4[1:] + NF4[:-1]) / 2)
    codes = jnp.searchsorted(midpoints, normalised.reshape(-1)).astype(jnp.uint8)
    codes = (codes[0::2] << 4) | codes[1::2]
  else:
    codes = jnp.round(normalised * 127).astype(jnp.int8).reshape(-1)
  if not double_quant:
    return Quantized(codes, scales, None, None)
  mean = scales.mean()
  second = _blocks(scales - mean, double_quant_block)
  second_scale = _absmax(second)
  q = jnp.round(second / second_scale[:, None] * 127).astype(jnp.int8).reshape(-1)[:scales.size]
  return Quantized(codes, q, second_scale, mean)


def dequantize(q: Quantized, shape: tuple[int, ...], kind: str, block_size: int,
               double_quant_block: int = 256, dtype=jnp.float32) -> jax.Array:
  scales = q.scales
  if q.scales_scale is not None:
    s = _blocks(scales.astype(jnp.float32), double_quant_block) / 127 * q.scales_scale[:, None]
    scales = s.reshape(-1)[:q.scales.size] + q.scales_mean
  if kind == "nf4":
    codes = jnp.stack([q.codes >> 4, q.codes & 15], axis=-1).reshape(-1)
    values = jnp.asarray(NF4)[codes]
  else:
    values = q.codes.astype(jnp.float32) / 127
  w = values.reshape(-1, block_size) * scales[:, None]
  return w.reshape(-1)[:math.prod(shape)].reshape(shape).astype(dtype)


def nbytes(q: Quantized) -> int:
  return sum(int(x.size) * x.dtype.itemsize for x in q if x is not None)
