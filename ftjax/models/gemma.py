"""Gemma 2 and Gemma 3 (text) decoders in NNX; HF `gemma2` and `gemma3_text`.

What sets them apart from the Llama family (`llama.py`), all read from config.json:
  * RMSNorm scales by `1 + weight` (the weight is stored around 0), in fp32;
  * the token embeddings are multiplied by sqrt(hidden_size);
  * "sandwich" norms: each block normalises its attention and MLP inputs *and outputs*
    (`input_layernorm`, `post_attention_layernorm`, `pre_feedforward_layernorm`,
    `post_feedforward_layernorm`);
  * attention scores are scaled by `query_pre_attn_scalar ** -0.5`, not head_dim's;
  * sliding-window and global layers alternate (`layer_types`; Gemma 2: every other layer,
    Gemma 3: five local to one global);
  * GeGLU MLP (`gelu_pytorch_tanh`);
  * Gemma 2 soft-caps the attention logits and the final logits (c * tanh(x / c));
  * Gemma 3 normalises queries and keys per head (`q_norm`, `k_norm`, also `1 + weight`)
    and gives sliding and global layers their own RoPE (`rope_parameters` per layer type:
    base 10k local, 1M global with the checkpoint's scaling).

Transformers' Gemma 3 ignores `attn_logit_softcapping` (its attention never passes it), so
this port does too, to stay equal. `use_bidirectional_attention` (EmbeddingGemma) is refused.

Module paths mirror HF (`weights/gemma_table.py`): model.embed_tokens,
model.layers.{i}.self_attn.{q,k,v,o}_proj (+ q_norm, k_norm), model.layers.{i}.mlp.
{gate,up,down}_proj, the four block norms, model.norm; lm_head only when untied; a sequence
classifier has `score`. Compute runs in `dtype`; norms, RoPE, softmax, soft-caps and logits
are fp32. Params carry the Llama family's logical axes.
"""

import dataclasses
import functools
import math
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from ftjax.errors import UserError
from ftjax.models import attention
from ftjax.models import kv_cache as kv_cache_lib
from ftjax.models import layer_stack
from ftjax.models import layers
from ftjax.models import llama
from ftjax.models import rope as rope_lib

