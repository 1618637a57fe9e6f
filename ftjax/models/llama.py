"""Llama-family decoders (Llama 2/3, SmolLM2, Mistral, Qwen2, Qwen3, Phi-3, and the
mixtures of experts Mixtral and Qwen3-MoE) in NNX.

One implementation, switched by HF config keys:
  llama/mistral: optional `attention_bias` (q/k/v/o) and `mlp_bias`;
  qwen2: q/k/v biases, no o_proj bias; qwen3: per-head RMSNorm `q_norm` and
  `k_norm` on queries/keys before RoPE; mistral/qwen/phi3 sliding windows are
  applied (per layer, from `sliding_window` / `layer_types`), not ignored;
  phi3: fused `self_attn.qkv_proj` ([q | k | v] rows) and `mlp.gate_up_proj` ([gate | up]),
  kept fused so PEFT target names and exports are HF's, and residual / embedding dropout
  (`resid_pdrop`, `embd_pdrop`; LongRoPE and partial rotary come with `rope.py`);
  mixtral / qwen3_moe: Mistral's / Qwen3's attention with a sparse mixture-of-experts block
  (`moe.SparseMoeBlock`) in place of the MLP: Mixtral's `block_sparse_moe` in every layer
  (experts w1/w3/w2, top-k weights renormalised), Qwen3-MoE's `mlp` in every
  `decoder_sparse_step`-th layer not in `mlp_only_layers` (a dense MLP of `intermediate_size`
  elsewhere; top-k weights renormalised when `norm_topk_prob`).

Module paths mirror HF so conversion is a table (`weights/llama_table.py`):
  model.embed_tokens, model.layers.{i}.self_attn.{q,k,v,o}_proj,
  model.layers.{i}.self_attn.{q_norm,k_norm}, model.layers.{i}.mlp.
  {gate,up,down}_proj, model.layers.{i}.{input,post_attention}_layernorm,
  model.norm, lm_head (absent when `tie_word_embeddings`: the logits then use
  `embed_tokens` transposed); a sequence classifier has `score` instead of lm_head.

Compute runs in `dtype`; RMSNorm statistics, RoPE, attention softmax and the
logits are fp32. Params carry logical axes from {'vocab', 'embed', 'heads',
'kv_heads', 'mlp'} (not applied eagerly).
"""

import dataclasses
import functools
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from ftjax.errors import UserError
from ftjax.models import attention
from ftjax.models import layer_stack
from ftjax.models import layers
from ftjax.models import kv_cache as kv_cache_lib
from ftjax.models import moe as moe_lib
from ftjax.models import rope as rope_lib

ACTIVATIONS = {'silu': jax.nn.silu, 'swish': jax.nn.silu,
               'gelu': layers.gelu_exact,
               'gelu_pytorch_tanh': lambda x: jax.nn.gelu(x, approximate=True)}

