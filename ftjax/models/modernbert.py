"""ModernBERT encoder and its task heads in NNX; HF `modernbert`.

A pre-norm encoder with rotary positions, a fused `Wqkv`, a GeGLU MLP (`Wi` holds
[input | gate]), LayerNorms that may lack biases, and attention that alternates between global
layers and local ones (a sliding window), each with its own RoPE base. Module names mirror
HF's, so the weight table (`weights/modernbert_table.py`) is one rule per tensor and methods
target HF's names (LoRA: the fused `Wqkv`, the counterpart of q/v):

  embeddings.{tok_embeddings,norm}
  layers.{i}.attn_norm (absent in layer 0: HF's Identity), layers.{i}.attn.{Wqkv,Wo}
  layers.{i}.mlp_norm, layers.{i}.mlp.{Wi,Wo}
  final_norm
  model.*, head.{dense,norm}, classifier   (the task classes)

Layer types come from config.json's `layer_types` (older configs: `global_attn_every_n_layers`,
layer i global when i % n == 0); RoPE bases from `rope_parameters` per layer type (older:
`global_rope_theta`, `local_rope_theta`). A local layer's query i sees key j when
|i - j| <= local_attention // 2 (HF's bidirectional sliding-window mask, over slots), both
global and local layers skip padded keys, and positions are the slots 0..S-1 as in HF (which
assumes right padding). HF's unpadded (flash) path computes the same on the real tokens; this
port always runs padded with masks.

Heads as HF's: `head` = norm(act(dense(x))) (`classifier_bias`, `classifier_activation`), then
dropout (`classifier_dropout`) and `classifier`. Sequence classification pools the first token
('cls') or the mean over real tokens ('mean'), multiple choice the first *real* token or the
mean; token classification and question answering apply the head to every token (QA's
`classifier` has two outputs: start, end). `head` is new on an encoder-only checkpoint; a
masked-LM checkpoint's `head` (same names) loads into it, as in transformers.
"""

import dataclasses
import math
from typing import Any, ClassVar

from flax import nnx
import jax
import jax.numpy as jnp

from ftjax.errors import UserError
from ftjax.models import attention
from ftjax.models import bert
from ftjax.models import layer_stack
from ftjax.models import layers
from ftjax.models import rope as rope_lib

LAYER_TYPES = ('full_attention', 'sliding_attention')
POOLINGS = ('cls', 'mean')
_DEFAULT_THETA = {'full_attention': 160000.0, 'sliding_attention': 10000.0}
_LEGACY_THETA = {'full_attention': 'global_rope_theta', 'sliding_attention': 'local_rope_theta'}


def _refuse(key: str, why: str):
  raise UserError(f"config key '{key}' in modernbert config: {why}")


