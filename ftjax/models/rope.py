"""Rotary position embeddings (RoPE) as in HF `modeling_rope_utils`.

Supported `rope_type`s, each computed in fp32 as transformers computes it:
  'default', 'linear' (positions / factor), 'llama3' (Llama 3.1's frequency-dependent
  scaling) and 'yarn' (NTK-by-parts interpolation with its attention factor): fixed inverse
  frequencies, computed once on the host;
  'dynamic' (NTK-aware: the base grows with the pass's length past `max_position_embeddings`)
  and 'longrope' (Phi-3: short or long per-frequency factors, chosen by whether the pass
  reaches past `original_max_position_embeddings`, and an attention factor): frequencies
  chosen inside the jitted forward from the pass's largest position, as transformers chooses
  them from `max(position_ids) + 1` on each call (so cached keys keep the frequencies they
  were rotated with, in both).
Yarn's and LongRoPE's attention factor multiplies cos and sin (queries and keys alike).
A `partial_rotary_factor` < 1 (Phi-4-mini, StableLM) rotates only the first
int(head_dim * factor) dimensions of each head, computing every type's frequencies for that
dimension, as transformers does.
"""

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.errors import UserError

SUPPORTED_TYPES = ('default', 'linear', 'llama3', 'yarn', 'dynamic', 'longrope')
_NEEDS_FACTOR = ('linear', 'llama3', 'dynamic')


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  """Hashable RoPE settings (HF `rope_parameters`).

  `max_position_embeddings` is the model's (not a RoPE parameter): 'dynamic' scales past it
  and 'longrope' / 'yarn' derive their default factor from it.
  """
  rope_type: str = 'default'
  theta: float = 10000.0
  factor: float | None = None
  low_freq_factor: float | None = None
  high_freq_factor: float | None = None
  original_max_position_embeddings: int | None = None
  attention_factor: float | None = None
  beta_fast: float | None = None
  beta_slow: float | None = None
  mscale: float | None = None
  mscale_all_dim: float | None = None
  truncate: bool | None = None
  short_factor: tuple[float, ...] | None = None
  long_factor: tuple[float, ...] | None = None
  max_position_embeddings: int | None = None
  partial_rotary_factor: float | None = None

  @classmethod
  def from_hf(cls, hf: dict[str, Any], where: str) -> 'RopeConfig':
    """Reads transformers 5 `rope_parameters` or legacy `rope_theta` plus
    `rope_scaling` (whose type key may be `type` or `rope_type`)."""
    params = dict(hf.get('rope_scaling') or {})
    params.update(hf.get('rope_parameters') or {})
    rope_type = params.get('rope_type', params.get('type', 'default'))
    if rope_type not in SUPPORTED_TYPES:
      raise UserError(
          f"unsupported rope_type '{rope_type}' in {where}; "
          f'supported: {", ".join(SUPPORTED_TYPES)}')
    partial = params.get('partial_rotary_factor', hf.get('partial_rotary_factor')) or 1.0
    if not 0.0 < partial <= 1.0:
      raise UserError(f'partial_rotary_factor must be in (0, 1], got {partial} in {where}')
    theta = params.get('rope_theta', hf.get('rope_theta', 10000.0))
    kw = {} if partial == 1.0 else {'partial_rotary_factor': float(partial)}
    if rope_type in _NEEDS_FACTOR:
      if params.get('factor') is None:
        raise UserError(f"rope_type '{rope_type}' in {where} needs 'factor'")
      kw['factor'] = float(params['factor'])
    elif rope_type in ('yarn', 'longrope') and params.get('factor') is not None:
      kw['factor'] = float(params['factor'])
    if rope_type == 'llama3':
      for key in ('low_freq_factor', 'high_freq_factor'):
        if params.get(key) is None:
          raise UserError(f"rope_type 'llama3' in {where} needs '{key}'")
        kw[key] = float(params[key])
    if rope_type in ('llama3', 'yarn', 'longrope'):
      kw['original_max_position_embeddings'] = int(
          params.get('original_max_position_embeddings')
          or hf.get('original_max_position_embeddings')
          or hf['max_position_embeddings'])
    if rope_type in ('yarn', 'longrope', 'dynamic'):
      kw['max_position_embeddings'] = int(hf['max_position_embeddings'])
    if rope_type in ('yarn', 'longrope'):
      for key in ('attention_factor', 'beta_fast', 'beta_slow', 'mscale', 'mscale_all_dim'):
        if params.get(key) is not None:
          kw[key] = float(params[key])
    if rope_type == 'yarn' and params.get('truncate') is not None:
      kw['truncate'] = bool(params['truncate'])
    if rope_type == 'longrope':
      for key in ('short_factor', 'long_factor'):
        if not params.get(key):
          raise UserError(f"rope_type 'longrope' in {where} needs '{key}'")
        kw[key] = tuple(float(v) for v in params[key])
    return cls(rope_type=rope_type, theta=float(theta), **kw)

  def to_hf(self) -> dict[str, Any]:
    """The transformers 5 `rope_parameters` dict."""
    out = {'rope_type': self.rope_type, 'rope_theta': self.theta}
    for f in dataclasses.fields(self)[2:]:
      value = getattr(self, f.name)
      if value is not None and f.name != 'max_position_embeddings':
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def legacy_keys(rope_parameters: dict[str, Any]) -> dict[str, Any]:
  """The pre-transformers-5 spelling of `rope_parameters`: top-level `rope_theta` and
  `rope_scaling` (None for 'default'; else the parameters with both `rope_type` and `type`).

  Exports write both spellings, so older readers (transformers 4, llama.cpp converters, vLLM)
  see the same RoPE; transformers 5 reads `rope_scaling` first, and it agrees.
  """
  scaling = None
  if rope_parameters.get('rope_type', 'default') != 'default':
    scaling = {k: v for k, v in rope_parameters.items() if k != 'rope_theta'}
    scaling['type'] = scaling['rope_type']
  return {'rope_theta': rope_parameters.get('rope_theta', 10000.0), 'rope_scaling': scaling}