MODEL_TYPES = ('llama', 'mistral', 'qwen2', 'qwen3', 'phi3', 'mixtral', 'qwen3_moe')
MOE_TYPES = ('mixtral', 'qwen3_moe')
# Each mixture-of-experts family's block attribute and experts' (gate, up, down) names, as its
# checkpoints name them.
MOE_NAMES = {'mixtral': ('block_sparse_moe', ('w1', 'w3', 'w2')),
             'qwen3_moe': ('mlp', ('gate_proj', 'up_proj', 'down_proj'))}


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Architecture hyperparameters, read from / written to an HF config.json.

  Hashable (tuples, no dicts) so a graphdef holding it can be a jit static.
  """

  model_type: str = 'llama'
  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int = 32
  head_dim: int = 128
  hidden_act: str = 'silu'
  max_position_embeddings: int = 2048
  rms_norm_eps: float = 1e-6
  rope: rope_lib.RopeConfig = rope_lib.RopeConfig()
  qkv_bias: bool = False
  o_bias: bool = False
  mlp_bias: bool = False
  qk_norm: bool = False
  tie_word_embeddings: bool = False
  # Per-layer sliding window (None = full attention), from the HF keys.
  layer_windows: tuple[int | None, ...] = ()
  attention_dropout: float = 0.0
  # Phi-3: fused q/k/v and gate/up projections; dropout on the residual branches and embeddings.
  fused_projections: bool = False
  residual_dropout: float = 0.0
  embedding_dropout: float = 0.0
  # The token classifier's dropout: transformers' `classifier_dropout`, else `hidden_dropout`,
  # else 0.1 (`GenericForTokenClassification`).
  classifier_dropout: float = 0.1
  # Mixtral / Qwen3-MoE: experts (0: a dense model), experts per token, each expert's width,
  # renormalised top-k weights, Mixtral's router input noise, the checkpoint's load-balancing
  # loss weight, and which layers are sparse (the others have a dense `intermediate_size` MLP).
  num_experts: int = 0
  num_experts_per_tok: int = 2
  moe_intermediate_size: int = 0
  norm_topk_prob: bool = True
  router_jitter_noise: float = 0.0
  router_aux_loss_coef: float = 0.0
  sparse_layers: tuple[bool, ...] = ()
  initializer_range: float = 0.02
  bos_token_id: Any = None
  eos_token_id: Any = None
  pad_token_id: Any = None

  def __post_init__(self):
    where = f'{self.model_type} config'
    if self.model_type not in MODEL_TYPES:
      raise UserError(f"unsupported model_type '{self.model_type}' for the "
                      f'Llama family; supported: {", ".join(MODEL_TYPES)}')
    if self.hidden_act not in ACTIVATIONS:
      raise UserError(f"unsupported hidden_act '{self.hidden_act}' in {where}; "
                      f'supported: {", ".join(sorted(ACTIVATIONS))}')
    if self.num_attention_heads % self.num_key_value_heads:
      raise UserError(
          f'num_attention_heads {self.num_attention_heads} is not a multiple '
          f'of num_key_value_heads {self.num_key_value_heads} in {where}')
    if len(self.layer_windows) not in (0, self.num_hidden_layers):
      raise UserError(f'{len(self.layer_windows)} layer types for '
                      f'{self.num_hidden_layers} layers in {where}')
    if self.num_experts and not 0 < self.num_experts_per_tok <= self.num_experts:
      raise UserError(f'num_experts_per_tok {self.num_experts_per_tok} must be in '
                      f'[1, {self.num_experts}] (the number of experts) in {where}')

  def sparse(self, layer: int) -> bool:
    """Whether layer `layer` has a mixture-of-experts block."""
    return bool(self.sparse_layers) and self.sparse_layers[layer]
  def window(self, layer: int) -> int | None:
    return self.layer_windows[layer] if self.layer_windows else None

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> 'LlamaConfig':
    """Builds a config from an HF config.json dict; unknown keys are ignored."""
    model_type = hf.get('model_type', 'llama')
    where = f'{model_type} config'

    get = functools.partial(hf_get, hf)
    try:
      heads = hf['num_attention_heads']
      hidden = hf['hidden_size']
      layers = hf['num_hidden_layers']
      kw = dict(
          model_type=model_type, vocab_size=hf['vocab_size'],
          hidden_size=hidden, intermediate_size=hf['intermediate_size'],
          num_hidden_layers=layers, num_attention_heads=heads,
          num_key_value_heads=get('num_key_value_heads', heads),
          head_dim=get('head_dim', hidden // heads),
          hidden_act=get('hidden_act', 'silu'),
          max_position_embeddings=get('max_position_embeddings', 2048),
          rms_norm_eps=get('rms_norm_eps', 1e-6),
          rope=rope_lib.RopeConfig.from_hf(
              {'max_position_embeddings': 2048, **hf}, where),
          tie_word_embeddings=bool(get('tie_word_embeddings', False)),
          attention_dropout=float(get('attention_dropout', 0.0)),
          initializer_range=get('initializer_range', 0.02),
          bos_token_id=hf.get('bos_token_id'),
          eos_token_id=hashable(hf.get('eos_token_id')),
          pad_token_id=hf.get('pad_token_id'))
    except KeyError as e:
      raise UserError(f'missing key {e} in {where}') from e
    if model_type in MOE_TYPES:
      kw.update(_moe_fields(hf, model_type, layers, where))
    if model_type == 'qwen2':
      kw.update(qkv_bias=True)
    elif model_type == 'phi3':  # no bias keys: Phi-3's projections have none
      kw.update(fused_projections=True, residual_dropout=float(get('resid_pdrop', 0.0)),
                embedding_dropout=float(get('embd_pdrop', 0.0)))
    else:
      bias = bool(get('attention_bias', False))
      kw.update(qkv_bias=bias, o_bias=bias)
    kw['mlp_bias'] = bool(get('mlp_bias', False))
    kw['classifier_dropout'] = float(get('classifier_dropout', get('hidden_dropout', 0.1)))
    kw['qk_norm'] = model_type in ('qwen3', 'qwen3_moe')
    kw['layer_windows'] = _layer_windows(hf, model_type, layers)
    return cls(**kw)

  def to_hf(self) -> dict[str, Any]:
    """Returns the HF config.json keys for this architecture."""
    hf = {k: getattr(self, k) for k in (
        'model_type', 'vocab_size', 'hidden_size', 'intermediate_size',
        'num_hidden_layers', 'num_attention_heads', 'num_key_value_heads',
        'head_dim', 'hidden_act', 'max_position_embeddings', 'rms_norm_eps',
        'tie_word_embeddings', 'attention_dropout', 'initializer_range',
        'bos_token_id', 'pad_token_id')}
    eos = self.eos_token_id
    hf['eos_token_id'] = list(eos) if isinstance(eos, tuple) else eos
    hf['rope_parameters'] = self.rope.to_hf()
    if self.model_type in ('llama', 'qwen3', 'mistral', 'qwen3_moe'):
      hf['attention_bias'] = self.qkv_bias
    hf['mlp_bias'] = self.mlp_bias
    if self.classifier_dropout != 0.1:
      hf['classifier_dropout'] = self.classifier_dropout
    windows = [w for w in self.layer_windows if w is not None]
    if self.model_type == 'phi3':
      hf.update(resid_pdrop=self.residual_dropout, embd_pdrop=self.embedding_dropout,
                sliding_window=windows[0] if windows else None)
      if self.rope.original_max_position_embeddings is not None:
        hf['original_max_position_embeddings'] = self.rope.original_max_position_embeddings
    if self.num_experts:
      hf.update(_moe_hf(self))
    if self.model_type in ('mistral', 'mixtral'):
      hf['sliding_window'] = windows[0] if windows else None
    elif self.model_type == 'qwen3_moe':
      hf['use_sliding_window'] = bool(windows)
      hf['sliding_window'] = windows[0] if windows else None
    elif self.model_type in ('qwen2', 'qwen3'):
      hf['use_sliding_window'] = bool(windows)
      hf['sliding_window'] = windows[0] if windows else None
      hf['layer_types'] = [
          'full_attention' if w is None else 'sliding_attention'
          for w in (self.layer_windows or [None] * self.num_hidden_layers)]
      if windows:  # first sliding layer; keeps transformers' derivation equal
        hf['max_window_layers'] = next(
            i for i, w in enumerate(self.layer_windows) if w is not None)
    return hf


def _moe_fields(hf, model_type, layers, where) -> dict[str, Any]:
  """The mixture-of-experts fields of a Mixtral / Qwen3-MoE config.json."""
  get = functools.partial(hf_get, hf)
  experts = get('num_local_experts', get('num_experts', 8))  # Qwen3-MoE writes either
  if model_type == 'mixtral':
    return dict(num_experts=experts, num_experts_per_tok=get('num_experts_per_tok', 2),
                moe_intermediate_size=hf['intermediate_size'], norm_topk_prob=True,
                router_jitter_noise=float(get('router_jitter_noise', 0.0)),
                router_aux_loss_coef=float(get('router_aux_loss_coef', 0.001)),
                sparse_layers=(True,) * layers)
  step = get('decoder_sparse_step', 1)
  dense = set(get('mlp_only_layers', []))
  if step < 1:
    raise UserError(f'decoder_sparse_step must be >= 1, got {step} in {where}')
  return dict(num_experts=experts, num_experts_per_tok=get('num_experts_per_tok', 8),
              moe_intermediate_size=get('moe_intermediate_size', hf['intermediate_size']),
              norm_topk_prob=bool(get('norm_topk_prob', False)),
              router_aux_loss_coef=float(get('router_aux_loss_coef', 0.001)),
              sparse_layers=tuple(i not in dense and experts > 0 and (i + 1) % step == 0
                                  for i in range(layers)))


def _moe_hf(cfg: 'LlamaConfig') -> dict[str, Any]:
  """The config.json keys of a mixture of experts."""
  hf = dict(num_local_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
            router_aux_loss_coef=cfg.router_aux_loss_coef)
  if cfg.model_type == 'mixtral':
    hf['router_jitter_noise'] = cfg.router_jitter_noise
    return hf
  return dict(hf, moe_intermediate_size=cfg.moe_intermediate_size,
              norm_topk_prob=cfg.norm_topk_prob, decoder_sparse_step=1,
              mlp_only_layers=[i for i, sparse in enumerate(cfg.sparse_layers) if not sparse])


def hf_get(hf: dict[str, Any], key: str, default):
  """`hf[key]`, or `default` where config.json lacks it or holds None (transformers 5 writes
  None for unset keys)."""
  return default if hf.get(key) is None else hf[key]


def hashable(value):
  """A list (a config.json eos_token_id may be one) as a tuple, so configs stay hashable."""
  return tuple(value) if isinstance(value, list) else value


def _layer_windows(hf, model_type, layers) -> tuple[int | None, ...]:
  """Per-layer sliding windows the way each transformers class reads them."""
  window = hf.get('sliding_window')
  if model_type in ('mistral', 'phi3', 'mixtral'):
    return (window,) * layers if window else ()
  if model_type == 'qwen3_moe':  # every layer, when `use_sliding_window`
    return (window,) * layers if hf.get('use_sliding_window') and window else ()
  if model_type in ('qwen2', 'qwen3'):
    if not hf.get('use_sliding_window') or not window:
      return ()
    types = hf.get('layer_types') or [
        'sliding_attention' if i >= hf.get('max_window_layers', 28)
        else 'full_attention' for i in range(layers)]
    return tuple(window if t == 'sliding_attention' else None for t in types)
  return ()


def linear(cfg, d_in, d_out, axes, bias, dtype, param_dtype, rngs):
  """An HF-initialised `nnx.Linear` (normal(initializer_range)) with logical axes `axes`."""
  return nnx.Linear(
      d_in, d_out, use_bias=bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=nnx.initializers.normal(cfg.initializer_range),
      kernel_metadata={'out_sharding': axes, 'eager_sharding': False},
      bias_metadata={'out_sharding': axes[1:], 'eager_sharding': False},
      rngs=rngs)


class RMSNorm(nnx.Module):
  """x / rms(x) * scale with fp32 statistics (HF `LlamaRMSNorm`)."""

  def __init__(self, dim: int, eps: float, *, dtype, param_dtype, axis_name):
    self.scale = nnx.Param(
        jnp.ones((dim,), param_dtype),
        out_sharding=(axis_name,), eager_sharding=False)
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class LlamaAttention(nnx.Module):
  """GQA self-attention with RoPE; HF `LlamaAttention` (+ Qwen variants).

  `impl` is the `attention.IMPLEMENTATIONS` name of full (uncached) passes (config
  `model.attention`).
  """

  def __init__(self, cfg: LlamaConfig, *, dtype, param_dtype, rngs: nnx.Rngs,
               impl: str = 'xla'):
    self.cfg = cfg
    self.attention_impl = attention.check_implementation(impl)
    h, d = cfg.hidden_size, cfg.head_dim
    n, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if cfg.fused_projections:
      self.qkv_proj = linear(cfg, h, (n + 2 * kv) * d, ('embed', 'heads'), cfg.qkv_bias, **kw)
    else:
      self.q_proj = linear(cfg, h, n * d, ('embed', 'heads'), cfg.qkv_bias, **kw)
      self.k_proj = linear(cfg, h, kv * d, ('embed', 'kv_heads'), cfg.qkv_bias, **kw)
      self.v_proj = linear(cfg, h, kv * d, ('embed', 'kv_heads'), cfg.qkv_bias, **kw)
    self.o_proj = linear(cfg, n * d, h, ('heads', 'embed'), cfg.o_bias, **kw)
    if cfg.qk_norm:
      nkw = dict(dtype=dtype, param_dtype=param_dtype, axis_name=None)
      self.q_norm = RMSNorm(d, cfg.rms_norm_eps, **nkw)
      self.k_norm = RMSNorm(d, cfg.rms_norm_eps, **nkw)
    else:
      self.q_norm = self.k_norm = None

  def __call__(self, x, shape, layout, positions, cache, rngs=None, *,
               window=None):
    """x: [B*T, H] rows; cache: this layer's `kv_cache.LayerCache` or None;
    window: this layer's sliding window (None, an int, or a traced int with
    `attention.NO_WINDOW` for none). Returns ([B*T, H], (keys, values)
    attended over)."""
    b, t = shape
    cfg = self.cfg
    d = cfg.head_dim
    n, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    name = layer_stack.name_qkv
    if cfg.fused_projections:
      q, k, v = jnp.split(name(self.qkv_proj(x)), [n * d, (n + kv) * d], axis=-1)
    else:
      q, k, v = name(self.q_proj(x)), name(self.k_proj(x)), name(self.v_proj(x))
    q, k, v = q.reshape(b, t, n, d), k.reshape(b, t, kv, d), v.reshape(b, t, kv, d)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    inv_freq, scaling = rope_lib.rotary(cfg.rope, d, positions)
    q = rope_lib.apply(q, positions, inv_freq, scaling)
    k = rope_lib.apply(k, positions, inv_freq, scaling)
    k, v = attention.update_kv(cache, k, v)
    out = attention.attend(
        q, k, v, layout.mask(window), scale=d ** -0.5,
        dropout_rate=cfg.attention_dropout, rngs=rngs,
        impl=self.attention_impl if cache is None else 'xla')  # decoding: tiny T, no backward
    return self.o_proj(out.reshape(b * t, -1)), (k, v)


class LlamaMLP(nnx.Module):
  """SwiGLU: down(act(gate(x)) * up(x)); Phi-3 computes [gate | up] in one `gate_up_proj`."""

  def __init__(self, cfg, *, dtype, param_dtype, rngs: nnx.Rngs):
    h, m = cfg.hidden_size, cfg.intermediate_size
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.act = ACTIVATIONS[cfg.hidden_act]
    if getattr(cfg, 'fused_projections', False):
      self.gate_up_proj = linear(cfg, h, 2 * m, ('embed', 'mlp'), cfg.mlp_bias, **kw)
    else:
      self.gate_proj = linear(cfg, h, m, ('embed', 'mlp'), cfg.mlp_bias, **kw)
      self.up_proj = linear(cfg, h, m, ('embed', 'mlp'), cfg.mlp_bias, **kw)
    self.down_proj = linear(cfg, m, h, ('mlp', 'embed'), cfg.mlp_bias, **kw)

  def __call__(self, x):
    if hasattr(self, 'gate_up_proj'):
      gate, up = jnp.split(self.gate_up_proj(x), 2, axis=-1)
    else:
      gate, up = self.gate_proj(x), self.up_proj(x)
    return self.down_proj(self.act(gate) * up)


class LlamaDecoderLayer(nnx.Module):
  """Pre-norm block: x + attn(norm(x)); x + ffn(norm(x)), the ffn an MLP or (`sparse`) a
  mixture of experts routed with `capacity_factor` (`moe.MoeOptions`)."""

  def __init__(self, cfg: LlamaConfig, *, dtype, param_dtype, rngs: nnx.Rngs,
               attention_impl: str = 'xla', sparse: bool = False, capacity_factor: float = 0.0):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    nkw = dict(dtype=dtype, param_dtype=param_dtype, axis_name='embed')
    self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **nkw)
    self.self_attn = LlamaAttention(cfg, **kw, impl=attention_impl)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps,
                                            **nkw)
    if sparse:
      block_name, names = MOE_NAMES[cfg.model_type]
      block = moe_lib.SparseMoeBlock(
          cfg.hidden_size, cfg.moe_intermediate_size, num_experts=cfg.num_experts,
          top_k=cfg.num_experts_per_tok, normalize_top_k=cfg.norm_topk_prob, names=names,
          act=ACTIVATIONS[cfg.hidden_act], jitter_noise=cfg.router_jitter_noise,
          capacity_factor=capacity_factor, init_std=cfg.initializer_range, **kw)
    else:
      block_name, block = 'mlp', LlamaMLP(cfg, **kw)
    # Mixtral's block is `block_sparse_moe`, every other family's `mlp` (the checkpoints' names).
    if block_name == 'mlp':
      self.mlp, self.block_sparse_moe = block, None
    else:
      self.block_sparse_moe, self.mlp = block, None
    self.residual_dropout = cfg.residual_dropout

  def __call__(self, x, shape, layout, positions, cache, rngs=None, *,
               window=None):
    """Returns (x, (keys, values), the experts' `RouterStats` or None)."""
    attn, kv = self.self_attn(self.input_layernorm(x), shape, layout,
                              positions, cache, rngs, window=window)
    drop = lambda y: attention.dropout(self.residual_dropout, y, rngs)
    x = x + drop(attn)
    h = self.post_attention_layernorm(x)
    block = self.mlp if self.block_sparse_moe is None else self.block_sparse_moe
    if isinstance(block, moe_lib.SparseMoeBlock):
      h, stats = block(h, (layout.q_seg != 0).reshape(-1), rngs)
    else:
      h, stats = block(h), None
    return x + drop(h), kv, stats


class LlamaModel(nnx.Module):
  """Embeddings, decoder layers, final norm; HF `LlamaModel`.

  The layers are identical modules (per-layer data such as the sliding window
  is looked up by layer index), so `layer_stack.stack_layers` can stack them
  and `run_layers` scans them; `remat` is the per-layer rematerialisation
  policy (`layer_stack.REMAT_POLICIES`), `attention_impl` every layer's
  attention implementation (`attention.IMPLEMENTATIONS`) and `moe` how the sparse layers route
  (`moe.MoeOptions`; a dense config ignores it).
  """

  def __init__(self, cfg: LlamaConfig, *, dtype, param_dtype, rngs: nnx.Rngs,
               remat: str = 'none', attention_impl: str = 'xla',
               moe: moe_lib.MoeOptions | None = None):
    self.cfg = cfg
    self.dtype = dtype
    self.remat = layer_stack.check_remat(remat)
    moe = moe or moe_lib.MoeOptions()
    self.router_aux_loss_coef = (cfg.router_aux_loss_coef if moe.router_aux_loss_coef is None
                                 else moe.router_aux_loss_coef)
    self.embed_tokens = nnx.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
        embedding_init=nnx.initializers.normal(cfg.initializer_range),
        embedding_metadata={'out_sharding': ('vocab', 'embed'),
                            'eager_sharding': False},
        rngs=rngs)
    self.layers = nnx.List([
        LlamaDecoderLayer(cfg, dtype=dtype, param_dtype=param_dtype,
                          rngs=rngs, attention_impl=attention_impl, sparse=cfg.sparse(i),
                          capacity_factor=moe.capacity_factor)
        for i in range(cfg.num_hidden_layers)])
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype,
                        param_dtype=param_dtype, axis_name='embed')

  def __call__(self, input_ids, layout, positions, cache, rngs=None):
    """Returns (hidden [B, T, H], per-layer (k, v)). A mixture of experts called to train
    (`rngs` given) records its layers' summed `moe.RouterStats` and weighted load-balancing loss
    as an `nnx.Intermediate` (`moe.record`), which the train step adds to the loss."""
    b, t = input_ids.shape
    # Layers work on [B*T, H] rows: XLA:CPU's fast 2-D matmul kernels.
    x = self.embed_tokens(input_ids).reshape(b * t, -1)
    x = attention.dropout(self.cfg.embedding_dropout, x, rngs)

    def body(layer, x, i, kv, rngs):
      layer_cache = (None if cache is None
                     else kv_cache_lib.LayerCache(*kv, cache.index))
      x, kv, stats = layer(x, (b, t), layout, positions, layer_cache, rngs,
                           window=self.window(i))
      return x, (None if cache is None else kv, stats)

    x, outputs = layer_stack.run_layers(
        self.layers, body, x, None if cache is None else cache.per_layer(),
        rngs=rngs, remat=self.remat)
    kvs, stats = moe_lib.split_layer_outputs(outputs)
    if rngs is not None and stats is not None:
      moe_lib.record(self, stats, self.router_aux_loss_coef, self.cfg.num_experts_per_tok)
    return self.norm(x).reshape(b, t, -1), kvs

  def window(self, i):
    """Layer i's sliding window: None (full attention) or an int; a traced i
    (scanned layers) gives a traced int when the layers' windows differ."""
    windows = self.cfg.layer_windows
    if not windows or isinstance(i, int):
      return self.cfg.window(i)
    if len(set(windows)) == 1:
      return windows[0]
    table = [attention.NO_WINDOW if w is None else w for w in windows]
    return jnp.asarray(table, jnp.int32)[i]


