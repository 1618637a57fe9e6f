"""DeBERTa-v2 / DeBERTa-v3 encoders and their heads in NNX; HF `deberta-v2`.

BERT's post-LayerNorm blocks with disentangled attention: content-to-content scores plus
content-to-position (c2p) and position-to-content (p2c) scores against a table of relative
position embeddings shared by all layers (`encoder.rel_embeddings`, LayerNorm'd with
`norm_rel_ebd='layer_norm'`), the relative distances optionally log-bucketed
(`position_buckets`, v3) and the position projections either the content ones
(`share_att_key`, v3) or their own (`pos_key_proj`, `pos_query_proj`, v2). v2-xlarge's
convolution beside the first layer (`conv_kernel_size`) and a factorised embedding
(`embedding_size` != `hidden_size`, `embed_proj`) are ported too.

Module paths mirror HF's (table: `weights/deberta_table.py`), with BERT's one rename
(`attention.self` is `attention.self_attn`):

  embeddings.{word_embeddings,position_embeddings,token_type_embeddings,embed_proj,LayerNorm}
  encoder.layer.{i}.attention.self_attn.{query_proj,key_proj,value_proj,pos_key_proj,
                                         pos_query_proj}
  encoder.layer.{i}.attention.output.{dense,LayerNorm}, .intermediate.dense,
                 .output.{dense,LayerNorm}
  encoder.{rel_embeddings,LayerNorm,conv.conv,conv.LayerNorm}
  deberta.*, context_pooler.dense, classifier    (DebertaV2ForSequenceClassification)

HF's `pooler` (a `ContextPooler`: dense + `pooler_hidden_act` on the first token) is
`context_pooler` here: a top-level `pooler` is the bare BERT's pretrained one, which is no head,
while DeBERTa's is new on every base checkpoint and trains with the classifier
(`methods.base.HEAD_PATTERN`). LoRA's default targets are PEFT's `query_proj`/`value_proj`.

Masks follow HF: a padded query attends to nothing (a uniform softmax), and the embeddings of
padding are zeroed. Relative positions depend on the sequence length only, so they are numpy
constants computed at trace time, in float32 like torch's.
"""

import dataclasses
from typing import Any, ClassVar

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from ftjax.errors import UserError
from ftjax.models import attention
from ftjax.models import bert
from ftjax.models import layer_stack
from ftjax.models import layers

# HF's ACT2FN names that DeBERTa configs use; `tanh` is the ConvLayer's default `conv_act`.
ACTIVATIONS = {**bert.ACTIVATIONS, 'tanh': jnp.tanh}
POS_ATT_TYPES = ('c2p', 'p2c')
NORM_REL_EBD = ('none', 'layer_norm')


def _choice(key: str, value, allowed) -> None:
  if value not in allowed:
    raise UserError(f"unsupported {key} '{value}' in deberta-v2 config; supported: "
                    f'{", ".join(sorted(allowed))}')


