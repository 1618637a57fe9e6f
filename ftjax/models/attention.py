"""Causal self-attention shared by the decoder families (Llama, Gemma, GPT-2).

One mask covers left padding, packed sequences, the KV cache and sliding
windows: a query may see a key when both are in the same non-zero segment,
the key's cache slot is not after the query's (causal) and, for a sliding
window W, the key's position is less than W before the query's.
"""

import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp

from ftjax.models import kv_cache as kv_cache_lib

# Finite (fp32) so a query that sees no key (a padding row) gets a uniform
# softmax instead of NaNs; its output is never used.
MASK_VALUE = -1e9
# A sliding window no position distance reaches: full attention as a number.
NO_WINDOW = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where the queries and keys of one forward pass sit.

  q_seg/q_pos: [B, T] segment (0 = padding) and position of each query.
  q_slot: [T] cache slot of each query; k_seg/k_pos: [B, S]; k_slot: [S].
  Without a cache the keys are the queries (S = T).
  """
  q_seg: jax.Array
  q_pos: jax.Array
  q_slot: jax.Array
  k_seg: jax.Array
  k_pos: jax.Array
  k_slot: jax.Array

  def mask(self, window: int | jax.Array | None = None) -> jax.Array:
    """Boolean [B, 1, T, S]: which keys each query may attend to.

    `window` may be a traced int (a scanned layer stack reads it per layer);
    `NO_WINDOW` then stands for full attention.
    """
    same = self.q_seg[:, :, None] == self.k_seg[:, None, :]
    real = (self.k_seg != 0)[:, None, :]
    causal = (self.k_slot[None, :] <= self.q_slot[:, None])[None]
    allowed = same & real & causal
    if window is not None:
      # HF: key kept when q - k < window (positions; equal to slot distance
      # for the contiguous real tokens of one sequence).
      allowed &= (self.q_pos[:, :, None] - self.k_pos[:, None, :]) < window
    return allowed[:, None]


def _positions_in_segment(seg: jax.Array) -> jax.Array:
  """0, 1, 2, ... restarting at each segment start; 0 on padding."""
  t = jnp.arange(seg.shape[1], dtype=jnp.int32)[None]
  prev = jnp.pad(seg[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  start = jax.lax.cummax(jnp.where(seg != prev, t, 0), axis=1)
  return jnp.where(seg != 0, t - start, 0)


def make_layout(input_ids, attention_mask=None, positions=None,
                segment_ids=None, cache: kv_cache_lib.KVCache | None = None):
  """Builds the attention layout and, with a cache, its updated bookkeeping.

  Default positions count real tokens: `cumsum(attention_mask) - 1` (so left
  padding works), restarting per segment when `segment_ids` are given, and
  continuing from `cache.lengths` with a cache.

  Returns:
    (layout, positions [B, T], cache with segment_ids/positions/lengths/index
    advanced past these tokens (k/v untouched) or None).
  """
  b, t = input_ids.shape
  if attention_mask is None:
    attention_mask = jnp.ones((b, t), jnp.int32)
  real = (jnp.asarray(attention_mask) > 0)
  if segment_ids is None:
    seg = real.astype(jnp.int32)
  else:
    seg = jnp.where(real, jnp.asarray(segment_ids, jnp.int32), 0)
  if positions is None:
    if cache is not None:
      positions = cache.lengths[:, None] + jnp.cumsum(real, axis=1) - 1
    elif segment_ids is not None:
      positions = _positions_in_segment(seg)
    else:
      positions = jnp.cumsum(real, axis=1) - 1
    positions = jnp.maximum(positions, 0)
  positions = jnp.asarray(positions, jnp.int32)
  q_slot = jnp.arange(t, dtype=jnp.int32)
  if cache is None:
    layout = Layout(seg, positions, q_slot, seg, positions, q_slot)
    return layout, positions, None
  q_slot = q_slot + cache.index
  k_seg = kv_cache_lib.write(cache.segment_ids, seg, cache.index)
  k_pos = kv_cache_lib.write(cache.positions, positions, cache.index)
  new = dataclasses.replace(
      cache, segment_ids=k_seg, positions=k_pos,
      lengths=cache.lengths + real.sum(axis=1, dtype=jnp.int32),
      index=cache.index + t)
  k_slot = jnp.arange(cache.max_length, dtype=jnp.int32)
  return Layout(seg, positions, q_slot, k_seg, k_pos, k_slot), positions, new



def decoder_states(decoder, input_ids, attention_mask=None, positions=None, segment_ids=None,
                   rngs=None):
  """A decoder's final hidden states [B, T, H] over one uncached pass, what every decoder head
  but the LM's reads; `decoder(input_ids, layout, positions, cache, rngs)` is a family's bare
  decoder (`LlamaModel`, `GemmaModel`, `GPT2Model`)."""
  layout, positions, _ = make_layout(input_ids, attention_mask, positions, segment_ids, None)
  hidden, _ = decoder(input_ids, layout, positions, None, rngs)
  return hidden

def dropout(rate: float, x, rngs):
  """Dropout that is active only when the caller passes `rngs`."""
  if rngs is None or rate == 0.0:
    return x
  return nnx.Dropout(rate, deterministic=False)(x, rngs=rngs)


# `model.attention` values: "xla" is the einsum attention below, compiled by XLA on any backend
# (it keeps the [B, N, T, S] probabilities for the backward pass); "cudnn" is cuDNN's fused
# flash attention through `jax.nn.dot_product_attention` (NVIDIA GPUs, bf16/fp16, head dim
# <= 128), which never materialises them.
IMPLEMENTATIONS = ('xla', 'cudnn')


def check_implementation(impl: str) -> str:
  """`impl` when it names one of `IMPLEMENTATIONS` (models take it at construction)."""
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f'attention implementation {impl!r}; known: {", ".join(IMPLEMENTATIONS)}')
  return impl


def attend(q, k, v, mask, *, scale: float, dropout_rate: float = 0.0,
           rngs=None, impl: str = 'xla', softcap: float | None = None):
  """Grouped-query attention.

  Args:
    q: [B, T, N, D] queries; k, v: heads-major [B, KV, S, D] (from
      `update_kv`) with N a multiple of KV (query head h reads kv head
      h // (N // KV), as HF's `repeat_kv`).
    mask: boolean [B, 1, T, S] from `Layout.mask`.
    scale: multiplies the scores (1/sqrt(D) usually).
    dropout_rate: attention-probability dropout, applied only with `rngs`.
    impl: one of `IMPLEMENTATIONS`. Attention-probability dropout, a
      traced scale (GPT-2's per-layer scaling in a scanned stack; the fused
      kernel takes a constant) and a softcap run the "xla" path.
    softcap: Gemma 2's attention-logit soft-capping, scores -> c * tanh(scores / c)
      before the mask (None: none).

  Returns:
    [B, T, N * D] in v's dtype.
  """
  if (impl != 'xla' and not (rngs is not None and dropout_rate > 0.0)
      and isinstance(scale, (int, float)) and softcap is None):
    return fused(q, k, v, mask, scale=scale, implementation=impl)
  b, t, n, d = q.shape
  kv, s = k.shape[1], k.shape[2]
  g = n // kv
  # Heads-major: one transpose in, one out, and both einsums are plain batched matmuls over
  # (B, KV) with the G query heads of a group stacked along M (no materialised repeat of k/v).
  # A [B, T, KV, G, D] layout made XLA transpose around every dot, forward and backward.
  q = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kv, g, d).transpose(0, 2, 3, 1, 4)
  q = q.reshape(b, kv, g * t, d)
  # Scores and softmax in fp32.
  scores = jnp.einsum('bkmd,bksd->bkms', q, k, preferred_element_type=jnp.float32)
  if softcap is not None:
    scores = softcap * jnp.tanh(scores / softcap)
  scores = jnp.where(mask[:, :, None], scores.reshape(b, kv, g, t, s), MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1)
  probs = dropout(dropout_rate, probs, rngs).reshape(b, kv, g * t, s)
  out = jnp.einsum('bkms,bksd->bkmd', probs.astype(v.dtype), v)
  return out.reshape(b, kv, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, n * d)


def fused(q, k, v, mask, *, scale: float, implementation: str):
  """`attend` through `jax.nn.dot_product_attention` (same shapes and GQA head mapping).

  The boolean mask becomes a finite large-negative bias inside, so a query that sees no key (a
  padding row) gets a uniform softmax, as in `attend`.
  """
  b, t, n, d = q.shape
  # The kernel takes [B, S, KV, D]; XLA folds this transpose into `update_kv`'s.
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale,
                                     implementation=implementation)
  return out.reshape(b, t, n * d)


def update_kv(cache: kv_cache_lib.LayerCache | None, k, v):
  """Writes this layer's new k/v [B, T, KV, D] into its cache slots; returns the
  heads-major [B, KV, S, D] keys/values to attend over (the layer's whole cache,
  or just k/v without one)."""
  if cache is None:
    return k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  return (kv_cache_lib.write_kv(cache.k, k, cache.index),
          kv_cache_lib.write_kv(cache.v, v, cache.index))
