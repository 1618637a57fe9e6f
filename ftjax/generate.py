"""Sampling from causal LMs with a fixed-shape KV cache.

`generate` left-pads the prompts into one [B, P] batch, prefills the cache in
one forward pass and decodes inside `jax.lax.while_loop`, all in one
`jax.jit` program: no recompilation per token, and the loop exits as soon as
every row has produced a stop token. Compiled programs are reused across
calls with the same model graph, batch size, padded prompt length (rounded up
to `prompt_multiple`), `max_new_tokens` and mode (greedy or sampling; the
temperature, top-k, top-p, seed and stop-token values are traced).

`stream` yields one prompt's tokens as they are made (the chat command): the
same prefill and decode step, each its own jitted program, so it gives token
for token what `generate` gives.

Decoding: temperature 0 is greedy (argmax, token for token what
`transformers` `generate(do_sample=False)` gives); otherwise logits are
divided by the temperature, then filtered by top-k and top-p (nucleus), as
transformers' warpers do, and sampled.
"""

import functools
from typing import Iterator, Sequence

from flax import nnx
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from ftjax.errors import UserError
from ftjax.models import layer_stack


def _sample(logits, key, *, greedy, temperature, top_k, top_p):
  """Next tokens [B] from fp32 logits [B, V].

  top_k (0 = off) and top_p (1 = off) are traced values: one sort serves
  both, so every sampling setting shares one compiled program.
  """
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  vocab = logits.shape[-1]
  logits = logits / temperature
  ordered = jnp.sort(logits, axis=-1)[:, ::-1]
  k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
  ordered = jnp.where(jnp.arange(vocab) < k, ordered, -jnp.inf)
  # Top-p on the top-k distribution: the smallest set of most likely tokens
  # whose mass reaches top_p (always at least the most likely one).
  probs = jax.nn.softmax(ordered, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs
  kept = jnp.sum(before < top_p, axis=-1, keepdims=True)
  kept = jnp.where(top_p >= 1.0, k, jnp.clip(kept, 1, k))
  threshold = jnp.take_along_axis(ordered, kept - 1, axis=-1)
  logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _first_token(model, ids, mask, key, sample, *, max_new_tokens, cache_dtype):
  """Prefill: (the first new token [B], the cache, the key) of the prompts [B, P]."""
  b, p = ids.shape
  cache = model.init_cache(b, p + max_new_tokens, cache_dtype)
  logits, cache = model(ids, mask, cache=cache)
  key, sub = jax.random.split(key)
  return sample(logits[:, -1], sub), cache, key


def _next_token(model, token, cache, key, done, sample, pad_token_id):
  """One decode step: (the next token [B], pad where `done`; the cache; the key)."""
  logits, cache = model(token[:, None], jnp.ones((token.shape[0], 1), jnp.int32),
                        cache=cache)
  key, sub = jax.random.split(key)
  token = jnp.where(done, pad_token_id, sample(logits[:, 0], sub))
  return token, cache, key


def _sampler(greedy, temperature, top_k, top_p):
  return functools.partial(_sample, greedy=greedy, temperature=temperature,
                           top_k=top_k, top_p=top_p)


@functools.partial(
    jax.jit, static_argnames=('graphdef', 'max_new_tokens', 'greedy',
                              'cache_dtype'))
def _generate(graphdef, state, ids, mask, key_data, stop_ids, temperature,
              top_k, top_p, pad_token_id, *, max_new_tokens, greedy,
              cache_dtype):
  """Returns (tokens [B, max_new_tokens] padded after each row's stop,
  number of decode steps run). Every host-side input is a NumPy array, which
  a multi-process run treats as replicated (the same on every process)."""
  model = nnx.merge(graphdef, state)
  sample = _sampler(greedy, temperature, top_k, top_p)
  token, cache, key = _first_token(
      model, ids, mask, jax.random.wrap_key_data(key_data), sample,
      max_new_tokens=max_new_tokens, cache_dtype=cache_dtype)
  out = jnp.full((ids.shape[0], max_new_tokens), pad_token_id, jnp.int32)
  out = out.at[:, 0].set(token)
  done = jnp.isin(token, stop_ids)

  def cond(carry):
    step, _, _, _, done, _ = carry
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    step, token, cache, out, done, key = carry
    token, cache, key = _next_token(model, token, cache, key, done, sample,
                                    pad_token_id)
    out = jax.lax.dynamic_update_slice(out, token[:, None], (0, step))
    done = done | jnp.isin(token, stop_ids)
    return step + 1, token, cache, out, done, key

  step, _, _, out, _, _ = jax.lax.while_loop(
      cond, body, (jnp.int32(1), token, cache, out, done, key))
  return out, step


# Token by token (`stream`): the same prefill and decode step as `_generate`,
# each its own jitted program, so a caller sees every token as it is made.
@functools.partial(
    jax.jit, static_argnames=('graphdef', 'max_new_tokens', 'greedy',
                              'cache_dtype'))
def _prefill(graphdef, state, ids, mask, key_data, temperature, top_k, top_p,
             *, max_new_tokens, greedy, cache_dtype):
  token, cache, key = _first_token(
      nnx.merge(graphdef, state), ids, mask,
      jax.random.wrap_key_data(key_data),
      _sampler(greedy, temperature, top_k, top_p),
      max_new_tokens=max_new_tokens, cache_dtype=cache_dtype)
  return token, cache, jax.random.key_data(key)


@functools.partial(jax.jit, static_argnames=('graphdef', 'greedy'),
                   donate_argnames=('cache',))
def _decode(graphdef, state, token, cache, key_data, temperature, top_k, top_p,
            pad_token_id, *, greedy):
  token, cache, key = _next_token(
      nnx.merge(graphdef, state), token, cache,
      jax.random.wrap_key_data(key_data), jnp.zeros(token.shape, bool),
      _sampler(greedy, temperature, top_k, top_p), pad_token_id)
  return token, cache, jax.random.key_data(key)


def _as_lists(prompts, attention_mask) -> list[list[int]]:
  if isinstance(prompts, (np.ndarray, jax.Array)):
    ids = np.asarray(prompts)
    if ids.ndim != 2:
      raise UserError(f'prompts array must be [batch, length], got shape '
                      f'{ids.shape}')
    mask = (np.ones_like(ids) if attention_mask is None
            else np.asarray(attention_mask))
    if mask.shape != ids.shape:
      raise UserError(f'attention_mask shape {mask.shape} does not match '
                      f'prompts shape {ids.shape}')
    return [row[m > 0].tolist() for row, m in zip(ids, mask)]
  if attention_mask is not None:
    raise UserError('attention_mask is only for array prompts; lists of token '
                    'lists carry no padding')
  return [list(map(int, p)) for p in prompts]


def _max_positions(model) -> int | None:
  """Learned position tables cap the length (GPT-2); RoPE models do not."""
  return getattr(model.config, 'n_positions', None)


def generate(model: nnx.Module,
             prompts: Sequence[Sequence[int]] | np.ndarray, *,
             attention_mask: np.ndarray | None = None,
             max_new_tokens: int,
             temperature: float = 0.0,
             top_k: int = 0,
             top_p: float = 1.0,
             stop_token_ids: Sequence[int] = (),
             pad_token_id: int = 0,
             seed: int = 0,
             key: np.ndarray | None = None,
             prompt_multiple: int = 8,
             cache_dtype=None) -> list[list[int]]:
  """Generates continuations of token-id prompts.

  Args:
    model: a causal LM with `init_cache` and the ftjax decoder call signature
      (`LlamaForCausalLM`, `GPT2LMHeadModel`); stacked layers
      (`model.scan_layers`) are unstacked first.
    prompts: a list of token-id lists (any lengths), or an int array [B, L]
      with `attention_mask` (1 real, 0 padding; left or right padded).
    attention_mask: for array prompts only.
    max_new_tokens: how many tokens to generate at most per prompt.
    temperature: 0 = greedy; > 0 samples from softmax(logits / temperature).
    top_k: keep only the k most likely tokens when sampling (0 = all).
    top_p: nucleus sampling mass (1.0 = off).
    stop_token_ids: a row stops after producing one of these (e.g. EOS).
    pad_token_id: fills the left padding of the prompt batch.
    seed: PRNG seed for sampling.
    key: raw PRNG key data (`jax.random.key_data`) to sample with instead of
      `seed`'s key (GRPO's rollouts: `fold_in(rng, rollout_index)`).
    prompt_multiple: the padded prompt length is rounded up to a multiple of
      this, so batches of similar lengths share one compiled program.
    cache_dtype: KV-cache dtype; None = the model's compute dtype.

  Returns:
    The new tokens of each prompt, ending with (and including) the first stop
    token when one was produced, as transformers does.
  """
  rows = _as_lists(prompts, attention_mask)
  ids, mask = _left_padded(model, rows, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_k=top_k, top_p=top_p,
                           pad_token_id=pad_token_id,
                           prompt_multiple=prompt_multiple)
  stop = np.asarray(list(stop_token_ids) or [-1], np.int32)
  # The KV cache is per layer: decode a scanned (stacked) model as its layer list.
  graphdef, state = nnx.split(layer_stack.unstack_layers(model))
  greedy = temperature == 0.0
  out, _ = _generate(
      graphdef, state, ids, mask,
      _key_data(seed) if key is None else np.asarray(key, np.uint32), stop,
      np.float32(temperature or 1.0), np.int32(top_k), np.float32(top_p),
      np.int32(pad_token_id), max_new_tokens=max_new_tokens, greedy=greedy,
      cache_dtype=None if cache_dtype is None else jnp.dtype(cache_dtype))
  if not out.is_fully_addressable:  # a model sharded over several processes
    out = multihost_utils.process_allgather(out, tiled=True)
  stops = set(stop_token_ids)
  results = []
  for row in np.asarray(out).tolist():
    cut = next((k + 1 for k, t in enumerate(row) if t in stops), len(row))
    results.append(row[:cut])
  return results


def stream(model: nnx.Module, prompt: Sequence[int], *, max_new_tokens: int,
           temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
           stop_token_ids: Sequence[int] = (), pad_token_id: int = 0,
           seed: int = 0, prompt_multiple: int = 8,
           cache_dtype=None) -> Iterator[int]:
  """Yields the new tokens of one prompt as they are made: token for token
  what `generate` returns for it with the same settings (the same prefill,
  decode step and key sequence, one jitted call per token), ending with the
  first stop token when one is produced. Single-process only."""
  ids, mask = _left_padded(model, [list(map(int, prompt))],
                           max_new_tokens=max_new_tokens,
                           temperature=temperature, top_k=top_k, top_p=top_p,
                           pad_token_id=pad_token_id,
                           prompt_multiple=prompt_multiple)
  graphdef, state = nnx.split(layer_stack.unstack_layers(model))
  greedy = temperature == 0.0
  settings = (np.float32(temperature or 1.0), np.int32(top_k),
              np.float32(top_p))
  token, cache, key = _prefill(
      graphdef, state, ids, mask, _key_data(seed), *settings,
      max_new_tokens=max_new_tokens, greedy=greedy,
      cache_dtype=None if cache_dtype is None else jnp.dtype(cache_dtype))
  stops = set(stop_token_ids)
  for step in range(max_new_tokens):
    if step:
      token, cache, key = _decode(graphdef, state, token, cache, key,
                                  *settings, np.int32(pad_token_id),
                                  greedy=greedy)
    value = int(np.asarray(token)[0])
    yield value
    if value in stops:
      return


def _key_data(seed: int) -> np.ndarray:
  return np.asarray(jax.random.key_data(jax.random.key(seed)))


def _left_padded(model, rows, *, max_new_tokens, temperature, top_k, top_p,
                 pad_token_id, prompt_multiple):
  """The checked prompts left-padded into ([B, P] ids, [B, P] mask), P a
  multiple of `prompt_multiple`."""
  if not rows or any(not r for r in rows):
    raise UserError('generate needs at least one prompt and no empty prompt')
  if max_new_tokens < 1:
    raise UserError(f'max_new_tokens must be >= 1, got {max_new_tokens}')
  if temperature < 0 or top_k < 0 or not 0.0 < top_p <= 1.0:
    raise UserError(f'invalid sampling settings: temperature={temperature} '
                    f'(>= 0), top_k={top_k} (>= 0), top_p={top_p} (in (0, 1])')
  vocab = model.config.vocab_size
  bad = [t for r in rows for t in r if not 0 <= t < vocab]
  if bad:
    raise UserError(f'prompt token id {bad[0]} is outside the vocabulary '
                    f'[0, {vocab})')
  longest = max(len(r) for r in rows)
  limit = _max_positions(model)
  # The last new token is never fed back, so it needs no position.
  if limit is not None and longest + max_new_tokens - 1 > limit:
    raise UserError(
        f'prompt length {longest} + max_new_tokens {max_new_tokens} exceeds '
        f'the model\'s {limit} positions')
  p = -(-longest // prompt_multiple) * prompt_multiple
  ids = np.full((len(rows), p), pad_token_id, np.int32)
  mask = np.zeros((len(rows), p), np.int32)
  for i, r in enumerate(rows):
    ids[i, p - len(r):] = r
    mask[i, p - len(r):] = 1
  return ids, mask
