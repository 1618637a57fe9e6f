"""Rotary position embeddings (RoPE) as in HF `modeling_rope_utils`.

Supported `rope_type`s: 'default', 'linear' (positions / factor) and 'llama3'
(Llama 3.1 frequency-dependent scaling). They all change only the inverse
frequencies, which are computed once on the host in fp32 as transformers does.
'dynamic' (NTK, depends on the running length), 'yarn', 'longrope' and the
others are refused with a `UserError` rather than silently approximated.
"""

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.errors import UserError

SUPPORTED_TYPES = ('default', 'linear', 'llama3')


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  """Hashable RoPE settings (HF `rope_parameters`)."""
  rope_type: str = 'default'
  theta: float = 10000.0
  factor: float | None = None
  low_freq_factor: float | None = None
  high_freq_factor: float | None = None
  original_max_position_embeddings: int | None = None

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
    if params.get('partial_rotary_factor', 1.0) != 1.0:
      raise UserError(f'unsupported partial_rotary_factor '
                      f"{params['partial_rotary_factor']} in {where}")
    theta = params.get('rope_theta', hf.get('rope_theta', 10000.0))
    kw = {}
    if rope_type in ('linear', 'llama3'):
      if params.get('factor') is None:
        raise UserError(f"rope_type '{rope_type}' in {where} needs 'factor'")
      kw['factor'] = float(params['factor'])
    if rope_type == 'llama3':
      for key in ('low_freq_factor', 'high_freq_factor'):
        if params.get(key) is None:
          raise UserError(f"rope_type 'llama3' in {where} needs '{key}'")
        kw[key] = float(params[key])
      kw['original_max_position_embeddings'] = int(
          params.get('original_max_position_embeddings')
          or hf.get('original_max_position_embeddings')
          or hf['max_position_embeddings'])
    return cls(rope_type=rope_type, theta=float(theta), **kw)

  def to_hf(self) -> dict[str, Any]:
    """The transformers 5 `rope_parameters` dict."""
    out = {'rope_type': self.rope_type, 'rope_theta': self.theta}
    for f in dataclasses.fields(self)[2:]:
      if getattr(self, f.name) is not None:
        out[f.name] = getattr(self, f.name)
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


@functools.lru_cache(maxsize=64)
def inverse_frequencies(rope: RopeConfig, head_dim: int) -> np.ndarray:
  """[head_dim // 2] fp32 inverse frequencies, as transformers computes them.

  Cached (host numpy, computed at trace time); callers must not mutate it.
  """
  exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
  inv_freq = (1.0 / (np.float32(rope.theta) ** exponent)).astype(np.float32)
  if rope.rope_type == 'linear':
    inv_freq = inv_freq / np.float32(rope.factor)
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


def apply(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray):
  """Rotates x [B, T, N, D] by positions [B, T] (HF `rotate_half` layout)."""
  angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)