MODEL_TYPES = ('gemma2', 'gemma3_text')
LAYER_TYPES = ('full_attention', 'sliding_attention')
# Every `sliding_window_pattern`-th layer is global when config.json has no `layer_types`.
_DEFAULT_PATTERN = {'gemma2': 2, 'gemma3_text': 6}
_DEFAULT_THETA = {'gemma2': (10000.0, 10000.0), 'gemma3_text': (1_000_000.0, 10_000.0)}


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
  """Architecture hyperparameters, read from / written to an HF config.json (hashable)."""

  model_type: str = 'gemma3_text'
  vocab_size: int = 262144
  hidden_size: int = 640
  intermediate_size: int = 2048
  num_hidden_layers: int = 18
  num_attention_heads: int = 4
  num_key_value_heads: int = 1
  head_dim: int = 256
  hidden_act: str = 'gelu_pytorch_tanh'
  max_position_embeddings: int = 32768
  rms_norm_eps: float = 1e-6
  rope: rope_lib.RopeConfig = rope_lib.RopeConfig(theta=1_000_000.0)  # global layers
  local_rope: rope_lib.RopeConfig = rope_lib.RopeConfig()  # sliding layers
  query_pre_attn_scalar: int | float = 256  # an int in HF's strict config
  attn_logit_softcapping: float | None = None
  final_logit_softcapping: float | None = None
  sliding_window: int | None = 512
  layer_types: tuple[str, ...] = ()
  attention_bias: bool = False
  tie_word_embeddings: bool = True
  attention_dropout: float = 0.0
  classifier_dropout: float = 0.1  # Gemma2ForTokenClassification's (`GenericForTokenClassification`)
  initializer_range: float = 0.02
  bos_token_id: Any = 2
  eos_token_id: Any = 1
  pad_token_id: Any = 0

  # What `llama.LlamaMLP` reads.
  mlp_bias = False

  def __post_init__(self):
    where = f'{self.model_type} config'
    if self.model_type not in MODEL_TYPES:
      raise UserError(f"unsupported model_type '{self.model_type}' for the Gemma family; "
                      f'supported: {", ".join(MODEL_TYPES)}')
    if self.hidden_act not in llama.ACTIVATIONS:
      raise UserError(f"unsupported hidden_activation '{self.hidden_act}' in {where}; "
                      f'supported: {", ".join(sorted(llama.ACTIVATIONS))}')
    if self.num_attention_heads % self.num_key_value_heads:
      raise UserError(f'num_attention_heads {self.num_attention_heads} is not a multiple of '
                      f'num_key_value_heads {self.num_key_value_heads} in {where}')
    if len(self.layer_types) != self.num_hidden_layers:
      raise UserError(f'{len(self.layer_types)} layer_types for {self.num_hidden_layers} '
                      f'layers in {where}')
    bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
    if bad:
      raise UserError(f"unknown layer type '{bad[0]}' in {where}; known: {', '.join(LAYER_TYPES)}")

  @property
  def qk_norm(self) -> bool:
    return self.model_type == 'gemma3_text'

  @property
  def attention_softcap(self) -> float | None:
    # Transformers' Gemma 3 attention does not apply it (see the module docstring).
    return self.attn_logit_softcapping if self.model_type == 'gemma2' else None

  def window(self, layer: int) -> int | None:
    sliding = self.layer_types[layer] == 'sliding_attention'
    return self.sliding_window if sliding and self.sliding_window else None

  @property
  def layer_windows(self) -> tuple[int | None, ...]:
    return tuple(self.window(i) for i in range(self.num_hidden_layers))

  def layer_rope(self, layer: int) -> rope_lib.RopeConfig:
    return self.local_rope if self.layer_types[layer] == 'sliding_attention' else self.rope

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> 'GemmaConfig':
    """Builds a config from an HF config.json dict; unknown keys are ignored."""
    model_type = hf.get('model_type', 'gemma3_text')
    where = f'{model_type} config'

    get = functools.partial(llama.hf_get, hf)

    if model_type not in MODEL_TYPES:
      raise UserError(f"unsupported model_type '{model_type}' for the Gemma family; "
                      f'supported: {", ".join(MODEL_TYPES)}')
    if hf.get('use_bidirectional_attention'):
      raise UserError(f"use_bidirectional_attention in {where} (an embedding Gemma) is not "
                      'supported: ftjax Gemma decoders are causal')
    try:
      heads = hf['num_attention_heads']
      n_layers = hf['num_hidden_layers']
      pattern = get('sliding_window_pattern', _DEFAULT_PATTERN[model_type])
      layer_types = tuple(get('layer_types', None) or [
          'sliding_attention' if (i + 1) % pattern else 'full_attention'
          for i in range(n_layers)])
      rope, local_rope = _ropes(hf, model_type, where)
      kw = dict(
          model_type=model_type, vocab_size=hf['vocab_size'], hidden_size=hf['hidden_size'],
          intermediate_size=hf['intermediate_size'], num_hidden_layers=n_layers,
          num_attention_heads=heads, num_key_value_heads=get('num_key_value_heads', heads),
          head_dim=get('head_dim', hf['hidden_size'] // heads),
          hidden_act=get('hidden_activation', get('hidden_act', 'gelu_pytorch_tanh')),
          max_position_embeddings=get('max_position_embeddings', 8192),
          rms_norm_eps=get('rms_norm_eps', 1e-6), rope=rope, local_rope=local_rope,
          query_pre_attn_scalar=get('query_pre_attn_scalar', 256),
          attn_logit_softcapping=hf.get('attn_logit_softcapping'),
          final_logit_softcapping=hf.get('final_logit_softcapping'),
          sliding_window=hf.get('sliding_window'), layer_types=layer_types,
          attention_bias=bool(get('attention_bias', False)),
          tie_word_embeddings=bool(get('tie_word_embeddings', True)),
          attention_dropout=float(get('attention_dropout', 0.0)),
          classifier_dropout=float(get('classifier_dropout', get('hidden_dropout', 0.1))),
          initializer_range=get('initializer_range', 0.02),
          bos_token_id=hf.get('bos_token_id'),
          eos_token_id=llama.hashable(hf.get('eos_token_id')),
          pad_token_id=hf.get('pad_token_id'))
    except KeyError as e:
      raise UserError(f'missing key {e} in {where}') from e
    return cls(**kw)

  def to_hf(self) -> dict[str, Any]:
    """The HF config.json keys for this architecture."""
    hf = {k: getattr(self, k) for k in (
        'model_type', 'vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers',
        'num_attention_heads', 'num_key_value_heads', 'head_dim', 'max_position_embeddings',
        'rms_norm_eps', 'query_pre_attn_scalar', 'attn_logit_softcapping',
        'final_logit_softcapping', 'sliding_window', 'attention_bias', 'tie_word_embeddings',
        'attention_dropout', 'initializer_range', 'bos_token_id', 'pad_token_id')}
    hf['hidden_activation'] = self.hidden_act
    eos = self.eos_token_id
    hf['eos_token_id'] = list(eos) if isinstance(eos, tuple) else eos
    hf['layer_types'] = list(self.layer_types)
    if self.model_type == 'gemma3_text':
      hf['rope_parameters'] = {'full_attention': self.rope.to_hf(),
                               'sliding_attention': self.local_rope.to_hf()}
      # The pre-transformers-5 spelling too: the scaling applies to the global layers.
      hf.update(rope_lib.legacy_keys(self.rope.to_hf()),
                rope_local_base_freq=self.local_rope.theta)
      hf['use_bidirectional_attention'] = False
    else:
      hf['rope_parameters'] = self.rope.to_hf()
    if self.classifier_dropout != 0.1:
      hf['classifier_dropout'] = self.classifier_dropout
    return hf


def _ropes(hf, model_type, where) -> tuple[rope_lib.RopeConfig, rope_lib.RopeConfig]:
  """(global, sliding) RoPE: transformers 5's per-layer-type `rope_parameters` (Gemma 3), one
  `rope_parameters` dict (Gemma 2), or the legacy `rope_theta` / `rope_scaling` /
  `rope_local_base_freq` keys (the scaling applies to the global layers only)."""
  global_theta, local_theta = _DEFAULT_THETA[model_type]
  params = hf.get('rope_parameters') or {}
  per_type = isinstance(params, dict) and set(params) <= set(LAYER_TYPES) and bool(params)
  if model_type == 'gemma2' or not per_type:
    full = {'rope_theta': hf.get('rope_theta', global_theta), **(
        {} if per_type else params)}
    full = rope_lib.RopeConfig.from_hf(
        {'max_position_embeddings': 8192, **hf, 'rope_parameters': full}, where)
    if model_type == 'gemma2':
      return full, full
    local = rope_lib.RopeConfig(theta=float(hf.get('rope_local_base_freq', local_theta)))
    return full, local
  ropes = []
  for layer_type, theta in (('full_attention', global_theta),
                            ('sliding_attention', local_theta)):
    p = {'rope_type': 'default', 'rope_theta': theta, **(params.get(layer_type) or {})}
    ropes.append(rope_lib.RopeConfig.from_hf(
        {'max_position_embeddings': 8192, **{k: v for k, v in hf.items()
                                            if k not in ('rope_scaling', 'rope_parameters')},
         'rope_parameters': p}, f'{where} ({layer_type})'))
  return ropes[0], ropes[1]


class GemmaRMSNorm(nnx.Module):
  """x / rms(x) * (1 + weight) in fp32, cast after the product (HF `Gemma3RMSNorm`)."""

  def __init__(self, dim: int, eps: float, *, dtype, param_dtype, axis_name):
    self.scale = nnx.Param(jnp.zeros((dim,), param_dtype),
                           out_sharding=(axis_name,), eager_sharding=False)
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (y * (1.0 + self.scale[...].astype(jnp.float32))).astype(self.dtype)


class GemmaAttention(nnx.Module):
  """GQA self-attention with RoPE; HF `Gemma2Attention` / `Gemma3Attention`."""

  def __init__(self, cfg: GemmaConfig, *, dtype, param_dtype, rngs: nnx.Rngs,
               impl: str = 'xla'):
    self.cfg = cfg
    self.attention_impl = attention.check_implementation(impl)
    h, d = cfg.hidden_size, cfg.head_dim
    n, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    bias = cfg.attention_bias
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q_proj = llama.linear(cfg, h, n * d, ('embed', 'heads'), bias, **kw)
    self.k_proj = llama.linear(cfg, h, kv * d, ('embed', 'kv_heads'), bias, **kw)
    self.v_proj = llama.linear(cfg, h, kv * d, ('embed', 'kv_heads'), bias, **kw)
    self.o_proj = llama.linear(cfg, n * d, h, ('heads', 'embed'), bias, **kw)
    if cfg.qk_norm:
      nkw = dict(dtype=dtype, param_dtype=param_dtype, axis_name=None)
      self.q_norm = GemmaRMSNorm(d, cfg.rms_norm_eps, **nkw)
      self.k_norm = GemmaRMSNorm(d, cfg.rms_norm_eps, **nkw)
    else:
      self.q_norm = self.k_norm = None

  def __call__(self, x, shape, layout, positions, cache, rngs=None, *, window=None,
               rotary=None):
    """As `llama.LlamaAttention`; `rotary` is this layer's (RoPE inverse frequencies,
    attention scaling) from `rope.layer_rotary`."""
    b, t = shape
    cfg = self.cfg
    d = cfg.head_dim
    qkv = layer_stack.name_qkv
    q = qkv(self.q_proj(x)).reshape(b, t, cfg.num_attention_heads, d)
    k = qkv(self.k_proj(x)).reshape(b, t, cfg.num_key_value_heads, d)
    v = qkv(self.v_proj(x)).reshape(b, t, cfg.num_key_value_heads, d)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    q = rope_lib.apply(q, positions, *rotary)
    k = rope_lib.apply(k, positions, *rotary)
    k, v = attention.update_kv(cache, k, v)
    out = attention.attend(
        q, k, v, layout.mask(window), scale=cfg.query_pre_attn_scalar ** -0.5,
        dropout_rate=cfg.attention_dropout, rngs=rngs, softcap=cfg.attention_softcap,
        impl=self.attention_impl if cache is None else 'xla')
    return self.o_proj(out.reshape(b * t, -1)), (k, v)


class GemmaDecoderLayer(nnx.Module):
  """Sandwich block: x + norm(attn(norm(x))); x + norm(mlp(norm(x)))."""

  def __init__(self, cfg: GemmaConfig, *, dtype, param_dtype, rngs: nnx.Rngs,
               attention_impl: str = 'xla'):
    nkw = dict(dtype=dtype, param_dtype=param_dtype, axis_name='embed')
    norm = lambda: GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **nkw)
    self.input_layernorm = norm()
    self.self_attn = GemmaAttention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                                    impl=attention_impl)
    self.post_attention_layernorm = norm()
    self.pre_feedforward_layernorm = norm()
    self.mlp = llama.LlamaMLP(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.post_feedforward_layernorm = norm()

  def __call__(self, x, shape, layout, positions, cache, rngs=None, *, window=None,
               rotary=None):
    attn, kv = self.self_attn(self.input_layernorm(x), shape, layout, positions, cache, rngs,
                              window=window, rotary=rotary)
    x = x + self.post_attention_layernorm(attn)
    return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x))), kv