def _base_exponents(head_dim: int) -> np.ndarray:
  return np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
  return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(rope: RopeConfig, head_dim: int) -> np.ndarray:
  """NTK-by-parts: interpolated (/ factor) below the correction range, kept above it."""
  base, dim = rope.theta, head_dim
  factor = rope.factor or rope.max_position_embeddings / rope.original_max_position_embeddings
  beta_fast, beta_slow = rope.beta_fast or 32, rope.beta_slow or 1

  def correction_dim(rotations):
    return (dim * math.log(rope.original_max_position_embeddings / (rotations * 2 * math.pi))
            / (2 * math.log(base)))

  low, high = correction_dim(beta_fast), correction_dim(beta_slow)
  if rope.truncate is not False:
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  if low == high:
    high += 0.001  # as transformers: no division by zero
  pos_freqs = np.float32(base) ** _base_exponents(dim)
  ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
  extrapolation = 1 - ramp.astype(np.float32)
  return ((1.0 / (factor * pos_freqs)) * (1 - extrapolation)
          + (1.0 / pos_freqs) * extrapolation).astype(np.float32)


@functools.lru_cache(maxsize=64)
def inverse_frequencies(rope: RopeConfig, head_dim: int) -> np.ndarray:
  """[head_dim // 2] fp32 inverse frequencies of a fixed-frequency type, as transformers
  computes them ('dynamic' and 'longrope': those of a pass within the original length).

  Cached (host numpy, computed at trace time); callers must not mutate it.
  """
  inv_freq = (1.0 / (np.float32(rope.theta) ** _base_exponents(head_dim))).astype(np.float32)
  if rope.rope_type == 'linear':
    inv_freq = inv_freq / np.float32(rope.factor)
  elif rope.rope_type == 'yarn':
    inv_freq = _yarn(rope, head_dim)
  elif rope.rope_type == 'longrope':
    inv_freq = inv_freq / np.asarray(rope.short_factor, np.float32)
  elif rope.rope_type == 'llama3':
    factor = rope.factor
    old_len = rope.original_max_position_embeddings
    low_wavelen = old_len / rope.low_freq_factor
    high_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are divided by `factor`, short ones kept, the band in
    # between interpolated smoothly.
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = ((old_len / wavelen - rope.low_freq_factor)
              / (rope.high_freq_factor - rope.low_freq_factor))
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    inv_freq = np.where(medium, smoothed, scaled)
  return np.asarray(inv_freq, np.float32)


