"""Block-wise weight quantization for QLoRA, in bitsandbytes' layout: NF4 (Dettmers et al. 2023)
and int8.

A kernel is stored `[in, out]` (flax), the transpose of torch's `[out, in]` weight. bitsandbytes
flattens the torch weight row-major and cuts it into blocks of `block_size` (64) values, so each
block runs along `in` within one output feature; so do these blocks, for each column of the
kernel. The storage is bitsandbytes' own arrays transposed:
  codes   nf4:  uint8 [in / 2, out], kernel rows 2i and 2i+1 in the high and low nibble (the
                high nibble first, as bitsandbytes packs consecutive values); each nibble indexes
                the NormalFloat4 table (quantiles of N(0, 1) scaled to [-1, 1], exact zero);
          int8: int8 [in, out], round(127 * w / absmax) (ftjax's own; bitsandbytes has no
                blockwise int8 weight format);
  scales  fp32 [in / block_size, out]: each block's absmax.
A bitsandbytes tensor of shape [out, in] converts without loss: `codes.T.reshape(-1)` is its
packed weight, `scales.T.reshape(-1)` its absmax (see `to_bitsandbytes` / `from_bitsandbytes`).
Both arrays keep the kernel's two axes, so they shard exactly like the kernel would (FSDP along
`in`, tensor parallelism along `out`). `in` must be a multiple of `block_size` (a UserError
otherwise): bitsandbytes' blocks would then straddle two output features, which no per-column
layout can hold, and padding each column would be a format bitsandbytes never writes. Every
projection of the supported model families is a multiple of 64.

Double quantization (QLoRA section 3) is bitsandbytes' `compress_statistics=True` exactly: the
absmax values minus their mean (`scales_mean`, bitsandbytes' `offset`) are quantized with the
signed 8-bit dynamic map (`dynamic_map()`, bitsandbytes' `create_dynamic_map()`) in blocks of
256 taken in bitsandbytes' order (the absmax flattened `[out, in / block_size]` row-major), each
block with its own fp32 absmax (`scales_scale`); `scales` then holds the uint8 map indices. The
scales cost 8 + 32 / 256 bits per block instead of 32 (QLoRA's 0.127 bits per parameter at block
64). Chosen over int8 after centring (ftjax's earlier scheme, as small) so that a QLoRA
checkpoint written by bitsandbytes converts exactly (`from_bitsandbytes`); the price is the map's
coarser steps far from the mean (errors up to 0.70% of the block's largest |absmax - mean|, int8's
0.39%), finer near it.

Quantization rounds as bitsandbytes does: NF4 codes are those of its CPU kernel to the bit
(w * (1 / absmax), clipped to [-1, 1], nearest code, ties to the lower); the dynamic map takes
the nearest code of (a - mean) / absmax, where bitsandbytes' CPU binary search picks the other
neighbour for some 0.2% of values within a few 1e-6 of a midpoint. Dequantization is the same
fp32 products (and sum for the offset) as bitsandbytes', so bitsandbytes' storage gives its
values to the bit (under `jax.jit`, XLA may fuse the offset's sum into a multiply-add, one
rounding fewer: within 1 ulp of the scale). All functions are jnp and jit-able; dequantization
runs inside the forward pass.
"""

from __future__ import annotations

import functools
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
DOUBLE_QUANT_BLOCK = 256  # bitsandbytes' block for the absmax values