def finish(out, kvs, cache):
  """Assembles the (logits or hidden states, new_cache) output of a cached forward."""
  if cache is None:
    return out
  ks, vs = zip(*kvs)
  return out, dataclasses.replace(cache, k=tuple(ks), v=tuple(vs))


class LlamaForCausalLM(nnx.Module):
  """Decoder + LM head; HF `LlamaForCausalLM` / `MistralForCausalLM` /
  `Qwen2ForCausalLM` / `Qwen3ForCausalLM` / `Phi3ForCausalLM`.

  `remat` (config `model.remat`), `attention` (config `model.attention`) and a mixture of
  experts' `moe` (config `model.moe`) are passed to the decoder: see `LlamaModel`.
  """

  def __init__(self, config: LlamaConfig, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs, remat: str = 'none',
               attention: str = 'xla',  # pylint: disable=redefined-outer-name
               moe: moe_lib.MoeOptions | None = None):
    self.config = config
    self.dtype = dtype
    self.model = LlamaModel(config, dtype=dtype, param_dtype=param_dtype,
                            rngs=rngs, remat=remat, attention_impl=attention, moe=moe)
    if config.tie_word_embeddings:
      self.lm_head = None
    else:
      self.lm_head = linear(config, config.hidden_size, config.vocab_size,
                             ('embed', 'vocab'), False, dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs)

  def init_cache(self, batch_size: int, max_length: int,
                 dtype=None) -> kv_cache_lib.KVCache:
    """An empty fixed-shape cache (k/v in `dtype`, default compute dtype)."""
    cfg = self.config
    return kv_cache_lib.init_cache(
        cfg.num_hidden_layers, batch_size, max_length, cfg.num_key_value_heads,
        cfg.head_dim, dtype or self.dtype)

  def __call__(self, input_ids, attention_mask=None, *, positions=None,
               segment_ids=None, cache: kv_cache_lib.KVCache | None = None,
               rngs: nnx.Rngs | None = None, return_hidden: bool = False):
    """Next-token logits.

    Args:
      input_ids: int [B, T].
      attention_mask: [B, T], 1 real / 0 padding; None = all real.
      positions: int [B, T]; None = count of real tokens before (per segment
        with `segment_ids`, continuing the cache with `cache`).
      segment_ids: int [B, T] packed sequences: attention stays within equal
        ids; 0 = padding.
      cache: a `KVCache` from `init_cache`; the tokens are written at its
        index and attend to everything written before.
      rngs: an `nnx.Rngs` with a `dropout` stream enables dropout.
      return_hidden: return the final hidden states [B, T, H] instead of the
        logits (`lm_logits` maps them; the chunked loss calls it per chunk).

    Returns:
      fp32 logits [B, T, vocab], or (logits, new cache) when `cache` is given.
    """
    input_ids = jnp.asarray(input_ids)
    layout, positions, new_cache = attention.make_layout(
        input_ids, attention_mask, positions, segment_ids, cache)
    x, kvs = self.model(input_ids, layout, positions, cache, rngs)
    return finish(x if return_hidden else self.lm_logits(x), kvs, new_cache)

  def lm_logits(self, hidden):
    """fp32 logits [B, T, vocab] of final hidden states [B, T, H]."""
    return layers.lm_logits(hidden, self.model.embed_tokens, self.lm_head, self.dtype)