@dataclasses.dataclass(frozen=True)
class ModernBertConfig:
  """Architecture hyperparameters, read from / written to an HF config.json."""

  model_type: ClassVar[str] = 'modernbert'

  vocab_size: int = 50368
  hidden_size: int = 768
  intermediate_size: int = 1152
  num_hidden_layers: int = 22
  num_attention_heads: int = 12
  hidden_activation: str = 'gelu'
  max_position_embeddings: int = 8192
  initializer_range: float = 0.02
  initializer_cutoff_factor: float = 2.0
  norm_eps: float = 1e-5
  norm_bias: bool = False
  pad_token_id: int | None = 50283
  eos_token_id: int | None = 50282
  bos_token_id: int | None = 50281
  cls_token_id: int | None = 50281
  sep_token_id: int | None = 50282
  attention_bias: bool = False
  attention_dropout: float = 0.0
  layer_types: tuple[str, ...] | None = None  # None: every 3rd layer global, from layer 0
  global_rope_theta: float = 160000.0
  local_rope_theta: float = 10000.0
  local_attention: int = 128
  embedding_dropout: float = 0.0
  mlp_bias: bool = False
  mlp_dropout: float = 0.0
  decoder_bias: bool = True
  classifier_pooling: str = 'cls'
  classifier_dropout: float = 0.0
  classifier_bias: bool = False
  classifier_activation: str = 'gelu'
  tie_word_embeddings: bool = True

  def __post_init__(self):
    if self.layer_types is None:
      object.__setattr__(self, 'layer_types', tuple(
          'full_attention' if i % 3 == 0 else 'sliding_attention'
          for i in range(self.num_hidden_layers)))
    object.__setattr__(self, 'layer_types', tuple(self.layer_types))
    for key in ('hidden_activation', 'classifier_activation'):
      if getattr(self, key) not in bert.ACTIVATIONS:
        _refuse(key, f"unsupported activation '{getattr(self, key)}'; supported: "
                f'{", ".join(sorted(bert.ACTIVATIONS))}')
    if self.classifier_pooling not in POOLINGS:
      _refuse('classifier_pooling', f"unsupported pooling '{self.classifier_pooling}'; "
              f'supported: {", ".join(POOLINGS)}')
    if self.hidden_size % self.num_attention_heads:
      _refuse('hidden_size', f'{self.hidden_size} is not divisible by num_attention_heads '
              f'{self.num_attention_heads}')
    if len(self.layer_types) != self.num_hidden_layers:
      _refuse('layer_types', f'{len(self.layer_types)} entries for num_hidden_layers '
              f'{self.num_hidden_layers}')
    unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
    if unknown:
      _refuse('layer_types', f"unsupported layer type '{unknown[0]}'; supported: "
              f'{", ".join(LAYER_TYPES)}')
    if self.local_attention < 0:
      _refuse('local_attention', f'must be >= 0, got {self.local_attention}')

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def window(self) -> int:
    """HF's `sliding_window`: how far a local query sees on each side."""
    return self.local_attention // 2

  def theta(self, layer_type: str) -> float:
    return self.global_rope_theta if layer_type == 'full_attention' else self.local_rope_theta

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> 'ModernBertConfig':
    """Builds a config from an HF config.json dict (either spelling of layer types and RoPE
    bases); unknown keys are ignored, unsupported RoPE scaling refused."""
    names = {f.name for f in dataclasses.fields(cls)} - {'global_rope_theta', 'local_rope_theta'}
    # transformers 5 writes None for some unset keys: keep our defaults then (token ids may be
    # None).
    kwargs = {k: v for k, v in hf.items()
              if k in names and (v is not None or k.endswith('_token_id'))}
    layers_kept = int(hf.get('num_hidden_layers', 22))
    if kwargs.get('layer_types') is not None and len(kwargs['layer_types']) > layers_kept:
      # `model.num_layers` keeps the first layers of a checkpoint, so their types.
      kwargs['layer_types'] = tuple(kwargs['layer_types'])[:layers_kept]
    if kwargs.get('layer_types') is None:
      every = hf.get('global_attn_every_n_layers') or 3
      if not isinstance(every, int) or every < 1:
        _refuse('global_attn_every_n_layers', f'must be a positive integer, got {every!r}')
      kwargs['layer_types'] = tuple(
          'sliding_attention' if i % every else 'full_attention'
          for i in range(layers_kept))
    if hf.get('rope_scaling'):
      _refuse('rope_scaling', "only rope_type 'default' is supported")
    rope_parameters = hf.get('rope_parameters') or {}
    if not isinstance(rope_parameters, dict):
      _refuse('rope_parameters', 'must be a dict per layer type')
    for layer_type, legacy in _LEGACY_THETA.items():
      params = rope_parameters.get(layer_type) or {}
      if params.get('rope_type', params.get('type', 'default')) != 'default':
        _refuse('rope_parameters', f"rope_type '{params.get('rope_type', params.get('type'))}' "
                f"for {layer_type}; only 'default' is supported")
      theta = params.get('rope_theta', hf.get(legacy))
      kwargs[legacy] = float(_DEFAULT_THETA[layer_type] if theta is None else theta)
    return cls(**kwargs)

  def to_hf(self) -> dict[str, Any]:
    """The HF config.json keys: transformers 5's `layer_types` and `rope_parameters`, and for
    older readers `global_rope_theta` / `local_rope_theta` and, when the layer types follow
    it, `global_attn_every_n_layers` (transformers 5 reads them too, and they agree)."""
    out = {'model_type': self.model_type, **dataclasses.asdict(self)}
    out['layer_types'] = list(self.layer_types)
    out['rope_parameters'] = {t: {'rope_type': 'default', 'rope_theta': self.theta(t)}
                              for t in LAYER_TYPES}
    every = _global_every(self.layer_types)
    if every:
      out['global_attn_every_n_layers'] = every
    return out


def _global_every(layer_types: tuple[str, ...]) -> int | None:
  """n when layer i is global exactly when i % n == 0 (the older configs' pattern), else None."""
  for n in range(1, len(layer_types) + 1):
    if all((t == 'full_attention') == (i % n == 0) for i, t in enumerate(layer_types)):
      return n
  return None