@dataclasses.dataclass(frozen=True)
class DebertaV2Config:
  """Architecture hyperparameters, read from / written to an HF config.json (HF's defaults;
  the keys its modules read with `getattr` too)."""

  model_type: ClassVar[str] = 'deberta-v2'

  vocab_size: int = 128100
  hidden_size: int = 1536
  num_hidden_layers: int = 24
  num_attention_heads: int = 24
  intermediate_size: int = 6144
  hidden_act: str = 'gelu'
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 0
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-7
  relative_attention: bool = False
  max_relative_positions: int = -1
  position_buckets: int = -1
  pos_att_type: tuple[str, ...] = ()
  share_att_key: bool = False
  norm_rel_ebd: str = 'none'
  position_biased_input: bool = True
  embedding_size: int | None = None  # None: hidden_size
  pad_token_id: int = 0
  pooler_dropout: float = 0.0
  pooler_hidden_act: str = 'gelu'
  cls_dropout: float | None = None  # None: hidden_dropout_prob
  conv_kernel_size: int = 0
  conv_groups: int = 1
  conv_act: str = 'tanh'

  def __post_init__(self):
    _choice('hidden_act', self.hidden_act, bert.ACTIVATIONS)
    _choice('pooler_hidden_act', self.pooler_hidden_act, ACTIVATIONS)
    _choice('conv_act', self.conv_act, ACTIVATIONS)
    for kind in self.pos_att_type:
      _choice('pos_att_type', kind, POS_ATT_TYPES)
    for norm in self.norm_rel_ebd_types:
      _choice('norm_rel_ebd', norm, NORM_REL_EBD)
    if self.hidden_size % self.num_attention_heads:
      raise UserError(f'hidden_size {self.hidden_size} is not divisible by num_attention_heads '
                      f'{self.num_attention_heads} in deberta-v2 config')
    if self.conv_kernel_size and (self.conv_kernel_size % 2 == 0
                                  or self.hidden_size % self.conv_groups):
      raise UserError(f'conv_kernel_size {self.conv_kernel_size} must be odd and conv_groups '
                      f'{self.conv_groups} divide hidden_size in deberta-v2 config')

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def embed_dim(self) -> int:
    return self.embedding_size or self.hidden_size

  @property
  def norm_rel_ebd_types(self) -> tuple[str, ...]:
    return tuple(x.strip() for x in self.norm_rel_ebd.lower().split('|'))

  @property
  def max_relative(self) -> int:
    """HF's `max_relative_positions`, where < 1 means `max_position_embeddings`."""
    if self.max_relative_positions < 1:
      return self.max_position_embeddings
    return self.max_relative_positions

  @property
  def att_span(self) -> int:
    """Relative distances -span .. span - 1 index the 2 * span rows of `rel_embeddings`."""
    return self.position_buckets if self.position_buckets > 0 else self.max_relative

  @property
  def scale_factor(self) -> int:
    """Scores are divided by sqrt(head_dim * scale_factor): one part per kind of score."""
    return 1 + len(self.pos_att_type)

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> 'DebertaV2Config':
    """Builds a config from an HF config.json dict; keys DeBERTa-v2 does not read are ignored,
    values it cannot run are a UserError naming the key."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in hf.items() if k in names and (v is not None or k == 'cls_dropout')}
    kinds = kwargs.get('pos_att_type', ())
    if isinstance(kinds, str):  # the original 'p2c|c2p' spelling, as HF reads it
      kinds = [x.strip() for x in kinds.lower().split('|')]
    kwargs['pos_att_type'] = tuple(kinds)
    hidden = kwargs.get('hidden_size', cls.hidden_size)
    heads = kwargs.get('num_attention_heads', cls.num_attention_heads)
    for key, want in (('pooler_hidden_size', hidden), ('attention_head_size', hidden // heads)):
      if hf.get(key, want) != want:
        raise UserError(f'unsupported {key} {hf[key]} in deberta-v2 config; it must be {want} '
                        '(transformers needs that too)')
    return cls(**kwargs)

  def to_hf(self) -> dict[str, Any]:
    out = {'model_type': self.model_type, **dataclasses.asdict(self)}
    out['pos_att_type'] = list(self.pos_att_type)
    out['embedding_size'] = self.embed_dim  # HF reads a None as a width
    out['pooler_hidden_size'] = self.hidden_size
    return out


def _embed(cfg: DebertaV2Config, num: int, dim: int, *, dtype, param_dtype, rngs):
  return nnx.Embed(
      num, dim, dtype=dtype, param_dtype=param_dtype,
      embedding_init=nnx.initializers.normal(cfg.initializer_range),
      embedding_metadata={'out_sharding': ('vocab', 'embed'), 'eager_sharding': False},
      rngs=rngs)


def _linear(cfg, d_in, d_out, axes, *, dtype, param_dtype, rngs, use_bias=True):
  if use_bias:
    return bert.linear(cfg, d_in, d_out, axes, dtype, param_dtype, rngs)
  return nnx.Linear(d_in, d_out, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=nnx.initializers.normal(cfg.initializer_range),
                    kernel_metadata={'out_sharding': axes, 'eager_sharding': False}, rngs=rngs)


def log_bucket_position(relative_pos: np.ndarray, bucket_size: int, max_position: int):
  """HF's `make_log_bucket_position`: distances under bucket_size / 2 as they are, longer ones
  on a log scale up to max_position; float32 arithmetic, as torch does it."""
  sign = np.sign(relative_pos)
  mid = bucket_size // 2
  abs_pos = np.where((relative_pos < mid) & (relative_pos > -mid), mid - 1,
                     np.abs(relative_pos)).astype(np.float32)
  log_pos = np.ceil(np.log(abs_pos / np.float32(mid))
                    / np.log(np.float32((max_position - 1) / mid))
                    * np.float32(mid - 1)) + np.float32(mid)
  return np.where(abs_pos <= mid, relative_pos.astype(np.float32), log_pos * sign).astype(np.int64)


def relative_positions(seq_len: int, bucket_size: int, max_position: int) -> np.ndarray:
  """HF's `build_relative_position` for self-attention: [S, S] of query - key, bucketed."""
  ids = np.arange(seq_len, dtype=np.int64)
  rel = ids[:, None] - ids[None, :]
  if bucket_size > 0 and max_position > 0:
    rel = log_bucket_position(rel, bucket_size, max_position)
  return rel


