"""Layers shared by the model families."""

from flax import nnx
import jax
import jax.numpy as jnp


def gelu_exact(x):
  """HF's `gelu`, x * Phi(x), through `erf` as PyTorch computes it.

  `jax.nn.gelu(approximate=False)` goes through `erfc`, which XLA:CPU lowers to a slower
  polynomial (~6% of a MiniLM training step); the two agree to float32 rounding.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))


def _table(embed: nnx.Embed):
  table = embed.embedding[...]
  return table.astype(embed.dtype) if embed.dtype is not None else table


def embed_rows(embed: nnx.Embed, start: int, length: int):
  """Rows start .. start + length - 1 of an embedding table, [length, H].

  A slice, not a gather of `arange` indices: its gradient is a pad where the gather's is a
  scatter-add.
  """
  return jax.lax.slice_in_dim(_table(embed), start, start + length, axis=0)


def embed_few(embed: nnx.Embed, ids):
  """Lookup in a table of a few rows (BERT's token types) as an exact one-hot contraction.

  A gather's gradient is a scatter-add whose B * T updates all land on those few rows: on a GPU
  that serialises on atomics. The contraction's gradient is one small matmul.
  """
  table = _table(embed)
  one_hot = jax.nn.one_hot(ids, table.shape[0], dtype=table.dtype)
  return jnp.einsum('...v,vh->...h', one_hot, table, precision=jax.lax.Precision.HIGHEST)


class Fp32LayerNorm(nnx.LayerNorm):
  """LayerNorm over the last axis with exact fp32 statistics, output cast to the compute dtype.

  A subclass of `nnx.LayerNorm` (not a wrapper) so the parameters stay at `<name>.scale` /
  `<name>.bias`; `__call__` is its own. Flax's default variance, E[x^2] - E[x]^2 in one pass
  (`use_fast_variance=True`), cancels catastrophically at GPT-2-like activations (mean 1000,
  std 1: 0.1-0.3 off torch's output). Here the variance is the corrected two-pass form (Chan,
  Golub & LeVeque): centre on the mean, then once more on the mean of the centred values,
  which removes the fp32 rounding of the first mean; the output is then within ~1e-6 of the
  exact (float64) LayerNorm, where torch's own fp32 kernel is ~1e-4 off at that scale.
  """

  def __init__(self, features: int, epsilon: float, *, dtype, param_dtype, rngs: nnx.Rngs,
               use_bias: bool = True):
    super().__init__(
        features, epsilon=epsilon, dtype=jnp.float32, param_dtype=param_dtype,
        use_fast_variance=False, use_bias=use_bias,
        scale_metadata={'out_sharding': ('embed',), 'eager_sharding': False},
        bias_metadata={'out_sharding': ('embed',), 'eager_sharding': False},
        rngs=rngs)
    self.out_dtype = dtype

  def __call__(self, x):
    x = x.astype(jnp.float32)
    d = x - jnp.mean(x, axis=-1, keepdims=True)
    d = d - jnp.mean(d, axis=-1, keepdims=True)  # the first mean's rounding, taken out
    y = d * jax.lax.rsqrt(jnp.mean(jnp.square(d), axis=-1, keepdims=True) + self.epsilon)
    y = y * self.scale[...].astype(jnp.float32)
    if self.bias is not None:  # `use_bias=False` (ModernBERT's norms)
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(self.out_dtype)


def lm_logits(x, embed: nnx.Embed, lm_head: nnx.Linear | None, dtype):
  """fp32 vocabulary logits from hidden states: a separate head, or the tied embedding table."""
  if lm_head is None:
    table = embed.embedding[...].astype(dtype)
    return jnp.einsum('bth,vh->btv', x, table, preferred_element_type=jnp.float32)
  kernel = lm_head.kernel[...].astype(dtype)
  return jnp.einsum('bth,hv->btv', x, kernel, preferred_element_type=jnp.float32)


def last_token(hidden, input_ids, attention_mask, pad_token_id):
  """Each row's hidden state at its last real token, [B, H] of [B, T, H] (any padding side).

  The pooling of a decoder sequence classifier, as HF's: the last position that is not padding
  and whose token is not `pad_token_id` (None: the mask alone). A checkpoint whose pad id is
  its end-of-turn token (SmolLM2: both `<|im_end|>`) is thus read at the token before a
  closing `<|im_end|>`, in ftjax as in transformers, so an exported reward model scores alike.
  """
  real = jnp.ones(input_ids.shape, bool) if attention_mask is None else (
      jnp.asarray(attention_mask) > 0)
  if isinstance(pad_token_id, (list, tuple)):  # a config may hold a list
    pad_token_id = pad_token_id[0] if pad_token_id else None
  if pad_token_id is not None:
    real = real & (input_ids != pad_token_id)
  last = jnp.argmax(jnp.arange(input_ids.shape[1]) * real, axis=-1)
  return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