def _trunc_normal(cfg: ModernBertConfig, std: float):
  """HF's `trunc_normal_(std, a=-c * std, b=c * std)` (c = `initializer_cutoff_factor`)."""
  cutoff = cfg.initializer_cutoff_factor or 3.0

  def init(key, shape, dtype=jnp.float32):
    return std * jax.random.truncated_normal(key, -cutoff, cutoff, shape, dtype)
  return init


def _std(cfg: ModernBertConfig, kind: str) -> float:
  """HF's per-module init stds ('in', 'out', 'final_out')."""
  return {'in': cfg.initializer_range,
          'out': cfg.initializer_range / math.sqrt(2.0 * cfg.num_hidden_layers),
          'final_out': cfg.hidden_size ** -0.5}[kind]


def _linear(cfg, d_in, d_out, axes, *, use_bias, std, dtype, param_dtype, rngs):
  """An `nnx.Linear` initialised as HF's (truncated normal, zero bias)."""
  return nnx.Linear(
      d_in, d_out, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=_trunc_normal(cfg, _std(cfg, std)),
      kernel_metadata={'out_sharding': axes, 'eager_sharding': False},
      bias_metadata={'out_sharding': axes[1:], 'eager_sharding': False},
      rngs=rngs)


def _norm(cfg: ModernBertConfig, *, dtype, param_dtype, rngs):
  """`nn.LayerNorm(hidden, eps=norm_eps, bias=norm_bias)`, fp32 statistics."""
  return layers.Fp32LayerNorm(cfg.hidden_size, cfg.norm_eps, dtype=dtype,
                              param_dtype=param_dtype, rngs=rngs, use_bias=cfg.norm_bias)


class Embeddings(nnx.Module):
  """Token embeddings, LayerNorm, dropout (no positions: RoPE; no token types)."""

  def __init__(self, cfg: ModernBertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.cfg = cfg
    self.tok_embeddings = nnx.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
        embedding_init=_trunc_normal(cfg, cfg.initializer_range),
        embedding_metadata={'out_sharding': ('vocab', 'embed'), 'eager_sharding': False},
        rngs=rngs)
    self.norm = _norm(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, input_ids, rngs=None):
    x = self.norm(self.tok_embeddings(input_ids))
    return attention.dropout(self.cfg.embedding_dropout, x, rngs)


