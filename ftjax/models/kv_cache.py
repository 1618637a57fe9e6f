"""A fixed-shape key/value cache for decoder models.

Every array has a fixed shape, so prefill (T prompt tokens) and each decode
step (T=1) reuse one compiled function per T: nothing grows per token.

Layout (all rows share one write index because generation left-pads):
  k, v:        per layer [B, kv_heads, max_len, head_dim], compute dtype:
               heads-major, the layout of attention's batched matmuls, so a
               decode step reads the cache without transposing all of it.
  segment_ids: [B, max_len] int32; 0 = unwritten slot or padding, else the
               segment (1 for plain sequences). Keys attend only within the
               same non-zero segment.
  positions:   [B, max_len] int32 position of each written token (RoPE /
               learned position already applied; kept for sliding windows).
  lengths:     [B] int32 real tokens written per row (next default position).
  index:       int32 scalar, the next slot to write.

Writing past `max_len` is not checked inside jit (XLA clamps the slice);
callers size the cache up front (`generate` does). Decode steps without
`segment_ids` write segment 1, so a prefill with other segment ids must pass
the same ids on every later step.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=['k', 'v', 'segment_ids', 'positions', 'lengths', 'index'],
    meta_fields=[])
@dataclasses.dataclass(frozen=True)
class KVCache:
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  segment_ids: jax.Array
  positions: jax.Array
  lengths: jax.Array
  index: jax.Array

  @property
  def max_length(self) -> int:
    return self.segment_ids.shape[1]

  def per_layer(self) -> list[tuple[jax.Array, jax.Array]]:
    """[(k, v)] of each layer: the per-layer inputs of `layer_stack.run_layers`."""
    return list(zip(self.k, self.v))


class LayerCache(NamedTuple):
  """One layer's view of the cache: its k/v buffers and the slot to write next."""
  k: jax.Array
  v: jax.Array
  index: jax.Array


def init_cache(num_layers: int, batch_size: int, max_length: int,
               kv_heads: int, head_dim: int, dtype) -> KVCache:
  """An empty cache: no slot written."""
  shape = (batch_size, kv_heads, max_length, head_dim)
  return KVCache(
      k=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
      v=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
      segment_ids=jnp.zeros((batch_size, max_length), jnp.int32),
      positions=jnp.zeros((batch_size, max_length), jnp.int32),
      lengths=jnp.zeros((batch_size,), jnp.int32),
      index=jnp.zeros((), jnp.int32))


def write(buffer: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
  """Writes `new` [B, T, ...] into `buffer` [B, S, ...] at slot `index`."""
  start = (0, index) + (0,) * (buffer.ndim - 2)
  return jax.lax.dynamic_update_slice(buffer, new.astype(buffer.dtype), start)


def write_kv(buffer: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
  """Writes keys or values `new` [B, T, kv_heads, D] into a layer's heads-major
  `buffer` [B, kv_heads, S, D] at slot `index`."""
  return jax.lax.dynamic_update_slice(
      buffer, new.transpose(0, 2, 1, 3).astype(buffer.dtype), (0, 0, index, 0))
