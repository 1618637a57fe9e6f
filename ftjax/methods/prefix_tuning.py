"""Prefix tuning (Li & Liang 2021): trainable key/value prefixes in every attention layer.

Every layer's attention sees `num_virtual_tokens` extra keys and values before the real ones
(always attended), and the real tokens' positions start after them, exactly as PEFT's
`PrefixTuningConfig` feeds them to an HF model as a KV cache (`past_key_values`). The prefixes
of all layers are one table [n, layers * 2 * D] (layer i's key is slice 2i, its value 2i + 1;
D = kv_heads * head_dim, which is the hidden size without grouped-query attention), either
learned directly or, with `prefix_projection`, produced by an MLP from an [n, D] embedding
(the reparameterisation of the paper; tanh, `encoder_hidden_size` wide).
- BERT family: each self-attention is wrapped to attend to its prefix first.
- Decoders (Llama family, GPT-2): the prefix *is* the start of the model's own KV cache
  (`prompt_layers.PrefilledDecoder`), keys used as stored (un-rotated, as PEFT's cache entries
  are); the model returns logits for the real tokens only, and generation works as is. Packing
  (`data.packing`) is refused.
Not mergeable; exported in PEFT's format (the table, after the MLP).

Options (`config.method.prefix_tuning.*`):
  num_virtual_tokens, prefix_projection, encoder_hidden_size (0 = D), train_head.

Trainable parameters: without projection n * layers * 2 * D; with it
n * D + (D * e + e) + (e * layers * 2 * D + layers * 2 * D); plus the head (causal LMs have
none).
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ftjax.errors import UserError
from ftjax.methods import lora_layers, prompt_layers
from ftjax.methods.base import HEAD_PATTERN, Method
from ftjax.methods.lora import trainable_with_head
from ftjax.methods.prompt_tuning import find_embeddings
from ftjax.methods.registry import register
from ftjax.models import bert
from ftjax.weights import peft_io


def _uniform(key, shape, fan_in, dtype):
  """torch.nn.Linear's default init, as PEFT's prefix MLP gets."""
  bound = 1.0 / np.sqrt(fan_in)
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class PrefixEncoder(nnx.Module):
  """The prefix table [n, layers * 2 * hidden]: learned directly or through an MLP."""

  def __init__(self, n: int, hidden: int, layers: int, *, projection: bool, encoder_hidden: int,
               dtype, rngs: nnx.Rngs):
    out = layers * 2 * hidden
    self.projection = projection
    if projection:
      e = encoder_hidden or hidden
      self.embedding = lora_layers.AdapterParam(jax.random.normal(rngs.params(), (n, hidden), dtype))
      self.mlp_in = lora_layers.AdapterParam(_uniform(rngs.params(), (hidden, e), hidden, dtype))
      self.mlp_in_bias = lora_layers.AdapterParam(_uniform(rngs.params(), (e,), hidden, dtype))
      self.mlp_out = lora_layers.AdapterParam(_uniform(rngs.params(), (e, out), e, dtype))
      self.mlp_out_bias = lora_layers.AdapterParam(_uniform(rngs.params(), (out,), e, dtype))
    else:
      self.embedding = lora_layers.AdapterParam(jax.random.normal(rngs.params(), (n, out), dtype))

  def __call__(self):
    x = self.embedding[...]
    if self.projection:
      x = jnp.tanh(x @ self.mlp_in[...] + self.mlp_in_bias[...])
      x = x @ self.mlp_out[...] + self.mlp_out_bias[...]
    return x


class PrefixSelfAttention(nnx.Module):
  """`BertSelfAttention` (same projections at the same paths) attending to a prefix first."""

  def __init__(self, attention: bert.BertSelfAttention, prefix: PrefixEncoder, index: int):
    self.cfg = attention.cfg
    self.query, self.key, self.value = attention.query, attention.key, attention.value
    self.prefix = prefix  # shared by every layer: one table, one set of parameters
    self.index = index

  def __call__(self, x, mask_bias, rngs=None):
    """As `BertSelfAttention.__call__`, with n always-attended prefix keys/values."""
    b, s = mask_bias.shape[0], mask_bias.shape[-1]
    n_heads, d = self.cfg.num_attention_heads, self.cfg.head_dim
    q, k, v = (proj(x).reshape(b, s, n_heads, d).transpose(0, 2, 1, 3)
               for proj in (self.query, self.key, self.value))
    table = self.prefix()  # [n, layers * 2 * hidden]
    n = table.shape[0]
    table = table.reshape(n, -1, n_heads, d)
    pk, pv = (jnp.broadcast_to(table[:, 2 * self.index + i].transpose(1, 0, 2)[None],
                               (b, n_heads, n, d)).astype(k.dtype) for i in (0, 1))
    k = jnp.concatenate([pk, k], axis=2)
    v = jnp.concatenate([pv, v], axis=2)
    mask_bias = jnp.concatenate([jnp.zeros((b, 1, 1, n), mask_bias.dtype), mask_bias], axis=-1)
    scores = jnp.einsum('bnqd,bnkd->bnqk', q * (d ** -0.5), k,
                        preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores + mask_bias, axis=-1)
    probs = bert._dropout(self.cfg.attention_probs_dropout_prob, probs, rngs)  # pylint: disable=protected-access
    out = jnp.einsum('bnqk,bnkd->bnqd', probs.astype(v.dtype), v)
    return out.transpose(0, 2, 1, 3).reshape(b * s, n_heads * d)


class PrefixTunedDecoder(prompt_layers.PrefilledDecoder):
  """A decoder whose KV cache starts with the prefix table's keys and values."""

  def __init__(self, model, prefix: PrefixEncoder, layout: tuple[int, int, int]):
    super().__init__(model, prefix.embedding[...].shape[0])
    self.prefix = prefix
    self.layout = layout  # (layers, kv heads, head dim)

  def prefill(self, cache, rngs):
    del rngs
    layers, kv_heads, head_dim = self.layout
    n, b = self.num_virtual_tokens, cache.lengths.shape[0]
    # PEFT's view: [n, layers * 2, kv_heads, head_dim]; layer i's key 2i, value 2i + 1.
    table = self.prefix().reshape(n, layers, 2, kv_heads, head_dim)
    per_layer = lambda j: [jnp.broadcast_to(table[None, :, i, j], (b, n, kv_heads, head_dim))
                           for i in range(layers)]
    return prompt_layers.write_entries(cache, per_layer(0), per_layer(1))