class LlamaForSequenceClassification(nnx.Module):
  """Decoder + linear `score` on the last real token; HF `LlamaForSequenceClassification` (and
  the Mistral / Qwen2 / Qwen3 / Phi-3 classes), so exported weights give the same logits. Reward
  models are this class with one label. `remat` and `attention` as `LlamaForCausalLM`'s."""

  def __init__(self, config: LlamaConfig, num_labels: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs, remat: str = 'none',
               attention: str = 'xla',  # pylint: disable=redefined-outer-name
               moe: moe_lib.MoeOptions | None = None):
    self.config = config
    self.dtype = dtype
    self.num_labels = num_labels
    self.model = LlamaModel(config, dtype=dtype, param_dtype=param_dtype,
                            rngs=rngs, remat=remat, attention_impl=attention, moe=moe)
    self.score = linear(config, config.hidden_size, num_labels, ('embed', None), False,
                         dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               positions=None, segment_ids=None, rngs: nnx.Rngs | None = None):
    """Logits [B, num_labels] (compute dtype); the classification objective's call
    (`token_type_ids`, which decoders have none of, is ignored)."""
    del token_type_ids
    input_ids = jnp.asarray(input_ids)
    x = attention.decoder_states(self.model, input_ids, attention_mask, positions,
                                 segment_ids, rngs)
    return self.score(layers.last_token(x, input_ids, attention_mask,
                                         self.config.pad_token_id))