@functools.lru_cache(maxsize=64)
def long_inverse_frequencies(rope: RopeConfig, head_dim: int) -> np.ndarray:
  """LongRoPE's [head_dim // 2] inverse frequencies of a pass past the original length (the
  long factors); cached like `inverse_frequencies`."""
  return (1.0 / (np.float32(rope.theta) ** _base_exponents(head_dim))
          / np.asarray(rope.long_factor, np.float32)).astype(np.float32)


def attention_scaling(rope: RopeConfig) -> float:
  """The factor on cos and sin: yarn's and LongRoPE's attention factor, else 1."""
  if rope.attention_factor is not None:
    return rope.attention_factor
  if rope.rope_type == 'yarn':
    factor = rope.factor or rope.max_position_embeddings / rope.original_max_position_embeddings
    if rope.mscale and rope.mscale_all_dim:
      return float(_yarn_mscale(factor, rope.mscale) / _yarn_mscale(factor, rope.mscale_all_dim))
    return _yarn_mscale(factor)
  if rope.rope_type == 'longrope':
    factor = rope.factor or rope.max_position_embeddings / rope.original_max_position_embeddings
    if factor <= 1.0:
      return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(rope.original_max_position_embeddings))
  return 1.0


def rotary_dim(rope: RopeConfig, head_dim: int) -> int:
  """How many leading dimensions of a head are rotated."""
  return int(head_dim * (rope.partial_rotary_factor or 1.0))


def rotary(rope: RopeConfig, head_dim: int, positions: jax.Array):
  """(inverse frequencies [rotary_dim // 2], attention scaling) of a forward pass whose tokens
  sit at `positions` [B, T]: host constants, or for 'dynamic' and 'longrope' traced values
  chosen from the pass's largest position (see the module docstring)."""
  scale = attention_scaling(rope)
  head_dim = rotary_dim(rope, head_dim)
  if rope.rope_type not in ('dynamic', 'longrope'):
    return inverse_frequencies(rope, head_dim), scale
  length = jnp.max(positions).astype(jnp.int32) + 1
  if rope.rope_type == 'longrope':
    return jnp.where(length > rope.original_max_position_embeddings,
                     long_inverse_frequencies(rope, head_dim),
                     inverse_frequencies(rope, head_dim)), scale
  # dynamic NTK: base * (factor * L / max - (factor - 1)) ** (d / (d - 2)) for L past max
  max_len = rope.max_position_embeddings
  length = jnp.maximum(length, max_len).astype(jnp.float32)
  base = jnp.float32(rope.theta) * (jnp.float32(rope.factor) * length / max_len
                                    - (rope.factor - 1)) ** (head_dim / (head_dim - 2))
  return 1.0 / (base ** jnp.asarray(_base_exponents(head_dim))), scale


def layer_rotary(ropes: tuple[RopeConfig, ...], head_dim: int, layer, positions):
  """`rotary` of layer `layer` among layers with their own RoPE (Gemma 3's local and global);
  a traced `layer` (scanned layers) selects from the stacked per-layer values."""
  if isinstance(layer, int):
    return rotary(ropes[layer], head_dim, positions)
  if len(set(ropes)) == 1:
    return rotary(ropes[0], head_dim, positions)
  pairs = [rotary(r, head_dim, positions) for r in ropes]
  inv = jnp.stack([jnp.asarray(p[0], jnp.float32) for p in pairs])[layer]
  scales = [p[1] for p in pairs]
  scale = scales[0] if len(set(scales)) == 1 else jnp.asarray(scales, jnp.float32)[layer]
  return inv, scale


def apply(x: jax.Array, positions: jax.Array, inv_freq, scaling=1.0):
  """Rotates x [B, T, N, D] by positions [B, T] (HF `rotate_half` layout) in its first
  2 * len(inv_freq) dimensions (all of them unless the rotation is partial); `scaling`
  multiplies cos and sin (yarn's and LongRoPE's attention factor)."""
  angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  if not (isinstance(scaling, float) and scaling == 1.0):
    cos, sin = cos * scaling, sin * scaling
  rotated = 2 * angles.shape[-1]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32[..., :rotated], 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x32[..., rotated:]], axis=-1)
  return out.astype(x.dtype)