class GemmaModel(nnx.Module):
  """Scaled embeddings, decoder layers, final norm; HF `Gemma2Model` / `Gemma3TextModel`.

  Identical layer modules (per-layer windows and RoPE are looked up by layer index), so
  `layer_stack` can stack and scan them; `remat` and `attention_impl` as `llama.LlamaModel`'s.
  """

  def __init__(self, cfg: GemmaConfig, *, dtype, param_dtype, rngs: nnx.Rngs,
               remat: str = 'none', attention_impl: str = 'xla'):
    self.cfg = cfg
    self.dtype = dtype
    self.remat = layer_stack.check_remat(remat)
    self.embed_tokens = nnx.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
        embedding_init=nnx.initializers.normal(cfg.initializer_range),
        embedding_metadata={'out_sharding': ('vocab', 'embed'), 'eager_sharding': False},
        rngs=rngs)
    self.layers = nnx.List([
        GemmaDecoderLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                          attention_impl=attention_impl)
        for _ in range(cfg.num_hidden_layers)])
    self.norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype,
                             param_dtype=param_dtype, axis_name='embed')

  def embed(self, input_ids):
    """Token embeddings times sqrt(hidden), the factor rounded to the table's dtype as in HF.

    Ids past the vocabulary (prompt tuning's virtual tokens, `methods/prompt_tuning.py`) are
    not scaled: PEFT feeds its prompt embeddings in after the scaled embedding layer.
    """
    x = self.embed_tokens(input_ids)
    factor = jnp.asarray(math.sqrt(self.cfg.hidden_size), self.embed_tokens.param_dtype)
    factor = jnp.where(input_ids < self.cfg.vocab_size, factor.astype(x.dtype),
                       jnp.ones((), x.dtype))
    return x * factor[..., None]

  def __call__(self, input_ids, layout, positions, cache, rngs=None):
    """Returns (hidden [B, T, H], per-layer (k, v))."""
    b, t = input_ids.shape
    x = self.embed(input_ids).reshape(b * t, -1)
    ropes = tuple(self.cfg.layer_rope(j) for j in range(self.cfg.num_hidden_layers))

    def body(layer, x, i, kv, rngs):
      layer_cache = None if cache is None else kv_cache_lib.LayerCache(*kv, cache.index)
      x, kv = layer(x, (b, t), layout, positions, layer_cache, rngs,
                    window=self.window(i),
                    rotary=rope_lib.layer_rotary(ropes, self.cfg.head_dim, i, positions))
      return x, (None if cache is None else kv)

    x, kvs = layer_stack.run_layers(
        self.layers, body, x, None if cache is None else cache.per_layer(),
        rngs=rngs, remat=self.remat)
    return self.norm(x).reshape(b, t, -1), kvs

  def window(self, i):
    """Layer i's sliding window (None, an int, or a traced int for a traced i)."""
    windows = self.cfg.layer_windows
    if isinstance(i, int) or len(set(windows)) == 1:
      return windows[i if isinstance(i, int) else 0]
    table = [attention.NO_WINDOW if w is None else w for w in windows]
    return jnp.asarray(table, jnp.int32)[i]