class LlamaForTokenClassification(nnx.Module):
  """Decoder + dropout + linear `score` (with a bias) on every position; HF
  `LlamaForTokenClassification` (and Mistral's, Qwen2's, Qwen3's, Phi-3's:
  `GenericForTokenClassification`). `remat` and `attention` as `LlamaForCausalLM`'s."""

  def __init__(self, config: LlamaConfig, num_labels: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs, remat: str = 'none',
               attention: str = 'xla',  # pylint: disable=redefined-outer-name
               moe: moe_lib.MoeOptions | None = None):
    self.config = config
    self.dtype = dtype
    self.num_labels = num_labels
    self.model = LlamaModel(config, dtype=dtype, param_dtype=param_dtype,
                            rngs=rngs, remat=remat, attention_impl=attention, moe=moe)
    self.score = linear(config, config.hidden_size, num_labels, ('embed', None), True,
                        dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               positions=None, segment_ids=None, rngs: nnx.Rngs | None = None):
    """Per-position logits [B, T, num_labels] (compute dtype); `token_type_ids` is ignored."""
    del token_type_ids
    input_ids = jnp.asarray(input_ids)
    x = attention.decoder_states(self.model, input_ids, attention_mask, positions,
                                 segment_ids, rngs)
    return self.score(attention.dropout(self.config.classifier_dropout, x, rngs))