def _linspace(start: float, end: float, steps: int) -> np.ndarray:
  """torch.linspace in fp32 (fused multiply-adds, each half from its own end), which
  bitsandbytes' map is built on; numpy's linspace differs in the last bit."""
  start, end = np.float32(start), np.float32(end)
  step = (end - start) / np.float32(steps - 1)
  i = np.arange(steps)
  low = (np.float64(start) + np.float64(step) * i).astype(np.float32)
  high = (np.float64(end) - np.float64(step) * (steps - 1 - i)).astype(np.float32)
  return np.where(i < steps // 2, low, high)


@functools.cache
def dynamic_map() -> np.ndarray:
  """bitsandbytes' signed 8-bit dynamic map (Dettmers 2015): a sign, a run of zeros giving a
  decimal exponent 10^-6 .. 10^0, the remaining bits a linear fraction in (0.1, 1); 256 sorted
  values in [-0.993, 1] with exact 0 and 1."""
  values = []
  for exponent in range(7):  # 7 exponent bits at most; fraction bits = exponent here
    bounds = _linspace(0.1, 1.0, 2 ** exponent + 1)
    means = (bounds[:-1] + bounds[1:]) / np.float32(2)
    scale = np.float32(10.0 ** (exponent - 6))  # the product in fp32, as torch computes it
    values += list(scale * means) + list(-scale * means)
  values += [0.0, 1.0]
  return np.sort(np.array(values, np.float32))


class Quantized(NamedTuple):
  """A quantized kernel [in, out]: codes, per-block scales (maybe themselves quantized)."""
  codes: jax.Array  # uint8 [in / 2, out] (nf4, packed) or int8 [in, out] (int8)
  scales: jax.Array  # fp32 [in / block, out], or uint8 [in / block, out] with double quantization
  scales_scale: jax.Array | None  # fp32 [ceil(in / block * out / 256)] (double quantization)
  scales_mean: jax.Array | None  # fp32 [] (double quantization)


def check_shape(shape: tuple[int, ...], block_size: int, what: str = "kernel") -> None:
  if len(shape) != 2 or shape[0] % block_size:
    raise UserError(f"{what} of shape {tuple(shape)} cannot be quantized in blocks of "
                    f"{block_size} along its input axis (bitsandbytes' layout): the input size "
                    f"must be a multiple of the block size; set method.qlora.block_size to one")


def _divisor(absmax: jax.Array) -> jax.Array:
  return jnp.where(absmax == 0, 1.0, absmax)  # an all-zero block: any scale works


def _nearest_dynamic(x: jax.Array) -> jax.Array:
  """Index of the nearest entry of the dynamic map (ties to the lower), x in [-1, 1]."""
  code = jnp.asarray(dynamic_map())
  left = jnp.clip(jnp.searchsorted(code, x, side="right") - 1, 0, code.size - 2)
  right = jnp.abs(x - code[left + 1]) < jnp.abs(x - code[left])
  return (left + right).astype(jnp.uint8)


def _group_index(shape: tuple[int, int], block: int) -> jax.Array:
  """For each scale [in / block_size, out], its double-quantization block in bitsandbytes'
  order (the scales flattened [out, in / block_size] row-major)."""
  rows, cols = shape
  return (jnp.arange(cols)[None, :] * rows + jnp.arange(rows)[:, None]) // block


def quantize(w: jax.Array, kind: str, block_size: int, double_quant: bool = False,
             double_quant_block: int = DOUBLE_QUANT_BLOCK) -> Quantized:
  if kind not in KINDS:
    raise UserError(f"unknown quantization '{kind}'; known: {', '.join(KINDS)}")
  if block_size <= 0 or block_size % 2:
    raise UserError(f"quantization block size must be a positive even number, got {block_size}")
  check_shape(w.shape, block_size)
  rows, cols = w.shape
  blocks = w.astype(jnp.float32).reshape(rows // block_size, block_size, cols)
  scales = jnp.max(jnp.abs(blocks), axis=1)  # [in / block, out]
  if kind == "nf4":
    normalised = jnp.clip(blocks * (1.0 / _divisor(scales))[:, None, :], -1.0, 1.0)
    # Nearest code: the midpoints between neighbouring table values split [-1, 1].
    midpoints = jnp.asarray((NF4[1:] + NF4[:-1]) / 2)
    codes = jnp.searchsorted(midpoints, normalised.reshape(rows, cols)).astype(jnp.uint8)
    codes = (codes[0::2] << 4) | codes[1::2]
  else:
    normalised = blocks / _divisor(scales)[:, None, :]
    codes = jnp.round(normalised * 127).astype(jnp.int8).reshape(rows, cols)
  if not double_quant:
    return Quantized(codes, scales, None, None)
  mean = scales.mean()
  centred = (scales - mean).T.reshape(-1)  # bitsandbytes' order
  pad = (-centred.size) % double_quant_block
  groups = jnp.pad(centred, (0, pad)).reshape(-1, double_quant_block)
  second = jnp.max(jnp.abs(groups), axis=1)
  indices = _nearest_dynamic(groups / _divisor(second)[:, None]).reshape(-1)[:centred.size]
  return Quantized(codes, indices.reshape(cols, -1).T, second, mean)


def dequantize(q: Quantized, shape: tuple[int, ...], kind: str, block_size: int,
               double_quant_block: int = DOUBLE_QUANT_BLOCK, dtype=jnp.float32) -> jax.Array:
  """The kernel [in, out] in `dtype`; the arithmetic is fp32, rounded to `dtype` at the end."""
  rows, cols = shape
  scales = q.scales
  if q.scales_scale is not None:
    group = _group_index(scales.shape, double_quant_block)
    scales = jnp.asarray(dynamic_map())[scales] * q.scales_scale[group] + q.scales_mean
  if kind == "nf4":
    codes = jnp.stack([q.codes >> 4, q.codes & 15], axis=1).reshape(rows, cols)
    values = jnp.asarray(NF4)[codes]
  else:
    values = q.codes.astype(jnp.float32) / 127
  w = values.reshape(rows // block_size, block_size, cols) * scales[:, None, :]
  return w.reshape(rows, cols).astype(dtype)


def nbytes(q: Quantized) -> int:
  return sum(int(x.size) * x.dtype.itemsize for x in q if x is not None)


# ----------------------------------------------- bitsandbytes' arrays (torch weight [out, in])

def to_bitsandbytes(q: Quantized) -> dict[str, np.ndarray]:
  """bitsandbytes' flat arrays for this (nf4) storage: `weight` (packed uint8), `absmax`
  (fp32, or uint8 with `nested_absmax` and `offset` under double quantization)."""
  out = {"weight": np.asarray(q.codes).T.reshape(-1), "absmax": np.asarray(q.scales).T.reshape(-1)}
  if q.scales_scale is not None:
    out.update(nested_absmax=np.asarray(q.scales_scale), offset=np.asarray(q.scales_mean))
  return out


def from_bitsandbytes(weight, absmax, shape: tuple[int, int], block_size: int,
                      nested_absmax=None, offset=None) -> Quantized:
  """The storage of the kernel [in, out] from bitsandbytes' arrays of a torch weight `shape`
  [out, in]: the inverse of `to_bitsandbytes`."""
  out, in_ = shape
  check_shape((in_, out), block_size, "bitsandbytes weight (transposed)")
  codes = jnp.asarray(np.asarray(weight, np.uint8).reshape(out, in_ // 2).T)
  scales = jnp.asarray(np.asarray(absmax).reshape(out, in_ // block_size).T)
  if nested_absmax is None:
    return Quantized(codes, scales.astype(jnp.float32), None, None)
  return Quantized(codes, scales.astype(jnp.uint8), jnp.asarray(nested_absmax, jnp.float32),
                   jnp.asarray(offset, jnp.float32))
