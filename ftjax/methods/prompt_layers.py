"""Shared machinery for prompt and prefix tuning on decoder LMs (Llama family, GPT-2).

PEFT feeds both methods to a decoder as something that sits in front of the real tokens: prompt
tuning as virtual-token embeddings, prefix tuning as a KV cache (`past_key_values`) holding
per-layer keys and values, with the real tokens at positions n, n+1, ... after the n virtual ones.
Both are therefore a *KV cache that starts with n method-made entries*, which the ftjax decoders
already understand through their public API (`init_cache` and `__call__(..., cache=...)`):

- `PrefilledDecoder` adopts the decoder's attributes at the same paths (so weight tables,
  `method.freeze` regexes and the tied LM head still see `model.embed_tokens.embedding` etc.)
  and overrides two methods. `init_cache` returns the model's cache, n slots longer, with the
  method's n entries written first (segment 1, positions 0..n-1), so generation
  (`ftjax.generate`) works unchanged. `__call__` without a cache (training, eval) builds that
  cache for the batch and runs the real tokens after it, returning logits for the real tokens
  only: the causal-LM task's targets and loss mask need no change and the virtual tokens never
  count in a loss.
- Subclasses say how the entries are made (`prefill`): prefix tuning writes its table into the
  cache as is (PEFT's prefix keys are used un-rotated, like any cached key); prompt tuning runs
  its virtual tokens through the model (`PromptEmbed` maps ids >= vocab to them).

Packed rows (several sequences per row, `segment_ids` > 1) would leave every sequence but the
first without the virtual tokens (attention stays within a segment), so the methods refuse
`data.packing` (`Method.check_config`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ftjax.errors import UserError
from ftjax.models import kv_cache as kv_cache_lib

TOKEN_EMBEDDING = ("embed_tokens", "wte")  # Llama family, GPT-2


def is_decoder(model: nnx.Module) -> bool:
  """A decoder LM with the ftjax cache API (`init_cache`, `__call__(..., cache=)`)."""
  return callable(getattr(type(model), "init_cache", None))


def adopt(new: nnx.Module, old: nnx.Module) -> None:
  """Gives `new` every attribute of `old` (submodules, variables, config) at the same names."""
  for name, value in vars(old).items():
    if not name.startswith("_"):
      setattr(new, name, value)


def config_value(config, *names: str) -> Any:
  """The first of `names` that `config` has (Llama and GPT-2 name their sizes differently)."""
  for name in names:
    if getattr(config, name, None) is not None:
      return getattr(config, name)
  raise UserError(f"model config {type(config).__name__} has none of {', '.join(names)}")


def find_token_embedding(model: nnx.Module, method: str) -> tuple[tuple[Any, ...], nnx.Embed]:
  found = [(tuple(p), m) for p, m in nnx.iter_modules(model)
           if type(m) is nnx.Embed and str(p[-1]) in TOKEN_EMBEDDING]  # pylint: disable=unidiomatic-typecheck
  if len(found) != 1:
    raise UserError(f"method '{method}' found no single token embedding "
                    f"({' or '.join(TOKEN_EMBEDDING)}) in {type(model).__name__}")
  return found[0]


def cache_layout(model: nnx.Module) -> tuple[int, int, int]:
  """(layers, kv heads, head dim) of the model's KV cache, read from its shapes."""
  keys = jax.eval_shape(lambda: model.init_cache(1, 1)).k  # one [B, kv, S, d] per layer
  _, kv_heads, _, head_dim = keys[0].shape
  return len(keys), kv_heads, head_dim


def write_entries(cache: kv_cache_lib.KVCache, keys, values) -> kv_cache_lib.KVCache:
  """Writes n entries (per layer keys/values [B, n, kv, d]) at the cache's index as real tokens
  of segment 1 at positions 0..n-1; every later token of segment 1 attends to them."""
  b, n = keys[0].shape[:2]
  put = lambda buffers, new: tuple(kv_cache_lib.write_kv(buf, x, cache.index)
                                   for buf, x in zip(buffers, new))
  positions = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
  return dataclasses.replace(
      cache, k=put(cache.k, keys), v=put(cache.v, values),
      segment_ids=kv_cache_lib.write(cache.segment_ids, jnp.ones((b, n), jnp.int32), cache.index),
      positions=kv_cache_lib.write(cache.positions, positions, cache.index),
      lengths=cache.lengths + n, index=cache.index + n)


class PrefilledDecoder(nnx.Module):
  """A decoder whose KV cache starts with `num_virtual_tokens` entries made by `prefill`."""

  def __init__(self, model: nnx.Module, num_virtual_tokens: int):
    if not is_decoder(model):
      raise TypeError(f"{type(model).__name__} has no init_cache")
    adopt(self, model)
    self.wrapped_class = type(model)  # export and weight tables see through to it
    self.num_virtual_tokens = num_virtual_tokens

  def prefill(self, cache: kv_cache_lib.KVCache, rngs) -> kv_cache_lib.KVCache:
    raise NotImplementedError

  def init_cache(self, batch_size: int, max_length: int, dtype=None, *, rngs=None):
    """The model's cache for `max_length` real tokens, holding the virtual entries first."""
    cache = self.wrapped_class.init_cache(self, batch_size, max_length + self.num_virtual_tokens,
                                          dtype)
    return self.prefill(cache, rngs)

  def __call__(self, input_ids, attention_mask=None, *, positions=None, segment_ids=None,
               cache=None, rngs=None, return_hidden=False):
    """The wrapped decoder's call; without a cache, the real tokens come after the virtual ones
    (positions shifted by n) and only their logits (or hidden states) are returned."""
    call = self.wrapped_class.__call__
    if cache is not None:  # generation: `init_cache` already holds the virtual entries
      return call(self, input_ids, attention_mask, positions=positions, segment_ids=segment_ids,
                  cache=cache, rngs=rngs, return_hidden=return_hidden)
    b, t = jnp.shape(input_ids)
    cache = self.init_cache(b, t, rngs=rngs)
    if positions is not None:
      positions = jnp.asarray(positions) + self.num_virtual_tokens
    out, _ = call(self, input_ids, attention_mask, positions=positions,
                  segment_ids=segment_ids, cache=cache, rngs=rngs, return_hidden=return_hidden)
    return out

  def lm_logits(self, hidden):
    return self.wrapped_class.lm_logits(self, hidden)


def refuse_packing(method: str, cfg) -> None:
  """`Method.check_config` of prompt and prefix tuning (see the module docstring)."""
  if cfg.data.get("packing", False):
    raise UserError(f"config key 'data.packing' must be false with method '{method}': packed "
                    "sequences after the first in a row would not see the virtual tokens")