class Attention(nnx.Module):
  """HF `ModernBertAttention`: fused `Wqkv`, RoPE on q and k, softmax attention, `Wo`."""

  def __init__(self, cfg: ModernBertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(use_bias=cfg.attention_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    h = cfg.hidden_size
    self.Wqkv = _linear(cfg, h, 3 * h, ('embed', 'heads'), std='in', **kw)  # pylint: disable=invalid-name
    self.Wo = _linear(cfg, h, h, ('heads', 'embed'), std='out', **kw)  # pylint: disable=invalid-name

  def __call__(self, x, mask, positions, inv_freq, rngs=None):
    """x: [B*S, H] rows; mask: boolean [B, 1, S, S]; positions: [B, S]. Returns [B*S, H]."""
    b, s = positions.shape
    n, d = self.cfg.num_attention_heads, self.cfg.head_dim
    # HF's view(B, S, 3, N, D): [q | k | v], each heads-major inside.
    qkv = layer_stack.name_qkv(self.Wqkv(x)).reshape(b, s, 3, n, d)
    q, k = (rope_lib.apply(qkv[:, :, i], positions, inv_freq) for i in (0, 1))
    v = qkv[:, :, 2]
    out = attention.attend(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask,
                           scale=d ** -0.5, dropout_rate=self.cfg.attention_dropout, rngs=rngs)
    out = self.Wo(out.reshape(b * s, n * d))
    return attention.dropout(self.cfg.attention_dropout, out, rngs)  # HF's `out_drop`


class MLP(nnx.Module):
  """HF `ModernBertMLP`: GeGLU, Wo(drop(act(input) * gate)) with [input | gate] = Wi(x)."""

  def __init__(self, cfg: ModernBertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.cfg = cfg
    self.act = bert.ACTIVATIONS[cfg.hidden_activation]
    kw = dict(use_bias=cfg.mlp_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    i = cfg.intermediate_size
    self.Wi = _linear(cfg, cfg.hidden_size, 2 * i, ('embed', 'mlp'), std='in', **kw)  # pylint: disable=invalid-name
    self.Wo = _linear(cfg, i, cfg.hidden_size, ('mlp', 'embed'), std='out', **kw)  # pylint: disable=invalid-name

  def __call__(self, x, rngs=None):
    inputs, gate = jnp.split(self.Wi(x), 2, axis=-1)
    return self.Wo(attention.dropout(self.cfg.mlp_dropout, self.act(inputs) * gate, rngs))


class EncoderLayer(nnx.Module):
  """Pre-norm block: x + attn(attn_norm(x)); x + mlp(mlp_norm(x)). Layer 0 has no attn_norm
  (the embeddings' norm precedes it), as in HF."""

  def __init__(self, cfg: ModernBertConfig, index: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attn_norm = _norm(cfg, **kw) if index else None
    self.attn = Attention(cfg, **kw)
    self.mlp_norm = _norm(cfg, **kw)
    self.mlp = MLP(cfg, **kw)

  def __call__(self, x, mask, positions, inv_freq, rngs=None):
    h = x if self.attn_norm is None else self.attn_norm(x)
    x = x + self.attn(h, mask, positions, inv_freq, rngs)
    return x + self.mlp(self.mlp_norm(x), rngs)


def attention_masks(attention_mask, window: int) -> dict[str, jax.Array]:
  """Boolean [B, 1, S, S] masks per layer type: real keys, and for local layers also keys
  within `window` slots of the query (either side)."""
  real = jnp.asarray(attention_mask)[:, None, None, :] > 0
  s = real.shape[-1]
  slots = jnp.arange(s)
  near = jnp.abs(slots[:, None] - slots[None, :]) <= window
  return {'full_attention': real, 'sliding_attention': real & near[None, None]}


class ModernBertModel(nnx.Module):
  """HF `ModernBertModel`; returns (last_hidden_state [B, S, H], None) like `BertModel` (no
  pooler). `remat` as `BertModel`'s (the layers differ, layer 0 has no attn_norm, so
  `model.scan_layers` is refused); `attention` must be 'xla'."""

  def __init__(self, config: ModernBertConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs, remat: str = 'none',
               attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    bert.check_attention(type(self), attention)
    self.config = config
    self.dtype = dtype
    self.remat = layer_stack.check_remat(remat)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.embeddings = Embeddings(config, **kw)
    self.layers = nnx.List([EncoderLayer(config, i, **kw)
                            for i in range(config.num_hidden_layers)])
    self.final_norm = _norm(config, **kw)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    """`token_type_ids` (which ModernBERT has none of) is ignored."""
    del token_type_ids
    input_ids = jnp.asarray(input_ids)
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    cfg = self.config
    x = self.embeddings(input_ids, rngs)
    b, s, h = x.shape
    positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    masks = attention_masks(attention_mask, cfg.window)
    inv_freqs = {t: rope_lib.inverse_frequencies(rope_lib.RopeConfig(theta=cfg.theta(t)),
                                                 cfg.head_dim) for t in LAYER_TYPES}

    def body(layer, x, i, unused_x, rngs):
      if isinstance(i, int):
        kind = cfg.layer_types[i]
        return layer(x, masks[kind], positions, inv_freqs[kind], rngs), None
      # A traced index (stacked layers: only a one-layer model, as layer 0 differs).
      local = jnp.asarray([t == 'sliding_attention' for t in cfg.layer_types])[i]
      mask = jnp.where(local, masks['sliding_attention'], masks['full_attention'])
      inv_freq = jnp.where(local, inv_freqs['sliding_attention'], inv_freqs['full_attention'])
      return layer(x, mask, positions, inv_freq, rngs), None

    x, _ = layer_stack.run_layers(self.layers, body, x.reshape(b * s, h), rngs=rngs,
                                  remat=self.remat)
    return self.final_norm(x).reshape(b, s, h), None


class PredictionHead(nnx.Module):
  """HF `ModernBertPredictionHead`: norm(act(dense(x)))."""

  def __init__(self, cfg: ModernBertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.act = bert.ACTIVATIONS[cfg.classifier_activation]
    self.dense = _linear(cfg, cfg.hidden_size, cfg.hidden_size, ('embed', 'embed'),
                         use_bias=cfg.classifier_bias, std='out', dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)
    self.norm = _norm(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x):
    return self.norm(self.act(self.dense(x)))


def _mean_pool(hidden, mask):
  """Mean of the hidden states [B, S, H] over real tokens, HF's (h * mask).sum / mask.sum."""
  mask = mask.astype(hidden.dtype)
  return (hidden * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)


class _Headed(nnx.Module):
  """ModernBERT under `model`, `head`, dropout and `classifier` (`outputs` wide): what every
  HF task class has."""

  def __init__(self, config: ModernBertConfig, outputs: int, *, dtype, param_dtype,
               rngs: nnx.Rngs, remat: str, attention: str):  # pylint: disable=redefined-outer-name
    self.config = config
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.model = ModernBertModel(config, **kw, remat=remat, attention=attention)
    self.head = PredictionHead(config, **kw)
    self.classifier = _linear(config, config.hidden_size, outputs, ('embed', None),
                              use_bias=True, std='final_out', **kw)

  def encode(self, input_ids, attention_mask, rngs):
    """(hidden states [B, S, H], the mask used: all ones when None)."""
    input_ids = jnp.asarray(input_ids)
    mask = jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask)
    hidden, _ = self.model(input_ids, mask, rngs=rngs)
    return hidden, mask

  def classify(self, x, rngs):
    """classifier(dropout(head(x)))."""
    return self.classifier(attention.dropout(self.config.classifier_dropout, self.head(x), rngs))


class ModernBertForSequenceClassification(_Headed):
  """HF `ModernBertForSequenceClassification`: `classifier_pooling` ('cls': the first token;
  'mean': over real tokens), head, dropout, classifier. `head` and `classifier` train as the
  task head (`methods.base.HEAD_PATTERN`)."""

  def __init__(self, config: ModernBertConfig, num_labels: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs, remat: str = 'none',
               attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    super().__init__(config, num_labels, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                     remat=remat, attention=attention)
    self.num_labels = num_labels

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    """Logits [B, num_labels] (compute dtype); `token_type_ids` is ignored."""
    hidden, mask = self.encode(input_ids, attention_mask, rngs)
    pooled = hidden[:, 0] if self.config.classifier_pooling == 'cls' else _mean_pool(hidden, mask)
    return self.classify(pooled, rngs)


class ModernBertForTokenClassification(_Headed):
  """HF `ModernBertForTokenClassification`: head, dropout, classifier on every token."""

  def __init__(self, config: ModernBertConfig, num_labels: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs, remat: str = 'none',
               attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    super().__init__(config, num_labels, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                     remat=remat, attention=attention)
    self.num_labels = num_labels

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    """Per-token logits [B, S, num_labels] (compute dtype)."""
    hidden, _ = self.encode(input_ids, attention_mask, rngs)
    return self.classify(hidden, rngs)


class ModernBertForMultipleChoice(_Headed):
  """HF `ModernBertForMultipleChoice`: each (prompt, choice) row of [B, C, T] inputs pooled
  ('cls': its first real token; 'mean': over real tokens), head, dropout, a one-output
  classifier; logits [B, C]."""

  def __init__(self, config: ModernBertConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs, remat: str = 'none', attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    super().__init__(config, 1, dtype=dtype, param_dtype=param_dtype, rngs=rngs, remat=remat,
                     attention=attention)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    b, c, t = input_ids.shape
    mask = None if attention_mask is None else jnp.asarray(attention_mask).reshape(b * c, t)
    hidden, mask = self.encode(jnp.asarray(input_ids).reshape(b * c, t), mask, rngs)
    if self.config.classifier_pooling == 'cls':
      first = jnp.argmax(mask, axis=-1)  # HF's attention_mask.argmax: the first real token
      pooled = jnp.take_along_axis(hidden, first[:, None, None], axis=1)[:, 0]
    else:
      pooled = _mean_pool(hidden, mask)
    return self.classify(pooled, rngs).reshape(b, c)


class ModernBertForQuestionAnswering(_Headed):
  """HF `ModernBertForQuestionAnswering`: head, dropout and a two-output `classifier` on every
  token; returns (start logits, end logits), each [B, S]."""

  def __init__(self, config: ModernBertConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs, remat: str = 'none', attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    super().__init__(config, 2, dtype=dtype, param_dtype=param_dtype, rngs=rngs, remat=remat,
                     attention=attention)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    hidden, _ = self.encode(input_ids, attention_mask, rngs)
    logits = self.classify(hidden, rngs)
    return logits[..., 0], logits[..., 1]
