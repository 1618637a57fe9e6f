"""GPT-2 (HF `GPT2LMHeadModel`) as Flax NNX modules.

Module paths mirror HF so conversion is a table (`weights/gpt2_table.py`):
  transformer.{wte,wpe}, transformer.h.{i}.{ln_1,ln_2},
  transformer.h.{i}.attn.{c_attn,c_proj}, transformer.h.{i}.mlp.{c_fc,c_proj},
  transformer.ln_f, lm_head (only when `tie_word_embeddings` is false; GPT-2
  ties it to `wte` by default); a sequence classifier has `score` instead.
HF's `Conv1D` stores weights [in, out], which is already the NNX kernel
layout: no transpose. Same call signature and KV cache as `LlamaForCausalLM`.
Learned positions: a position >= `n_positions` has no embedding (`generate`
refuses such lengths up front).
"""

import dataclasses
from typing import Any

from flax import nnx
import jax.numpy as jnp

from ftjax.errors import UserError
from ftjax.models import layer_stack
from ftjax.models import layers
from ftjax.models import attention
from ftjax.models import kv_cache as kv_cache_lib
from ftjax.models.bert import ACTIVATIONS
from ftjax.models.llama import finish


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  """Architecture hyperparameters (HF GPT2Config names)."""

  model_type: str = 'gpt2'
  vocab_size: int = 50257
  n_positions: int = 1024
  n_embd: int = 768
  n_layer: int = 12
  n_head: int = 12
  n_inner: int | None = None
  activation_function: str = 'gelu_new'
  resid_pdrop: float = 0.1
  embd_pdrop: float = 0.1
  attn_pdrop: float = 0.1
  classifier_dropout: float = 0.1  # GPT2ForTokenClassification's (transformers' default 0.1)
  layer_norm_epsilon: float = 1e-5
  initializer_range: float = 0.02
  scale_attn_weights: bool = True
  scale_attn_by_inverse_layer_idx: bool = False
  tie_word_embeddings: bool = True
  bos_token_id: Any = 50256
  eos_token_id: Any = 50256
  pad_token_id: Any = None

  def __post_init__(self):
    if self.activation_function not in ACTIVATIONS:
      raise UserError(
          f"unsupported activation_function '{self.activation_function}' in "
          f'gpt2 config; supported: {", ".join(sorted(ACTIVATIONS))}')
    if self.n_embd % self.n_head:
      raise UserError(f'n_embd {self.n_embd} is not divisible by n_head '
                      f'{self.n_head} in gpt2 config')

  @property
  def head_dim(self) -> int:
    return self.n_embd // self.n_head

  @property
  def inner_dim(self) -> int:
    return self.n_inner or 4 * self.n_embd

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> 'GPT2Config':
    """Builds a config from an HF config.json dict; unknown keys are ignored."""
    if hf.get('add_cross_attention'):
      raise UserError('gpt2 config with add_cross_attention is not supported')
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in hf.items()
              if k in names and (v is not None or k in ('n_inner',))}
    if isinstance(kwargs.get('eos_token_id'), list):
      kwargs['eos_token_id'] = tuple(kwargs['eos_token_id'])
    return cls(**kwargs)

  def to_hf(self) -> dict[str, Any]:
    hf = dataclasses.asdict(self)
    if isinstance(hf['eos_token_id'], tuple):
      hf['eos_token_id'] = list(hf['eos_token_id'])
    return hf


def _linear(cfg, d_in, d_out, axes, dtype, param_dtype, rngs, bias=True):
  return nnx.Linear(
      d_in, d_out, use_bias=bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=nnx.initializers.normal(cfg.initializer_range),
      kernel_metadata={'out_sharding': axes, 'eager_sharding': False},
      bias_metadata={'out_sharding': axes[1:], 'eager_sharding': False},
      rngs=rngs)


def _embed(cfg, num, dtype, param_dtype, rngs, axes):
  return nnx.Embed(
      num, cfg.n_embd, dtype=dtype, param_dtype=param_dtype,
      embedding_init=nnx.initializers.normal(cfg.initializer_range),
      embedding_metadata={'out_sharding': axes, 'eager_sharding': False},
      rngs=rngs)


def LayerNorm(cfg: GPT2Config, *, dtype, param_dtype, rngs: nnx.Rngs):  # pylint: disable=invalid-name
  """This family's LayerNorm: fp32 statistics, params at `<name>.scale` / `<name>.bias`."""
  return layers.Fp32LayerNorm(cfg.n_embd, cfg.layer_norm_epsilon, dtype=dtype, param_dtype=param_dtype,
                              rngs=rngs)