@register
class PrefixTuning(Method):
  name = "prefix_tuning"
  defaults = {"num_virtual_tokens": 20, "prefix_projection": False, "encoder_hidden_size": 0,
              "train_head": True}

  def apply(self, model, *, rngs):
    o = self.options
    n = o["num_virtual_tokens"]
    if n <= 0:
      raise UserError(f"config key 'method.prefix_tuning.num_virtual_tokens' must be > 0, got {n}")
    if prompt_layers.is_decoder(model):
      layout = prompt_layers.cache_layout(model)
      layers, kv_heads, head_dim = layout
      _, embed = prompt_layers.find_token_embedding(model, self.name)
      prefix = PrefixEncoder(n, kv_heads * head_dim, layers, projection=o["prefix_projection"],
                             encoder_hidden=o["encoder_hidden_size"],
                             dtype=embed.embedding[...].dtype, rngs=rngs)
      return PrefixTunedDecoder(model, prefix, layout)
    _, embeddings = find_embeddings(model, self.name)
    cfg = embeddings.cfg
    attentions = [(p, m) for p, m in nnx.iter_modules(model)
                  if type(m) is bert.BertSelfAttention]  # pylint: disable=unidiomatic-typecheck
    prefix = PrefixEncoder(n, cfg.hidden_size, len(attentions), projection=o["prefix_projection"],
                           encoder_hidden=o["encoder_hidden_size"],
                           dtype=embeddings.word_embeddings.embedding[...].dtype, rngs=rngs)
    for index, (path, attention) in enumerate(attentions):
      lora_layers.replace_module(model, path, PrefixSelfAttention(attention, prefix, index))
    embeddings.position_offset = n  # real tokens come after the prefix, as with HF's KV cache
    return model

  def trainable(self):
    return trainable_with_head(lora_layers.AdapterParam, self.options["train_head"])

  def merge(self, model):
    return None

  def check_config(self, cfg):
    prompt_layers.refuse_packing(self.name, cfg)

  def export_peft(self, model, out_dir, *, base_path: str):
    """Writes a PEFT prefix-tuning adapter holding the (projected) prefix table + the head."""
    if isinstance(model, PrefixTunedDecoder):
      table = np.asarray(jax.device_get(model.prefix()), np.float32)
      layers, kv_heads, head_dim = model.layout
      # PEFT's sizes for grouped-query attention: token_dim = kv_heads * head_dim, "heads" = kv.
      return peft_io.export_prompt_learning(
          model, out_dir, base_path=base_path, peft_type="PREFIX_TUNING", prompt_embeddings=table,
          head_pattern=HEAD_PATTERN,
          extra=dict(num_virtual_tokens=table.shape[0], token_dim=kv_heads * head_dim,
                     num_attention_heads=kv_heads, num_layers=layers,
                     encoder_hidden_size=kv_heads * head_dim, prefix_projection=False))
    _, embeddings = find_embeddings(model, self.name)
    cfg = embeddings.cfg
    layer = next(m for _, m in nnx.iter_modules(model) if isinstance(m, PrefixSelfAttention))
    table = np.asarray(jax.device_get(layer.prefix()), np.float32)
    # The table after the MLP: PEFT saves that too and loads it without the MLP.
    return peft_io.export_prompt_learning(
        model, out_dir, base_path=base_path, peft_type="PREFIX_TUNING", prompt_embeddings=table,
        head_pattern=HEAD_PATTERN,
        extra=dict(num_virtual_tokens=table.shape[0], token_dim=cfg.hidden_size,
                   num_attention_heads=cfg.num_attention_heads, num_layers=cfg.num_hidden_layers,
                   encoder_hidden_size=cfg.hidden_size, prefix_projection=False))