class Embeddings(nnx.Module):
  """HF `DebertaV2Embeddings`: word (+ absolute position with `position_biased_input`) (+ token
  type when `type_vocab_size` > 0), `embed_proj` to hidden_size, LayerNorm, padding zeroed,
  dropout."""

  def __init__(self, cfg: DebertaV2Config, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    e = cfg.embed_dim
    self.word_embeddings = _embed(cfg, cfg.vocab_size, e, **kw)
    self.position_embeddings = (_embed(cfg, cfg.max_position_embeddings, e, **kw)
                                if cfg.position_biased_input else None)
    self.token_type_embeddings = (_embed(cfg, cfg.type_vocab_size, e, **kw)
                                  if cfg.type_vocab_size > 0 else None)
    self.embed_proj = (_linear(cfg, e, cfg.hidden_size, ('embed', 'embed'), use_bias=False, **kw)
                       if e != cfg.hidden_size else None)
    self.LayerNorm = bert.LayerNorm(cfg, **kw)  # pylint: disable=invalid-name

  def __call__(self, input_ids, token_type_ids, mask, rngs=None):
    x = self.word_embeddings(input_ids)
    seq_len = x.shape[1]
    if self.position_embeddings is not None:
      if seq_len > self.cfg.max_position_embeddings:
        raise UserError(f'sequence length {seq_len} exceeds max_position_embeddings '
                        f'{self.cfg.max_position_embeddings} of the deberta-v2 model')
      x = x + layers.embed_rows(self.position_embeddings, 0, seq_len)[None]
    if self.token_type_embeddings is not None:
      x = x + layers.embed_few(self.token_type_embeddings, token_type_ids)
    if self.embed_proj is not None:
      x = self.embed_proj(x)
    x = self.LayerNorm(x) * mask[..., None].astype(x.dtype)
    return attention.dropout(self.cfg.hidden_dropout_prob, x, rngs)


class DisentangledSelfAttention(nnx.Module):
  """HF `DisentangledSelfAttention` (`attention.self`): content scores plus the c2p / p2c
  relative-position scores, all divided by sqrt(head_dim * scale_factor)."""

  def __init__(self, cfg: DebertaV2Config, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    h = cfg.hidden_size
    self.query_proj = _linear(cfg, h, h, ('embed', 'heads'), **kw)
    self.key_proj = _linear(cfg, h, h, ('embed', 'heads'), **kw)
    self.value_proj = _linear(cfg, h, h, ('embed', 'heads'), **kw)
    own = cfg.relative_attention and not cfg.share_att_key
    self.pos_key_proj = (_linear(cfg, h, h, ('embed', 'heads'), **kw)
                         if own and 'c2p' in cfg.pos_att_type else None)
    self.pos_query_proj = (_linear(cfg, h, h, ('embed', 'heads'), **kw)
                           if own and 'p2c' in cfg.pos_att_type else None)

  def _heads(self, x, b):
    """[b * S, H] rows -> [b, N, S, D]."""
    n, d = self.cfg.num_attention_heads, self.cfg.head_dim
    return x.reshape(b, -1, n, d).transpose(0, 2, 1, 3)

  def __call__(self, x, mask, rel_embeddings, rel_pos, rngs=None):
    """x: [B*S, H] rows; mask: bool [B, 1, S, S] (query and key both real); rel_embeddings:
    [2 * span, H] or None; rel_pos: int [S, S] numpy. Returns [B*S, H]."""
    b = mask.shape[0]
    q, k, v = (self._heads(layer_stack.name_qkv(proj(x)), b)
               for proj in (self.query_proj, self.key_proj, self.value_proj))
    scale = float(np.sqrt(np.float32(self.cfg.head_dim * self.cfg.scale_factor)))
    scores = jnp.einsum('bnqd,bnkd->bnqk', q, k / jnp.asarray(scale, k.dtype),
                        preferred_element_type=jnp.float32)
    if self.cfg.relative_attention:
      rel = attention.dropout(self.cfg.hidden_dropout_prob, rel_embeddings, rngs)
      scores = scores + self._position_scores(q, k, rel, rel_pos, scale)
    scores = jnp.where(mask, scores, bert.MASK_VALUE)
    probs = attention.dropout(self.cfg.attention_probs_dropout_prob,
                              jax.nn.softmax(scores, axis=-1), rngs)
    out = jnp.einsum('bnqk,bnkd->bnqd', probs.astype(v.dtype), v)
    return out.transpose(0, 2, 1, 3).reshape(x.shape[0], -1)

  def _position_scores(self, q, k, rel, rel_pos, scale):
    """HF's `disentangled_attention_bias`: [B, N, S, S] fp32."""
    span = self.cfg.att_span
    rel = rel[:2 * span]
    share = self.cfg.share_att_key
    score = 0.0
    if 'c2p' in self.cfg.pos_att_type:
      pos_key = self._heads((self.key_proj if share else self.pos_key_proj)(rel), 1)[0]
      c2p = jnp.einsum('bnqd,nrd->bnqr', q, pos_key, preferred_element_type=jnp.float32)
      index = np.clip(rel_pos + span, 0, 2 * span - 1)
      score = score + jnp.take_along_axis(c2p, jnp.asarray(index)[None, None], axis=-1) / scale
    if 'p2c' in self.cfg.pos_att_type:
      pos_query = self._heads((self.query_proj if share else self.pos_query_proj)(rel), 1)[0]
      p2c = jnp.einsum('bnkd,nrd->bnkr', k, pos_query, preferred_element_type=jnp.float32)
      index = np.clip(-rel_pos + span, 0, 2 * span - 1)
      p2c = jnp.take_along_axis(p2c, jnp.asarray(index)[None, None], axis=-1)
      score = score + jnp.swapaxes(p2c, -1, -2) / scale
    return score


class Attention(nnx.Module):

  def __init__(self, cfg: DebertaV2Config, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.self_attn = DisentangledSelfAttention(cfg, **kw)
    self.output = bert.BertSelfOutput(cfg, cfg.hidden_size, ('heads', 'embed'), **kw)

  def __call__(self, x, mask, rel_embeddings, rel_pos, rngs=None):
    return self.output(self.self_attn(x, mask, rel_embeddings, rel_pos, rngs), x, rngs)


class Layer(nnx.Module):
  """HF `DebertaV2Layer`: BERT's post-LayerNorm block around disentangled attention."""

  def __init__(self, cfg: DebertaV2Config, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attention = Attention(cfg, **kw)
    self.intermediate = bert.BertIntermediate(cfg, **kw)
    self.output = bert.BertSelfOutput(cfg, cfg.intermediate_size, ('mlp', 'embed'), **kw)

  def __call__(self, x, mask, rel_embeddings, rel_pos, rngs=None):
    x = self.attention(x, mask, rel_embeddings, rel_pos, rngs)
    return self.output(self.intermediate(x), x, rngs)


class Conv1d(nnx.Module):
  """A 'same'-padded grouped 1-D convolution over the sequence; `kernel` in PyTorch's
  [out, in / groups, width] layout, so the weight table copies it as is."""

  def __init__(self, cfg: DebertaV2Config, *, dtype, param_dtype, rngs: nnx.Rngs):
    h, g, w = cfg.hidden_size, cfg.conv_groups, cfg.conv_kernel_size
    fan_in = h // g * w
    bound = 1.0 / np.sqrt(fan_in)  # PyTorch's Conv1d default initialisation
    self.groups, self.dtype = g, dtype
    self.kernel = nnx.Param(
        jax.random.uniform(rngs.params(), (h, h // g, w), param_dtype, -bound, bound),
        out_sharding=('embed', None, None), eager_sharding=False)
    self.bias = nnx.Param(jax.random.uniform(rngs.params(), (h,), param_dtype, -bound, bound),
                          out_sharding=('embed',), eager_sharding=False)

  def __call__(self, x):
    """x: [B, S, H] -> [B, S, H]."""
    w = self.kernel.shape[-1]
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), self.kernel[...].astype(self.dtype), window_strides=(1,),
        padding=[((w - 1) // 2, (w - 1) // 2)], dimension_numbers=('NWC', 'OIW', 'NWC'),
        feature_group_count=self.groups, precision=jax.lax.Precision.HIGHEST)
    return y + self.bias[...].astype(self.dtype)


class ConvLayer(nnx.Module):
  """HF `ConvLayer` (v2-xlarge, `conv_kernel_size` > 0): after the first layer,
  LN(layer output + act(conv(embeddings))) with padding zeroed before and after."""

  def __init__(self, cfg: DebertaV2Config, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.cfg = cfg
    self.conv = Conv1d(cfg, **kw)
    self.LayerNorm = bert.LayerNorm(cfg, **kw)  # pylint: disable=invalid-name

  def __call__(self, embedded, residual, input_mask, rngs=None):
    """embedded, residual: [B, S, H]; input_mask: [B, S] 0/1."""
    keep = input_mask[..., None].astype(residual.dtype)
    out = self.conv(embedded) * keep
    out = ACTIVATIONS[self.cfg.conv_act](attention.dropout(self.cfg.hidden_dropout_prob, out, rngs))
    return self.LayerNorm(residual + out) * keep


class Encoder(nnx.Module):
  """HF `DebertaV2Encoder`: the layer stack (`layer_stack.run_layers`: stackable, scannable,
  `remat`), the shared relative position table and its LayerNorm, the optional ConvLayer."""

  def __init__(self, cfg: DebertaV2Config, *, dtype, param_dtype, rngs: nnx.Rngs,
               remat: str = 'none'):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.cfg = cfg
    self.remat = layer_stack.check_remat(remat)
    self.layer = nnx.List([Layer(cfg, **kw) for _ in range(cfg.num_hidden_layers)])
    self.rel_embeddings = (_embed(cfg, 2 * cfg.att_span, cfg.hidden_size, **kw)
                           if cfg.relative_attention else None)
    self.LayerNorm = (bert.LayerNorm(cfg, **kw)  # pylint: disable=invalid-name
                      if 'layer_norm' in cfg.norm_rel_ebd_types else None)
    self.conv = ConvLayer(cfg, **kw) if cfg.conv_kernel_size > 0 else None

  def _rel_embeddings(self):
    if self.rel_embeddings is None:
      return None
    table = self.rel_embeddings.embedding[...].astype(self.rel_embeddings.dtype)
    return self.LayerNorm(table) if self.LayerNorm is not None else table

  def __call__(self, embedded, attention_mask, rngs=None):
    """embedded: [B, S, H]; attention_mask: [B, S] 0/1. Returns [B*S, H] rows."""
    b, s, h = embedded.shape
    real = attention_mask > 0
    mask = real[:, None, :, None] & real[:, None, None, :]
    rel_pos = relative_positions(s, self.cfg.position_buckets, self.cfg.max_relative)
    rel_embeddings = self._rel_embeddings()

    def body(layer, x, i, unused_x, rngs):
      x = layer(x, mask, rel_embeddings, rel_pos, rngs)
      if self.conv is None or (isinstance(i, int) and i != 0):
        return x, None
      conv = self.conv(embedded, x.reshape(b, s, h), attention_mask, rngs).reshape(b * s, h)
      return (conv if isinstance(i, int) else jnp.where(i == 0, conv, x)), None

    x, _ = layer_stack.run_layers(self.layer, body, embedded.reshape(b * s, h), rngs=rngs,
                                  remat=self.remat)
    return x


class DebertaV2Model(nnx.Module):
  """HF `DebertaV2Model`; returns (last_hidden_state [B, S, H], None) like `BertModel`
  without a pooler. `remat` as `BertModel`'s; `attention` must be 'xla'."""

  def __init__(self, config: DebertaV2Config, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs, remat: str = 'none',
               attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    bert.check_attention(type(self), attention)
    self.config = config
    self.dtype = dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.embeddings = Embeddings(config, **kw)
    self.encoder = Encoder(config, **kw, remat=remat)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    """Arguments as `BertModel`'s."""
    input_ids = jnp.asarray(input_ids)
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    attention_mask = jnp.asarray(attention_mask)
    x = self.embeddings(input_ids, token_type_ids, attention_mask, rngs)
    return self.encoder(x, attention_mask, rngs).reshape(x.shape), None


def _base(config, dtype, param_dtype, rngs, remat,
          attention):  # pylint: disable=redefined-outer-name
  return DebertaV2Model(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs, remat=remat,
                        attention=attention)


class ContextPooler(nnx.Module):
  """HF `ContextPooler`: act(dense(dropout(first token))), act = `pooler_hidden_act`."""

  def __init__(self, cfg: DebertaV2Config, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.cfg = cfg
    self.dense = _linear(cfg, cfg.hidden_size, cfg.hidden_size, ('embed', 'embed'), dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)

  def __call__(self, hidden, rngs=None):
    x = attention.dropout(self.cfg.pooler_dropout, hidden[:, 0], rngs)
    return ACTIVATIONS[self.cfg.pooler_hidden_act](self.dense(x))


def _cls_dropout(config: DebertaV2Config) -> float:
  return config.hidden_dropout_prob if config.cls_dropout is None else config.cls_dropout


class DebertaV2ForSequenceClassification(nnx.Module):
  """DeBERTa + `ContextPooler` + dropout (`cls_dropout`) + linear `classifier`; HF
  `DebertaV2ForSequenceClassification`. The pooler and the classifier are new on a base
  checkpoint and train as the head."""

  def __init__(self, config: DebertaV2Config, num_labels: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs, remat: str = 'none',
               attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    self.config = config
    self.num_labels = num_labels
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.deberta = _base(config, dtype, param_dtype, rngs, remat, attention)
    self.context_pooler = ContextPooler(config, **kw)
    self.classifier = _linear(config, config.hidden_size, num_labels, ('embed', None), **kw)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    """Logits [B, num_labels] (compute dtype)."""
    hidden, _ = self.deberta(input_ids, attention_mask, token_type_ids, rngs=rngs)
    pooled = self.context_pooler(hidden, rngs)
    return self.classifier(attention.dropout(_cls_dropout(self.config), pooled, rngs))


class DebertaV2ForTokenClassification(nnx.Module):
  """DeBERTa + dropout + linear `classifier` on every token; HF
  `DebertaV2ForTokenClassification`."""

  def __init__(self, config: DebertaV2Config, num_labels: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs, remat: str = 'none',
               attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    self.config = config
    self.num_labels = num_labels
    self.deberta = _base(config, dtype, param_dtype, rngs, remat, attention)
    self.classifier = _linear(config, config.hidden_size, num_labels, ('embed', None),
                              dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    """Per-token logits [B, S, num_labels] (compute dtype)."""
    hidden, _ = self.deberta(input_ids, attention_mask, token_type_ids, rngs=rngs)
    return self.classifier(attention.dropout(self.config.hidden_dropout_prob, hidden, rngs))


class DebertaV2ForMultipleChoice(DebertaV2ForSequenceClassification):
  """HF `DebertaV2ForMultipleChoice`: the sequence classifier's head with one output, scoring
  each (prompt, choice) row of [B, C, T] inputs; logits [B, C]."""

  def __init__(self, config: DebertaV2Config, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs, remat: str = 'none', attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    super().__init__(config, 1, dtype=dtype, param_dtype=param_dtype, rngs=rngs, remat=remat,
                     attention=attention)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    b, c = input_ids.shape[:2]
    flat = (None if x is None else jnp.asarray(x).reshape(b * c, -1)
            for x in (input_ids, attention_mask, token_type_ids))
    return super().__call__(*flat, rngs=rngs).reshape(b, c)


class DebertaV2ForQuestionAnswering(nnx.Module):
  """HF `DebertaV2ForQuestionAnswering`: DeBERTa + a two-output `qa_outputs` on every token (no
  dropout, as HF); returns (start logits, end logits), each [B, S]."""

  def __init__(self, config: DebertaV2Config, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs, remat: str = 'none', attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    self.config = config
    self.deberta = _base(config, dtype, param_dtype, rngs, remat, attention)
    self.qa_outputs = _linear(config, config.hidden_size, 2, ('embed', None), dtype=dtype,
                              param_dtype=param_dtype, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    hidden, _ = self.deberta(input_ids, attention_mask, token_type_ids, rngs=rngs)
    logits = self.qa_outputs(hidden)
    return logits[..., 0], logits[..., 1]