class GPT2Attention(nnx.Module):
  """Fused q/k/v projection `c_attn` [H, 3H], output `c_proj`; `impl` as
  `llama.LlamaAttention`'s."""

  def __init__(self, cfg: GPT2Config, *, dtype, param_dtype, rngs: nnx.Rngs,
               impl: str = 'xla'):
    self.cfg = cfg
    self.attention_impl = attention.check_implementation(impl)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.c_attn = _linear(cfg, cfg.n_embd, 3 * cfg.n_embd, ('embed', 'heads'),
                          **kw)
    self.c_proj = _linear(cfg, cfg.n_embd, cfg.n_embd, ('heads', 'embed'),
                          **kw)

  def __call__(self, x, shape, layout, cache, rngs=None, *, layer=0):
    """x: [B*T, H] rows; cache: this layer's `kv_cache.LayerCache` or None;
    layer: this block's index (an int, or traced when scanned)."""
    b, t = shape
    cfg = self.cfg
    n, d = cfg.n_head, cfg.head_dim
    qkv = layer_stack.name_qkv(self.c_attn(x))
    q, k, v = jnp.split(qkv.reshape(b, t, 3, n, d), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
    k, v = attention.update_kv(cache, k, v)
    scale = d ** -0.5 if cfg.scale_attn_weights else 1.0
    if cfg.scale_attn_by_inverse_layer_idx:
      scale = scale / (layer + 1)
    out = attention.attend(q, k, v, layout.mask(), scale=scale,
                           dropout_rate=cfg.attn_pdrop, rngs=rngs,
                           impl=self.attention_impl if cache is None else 'xla')
    out = self.c_proj(out.reshape(b * t, -1))
    return attention.dropout(cfg.resid_pdrop, out, rngs), (k, v)


class GPT2MLP(nnx.Module):

  def __init__(self, cfg: GPT2Config, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.act = ACTIVATIONS[cfg.activation_function]
    self.c_fc = _linear(cfg, cfg.n_embd, cfg.inner_dim, ('embed', 'mlp'), **kw)
    self.c_proj = _linear(cfg, cfg.inner_dim, cfg.n_embd, ('mlp', 'embed'),
                          **kw)

  def __call__(self, x, rngs=None):
    x = self.c_proj(self.act(self.c_fc(x)))
    return attention.dropout(self.cfg.resid_pdrop, x, rngs)


class GPT2Block(nnx.Module):
  """Pre-LayerNorm block."""

  def __init__(self, cfg: GPT2Config, *, dtype, param_dtype, rngs: nnx.Rngs,
               attention_impl: str = 'xla'):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.ln_1 = LayerNorm(cfg, **kw)
    self.attn = GPT2Attention(cfg, **kw, impl=attention_impl)
    self.ln_2 = LayerNorm(cfg, **kw)
    self.mlp = GPT2MLP(cfg, **kw)

  def __call__(self, x, shape, layout, cache, rngs=None, *, layer=0):
    attn, kv = self.attn(self.ln_1(x), shape, layout, cache, rngs, layer=layer)
    x = x + attn
    return x + self.mlp(self.ln_2(x), rngs), kv


class GPT2Model(nnx.Module):
  """HF `GPT2Model`: embeddings, blocks, final LayerNorm.

  The blocks are identical modules (run through `layer_stack.run_layers`, so
  they can be stacked and scanned); `remat` is the per-block policy and
  `attention_impl` every block's attention implementation.
  """

  def __init__(self, cfg: GPT2Config, *, dtype, param_dtype, rngs: nnx.Rngs,
               remat: str = 'none', attention_impl: str = 'xla'):
    self.cfg = cfg
    self.remat = layer_stack.check_remat(remat)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.wte = _embed(cfg, cfg.vocab_size, axes=('vocab', 'embed'), **kw)
    self.wpe = _embed(cfg, cfg.n_positions, axes=(None, 'embed'), **kw)
    self.h = nnx.List([GPT2Block(cfg, **kw, attention_impl=attention_impl)
                       for _ in range(cfg.n_layer)])
    self.ln_f = LayerNorm(cfg, **kw)

  def __call__(self, input_ids, layout, positions, cache, rngs=None):
    b, t = input_ids.shape
    x = self.wte(input_ids) + self.wpe(positions)
    x = attention.dropout(self.cfg.embd_pdrop, x, rngs).reshape(b * t, -1)

    def body(block, x, i, kv, rngs):
      layer_cache = (None if cache is None
                     else kv_cache_lib.LayerCache(*kv, cache.index))
      x, kv = block(x, (b, t), layout, layer_cache, rngs, layer=i)
      return x, (None if cache is None else kv)

    x, kvs = layer_stack.run_layers(
        self.h, body, x, None if cache is None else cache.per_layer(),
        rngs=rngs, remat=self.remat)
    return self.ln_f(x).reshape(b, t, -1), kvs


class GPT2LMHeadModel(nnx.Module):
  """GPT-2 + LM head (tied to `wte` unless `tie_word_embeddings` is false);
  `remat` and `attention` as `llama.LlamaForCausalLM`'s."""

  def __init__(self, config: GPT2Config, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs, remat: str = 'none',
               attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    self.config = config
    self.dtype = dtype
    self.transformer = GPT2Model(config, dtype=dtype, param_dtype=param_dtype,
                                 rngs=rngs, remat=remat,
                                 attention_impl=attention)
    self.lm_head = None if config.tie_word_embeddings else _linear(
        config, config.n_embd, config.vocab_size, ('embed', 'vocab'),
        dtype=dtype, param_dtype=param_dtype, rngs=rngs, bias=False)

  def init_cache(self, batch_size: int, max_length: int,
                 dtype=None) -> kv_cache_lib.KVCache:
    """An empty fixed-shape cache (k/v in `dtype`, default compute dtype)."""
    cfg = self.config
    return kv_cache_lib.init_cache(cfg.n_layer, batch_size, max_length,
                                   cfg.n_head, cfg.head_dim,
                                   dtype or self.dtype)

  def __call__(self, input_ids, attention_mask=None, *, positions=None,
               segment_ids=None, cache: kv_cache_lib.KVCache | None = None,
               rngs: nnx.Rngs | None = None, return_hidden: bool = False):
    """Same contract as `LlamaForCausalLM.__call__`: fp32 logits [B, T, V]
    (hidden states [B, T, H] with `return_hidden`), or (that, new cache) when
    `cache` is given."""
    input_ids = jnp.asarray(input_ids)
    layout, positions, new_cache = attention.make_layout(
        input_ids, attention_mask, positions, segment_ids, cache)
    x, kvs = self.transformer(input_ids, layout, positions, cache, rngs)
    return finish(x if return_hidden else self.lm_logits(x), kvs, new_cache)

  def lm_logits(self, hidden):
    """fp32 logits [B, T, vocab] of final hidden states [B, T, H]."""
    return layers.lm_logits(hidden, self.transformer.wte, self.lm_head, self.dtype)


class GPT2ForSequenceClassification(nnx.Module):
  """GPT-2 + linear `score` (no bias) on the last real token; HF
  `GPT2ForSequenceClassification`. `remat` and `attention` as `GPT2LMHeadModel`'s."""

  def __init__(self, config: GPT2Config, num_labels: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs, remat: str = 'none',
               attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    self.config = config
    self.dtype = dtype
    self.num_labels = num_labels
    self.transformer = GPT2Model(config, dtype=dtype, param_dtype=param_dtype,
                                 rngs=rngs, remat=remat, attention_impl=attention)
    self.score = _linear(config, config.n_embd, num_labels, ('embed', None),
                         dtype=dtype, param_dtype=param_dtype, rngs=rngs, bias=False)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               positions=None, segment_ids=None, rngs: nnx.Rngs | None = None):
    """Logits [B, num_labels] (compute dtype), as `LlamaForSequenceClassification`."""
    del token_type_ids
    input_ids = jnp.asarray(input_ids)
    x = attention.decoder_states(self.transformer, input_ids, attention_mask, positions,
                                 segment_ids, rngs)
    return self.score(layers.last_token(x, input_ids, attention_mask,
                                         self.config.pad_token_id))


class GPT2ForTokenClassification(nnx.Module):
  """GPT-2 + dropout + linear `classifier` (with a bias) on every position; HF
  `GPT2ForTokenClassification`. `remat` and `attention` as `GPT2LMHeadModel`'s."""

  def __init__(self, config: GPT2Config, num_labels: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs, remat: str = 'none',
               attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    self.config = config
    self.dtype = dtype
    self.num_labels = num_labels
    self.transformer = GPT2Model(config, dtype=dtype, param_dtype=param_dtype,
                                 rngs=rngs, remat=remat, attention_impl=attention)
    self.classifier = _linear(config, config.n_embd, num_labels, ('embed', None),
                              dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               positions=None, segment_ids=None, rngs: nnx.Rngs | None = None):
    """Per-position logits [B, T, num_labels] (compute dtype)."""
    del token_type_ids
    input_ids = jnp.asarray(input_ids)
    x = attention.decoder_states(self.transformer, input_ids, attention_mask, positions,
                                 segment_ids, rngs)
    return self.classifier(attention.dropout(self.config.classifier_dropout, x, rngs))