def _softcap(logits, cap):
  return logits if cap is None else cap * jnp.tanh(logits / cap)


class GemmaForCausalLM(nnx.Module):
  """Decoder + (usually tied) LM head; HF `Gemma2ForCausalLM` / `Gemma3ForCausalLM`.

  Same call, cache and `lm_logits` contract as `llama.LlamaForCausalLM`.
  """

  def __init__(self, config: GemmaConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs, remat: str = 'none',
               attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    self.config = config
    self.dtype = dtype
    self.model = GemmaModel(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                            remat=remat, attention_impl=attention)
    self.lm_head = None if config.tie_word_embeddings else llama.linear(
        config, config.hidden_size, config.vocab_size, ('embed', 'vocab'), False,
        dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  # The same cache as Llama's (it reads only the layer count, kv heads and head_dim).
  init_cache = llama.LlamaForCausalLM.init_cache

  def __call__(self, input_ids, attention_mask=None, *, positions=None, segment_ids=None,
               cache: kv_cache_lib.KVCache | None = None, rngs: nnx.Rngs | None = None,
               return_hidden: bool = False):
    """fp32 next-token logits [B, T, vocab] (and the new cache with `cache`); arguments as
    `llama.LlamaForCausalLM.__call__`'s."""
    input_ids = jnp.asarray(input_ids)
    layout, positions, new_cache = attention.make_layout(
        input_ids, attention_mask, positions, segment_ids, cache)
    x, kvs = self.model(input_ids, layout, positions, cache, rngs)
    return llama.finish(x if return_hidden else self.lm_logits(x), kvs, new_cache)

  def lm_logits(self, hidden):
    """fp32 logits [B, T, vocab] of final hidden states, soft-capped when the config says."""
    logits = layers.lm_logits(hidden, self.model.embed_tokens, self.lm_head, self.dtype)
    return _softcap(logits, self.config.final_logit_softcapping)


class GemmaForSequenceClassification(nnx.Module):
  """Decoder + linear `score` on the last real token; HF `Gemma2ForSequenceClassification` /
  `Gemma3TextForSequenceClassification` (no logit soft-cap, as theirs). Reward models are this
  class with one label."""

  def __init__(self, config: GemmaConfig, num_labels: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs, remat: str = 'none',
               attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    self.config = config
    self.dtype = dtype
    self.num_labels = num_labels
    self.model = GemmaModel(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                            remat=remat, attention_impl=attention)
    self.score = llama.linear(config, config.hidden_size, num_labels, ('embed', None), False,
                         dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, positions=None,
               segment_ids=None, rngs: nnx.Rngs | None = None):
    """Logits [B, num_labels] (compute dtype); `token_type_ids` is ignored."""
    del token_type_ids
    input_ids = jnp.asarray(input_ids)
    x = attention.decoder_states(self.model, input_ids, attention_mask, positions,
                                 segment_ids, rngs)
    return self.score(layers.last_token(x, input_ids, attention_mask, self.config.pad_token_id))


class GemmaForTokenClassification(nnx.Module):
  """Decoder + dropout + linear `score` (with a bias) on every position; HF
  `Gemma2ForTokenClassification` (transformers has none for Gemma 3)."""

  def __init__(self, config: GemmaConfig, num_labels: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs, remat: str = 'none',
               attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    self.config = config
    self.dtype = dtype
    self.num_labels = num_labels
    self.model = GemmaModel(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                            remat=remat, attention_impl=attention)
    self.score = llama.linear(config, config.hidden_size, num_labels, ('embed', None), True,
                              dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, positions=None,
               segment_ids=None, rngs: nnx.Rngs | None = None):
    """Per-position logits [B, T, num_labels] (compute dtype); `token_type_ids` is ignored."""
    del token_type_ids
    input_ids = jnp.asarray(input_ids)
    x = attention.decoder_states(self.model, input_ids, attention_mask, positions,
                                 segment_ids, rngs)
    return self.score(attention.dropout(self.config.classifier_dropout, x, rngs))
