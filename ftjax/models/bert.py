"""BERT-family encoders (BERT, MiniLM, RoBERTa, XLM-RoBERTa) as Flax NNX modules.

RoBERTa and XLM-RoBERTa are BERT with positions counted from `pad_token_id + 1` over the
non-padding tokens (fairseq's `make_positions`), usually one token type, no pooler under the
classifier, and a two-layer classification head on the first token (`classifier.dense`,
`classifier.out_proj`); their configs are `RobertaConfig` / `XLMRobertaConfig` and their
modules sit under `roberta.` where BERT's sit under `bert.`.

Submodule paths mirror the Hugging Face names so that weight conversion is a
table (`ftjax/weights/bert_table.py`) and methods can target modules by regex:

  embeddings.{word_embeddings,position_embeddings,token_type_embeddings,LayerNorm}
  encoder.layer.{i}.attention.self_attn.{query,key,value}
  encoder.layer.{i}.attention.output.{dense,LayerNorm}
  encoder.layer.{i}.intermediate.dense
  encoder.layer.{i}.output.{dense,LayerNorm}
  pooler.dense
  bert.*, classifier                      (BertForSequenceClassification)

HF's `attention.self` is renamed `attention.self_attn` (an attribute called
`self` would read as `self.self` in methods); it is the only rename.
Leaf names follow Flax (`kernel`/`bias`, `embedding`, `scale`/`bias`).

Params carry logical axis names (`out_sharding` metadata, not applied eagerly)
from {'vocab', 'embed', 'heads', 'mlp'}, so a sharding config can map them to
mesh axes.

Dropout holds no RNG state: it is active only when the caller passes `rngs`
(an `nnx.Rngs` with a `dropout` stream) to `__call__`, which keeps a train step
a pure function of its inputs.
"""

import dataclasses
from typing import Any, ClassVar

from flax import nnx
import jax
import jax.numpy as jnp

from ftjax.errors import UserError
from ftjax.models import layer_stack
from ftjax.models import layers

# Activation name in HF `config.json` -> function. `gelu` is exact (erf).
ACTIVATIONS = {
    'gelu': layers.gelu_exact,
    'gelu_new': lambda x: jax.nn.gelu(x, approximate=True),
    'gelu_pytorch_tanh': lambda x: jax.nn.gelu(x, approximate=True),
    'relu': jax.nn.relu,
    'silu': jax.nn.silu,
    'swish': jax.nn.silu,
}

# Added (in fp32) to attention scores of padded keys; finite so a row whose
# keys are all padding gets a uniform softmax instead of NaNs.
MASK_VALUE = -1e9


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Architecture hyperparameters, read from / written to an HF config.json."""

  model_type: ClassVar[str] = 'bert'

  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = 'gelu'
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  classifier_dropout: float | None = None
  initializer_range: float = 0.02
  pad_token_id: int = 0
  position_embedding_type: str = 'absolute'

  def __post_init__(self):
    if self.hidden_act not in ACTIVATIONS:
      raise UserError(
          f"unsupported hidden_act '{self.hidden_act}' in BERT config; "
          f'supported: {", ".join(sorted(ACTIVATIONS))}')
    if self.position_embedding_type != 'absolute':
      raise UserError(
          'unsupported position_embedding_type '
          f"'{self.position_embedding_type}' in BERT config; supported: absolute")
    if self.hidden_size % self.num_attention_heads:
      raise UserError(
          f'hidden_size {self.hidden_size} is not divisible by '
          f'num_attention_heads {self.num_attention_heads} in BERT config')

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> 'BertConfig':
    """Builds a config from an HF config.json dict; unknown keys are ignored."""
    if hf.get('is_decoder') or hf.get('add_cross_attention'):
      raise UserError('BERT config with is_decoder/add_cross_attention is not '
                      'supported; only the encoder is')
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in hf.items() if k in names}
    # transformers 5 writes None for some unset keys; keep our defaults then.
    kwargs = {k: v for k, v in kwargs.items()
              if v is not None or k == 'classifier_dropout'}
    return cls(**kwargs)

  def to_hf(self) -> dict[str, Any]:
    """Returns the HF config.json keys for this architecture."""
    return {'model_type': self.model_type, **dataclasses.asdict(self)}

  @property
  def fairseq_positions(self) -> bool:
    """Positions from pad_token_id + 1 over the real tokens (RoBERTa), not 0, 1, 2, ..."""
    return False


@dataclasses.dataclass(frozen=True)
class RobertaConfig(BertConfig):
  """HF `RobertaConfig` (same keys as BERT's; its own defaults)."""

  model_type: ClassVar[str] = 'roberta'

  vocab_size: int = 50265
  max_position_embeddings: int = 514
  type_vocab_size: int = 1
  layer_norm_eps: float = 1e-5
  pad_token_id: int = 1

  @property
  def fairseq_positions(self) -> bool:
    return True


@dataclasses.dataclass(frozen=True)
class XLMRobertaConfig(RobertaConfig):
  """HF `XLMRobertaConfig`: RoBERTa's architecture, XLM-R's vocabulary."""

  model_type: ClassVar[str] = 'xlm-roberta'

  vocab_size: int = 250002


def linear(cfg, d_in, d_out, axes, dtype, param_dtype, rngs):
  """An HF-initialised `nnx.Linear` (normal(std=initializer_range), zero bias)."""
  return nnx.Linear(
      d_in, d_out, dtype=dtype, param_dtype=param_dtype,
      kernel_init=nnx.initializers.normal(cfg.initializer_range),
      kernel_metadata={'out_sharding': axes, 'eager_sharding': False},
      bias_metadata={'out_sharding': axes[1:], 'eager_sharding': False},
      rngs=rngs)


def embed(cfg, num, dtype, param_dtype, rngs):
  return nnx.Embed(
      num, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
      embedding_init=nnx.initializers.normal(cfg.initializer_range),
      embedding_metadata={'out_sharding': ('vocab', 'embed'),
                          'eager_sharding': False},
      rngs=rngs)


def LayerNorm(cfg: BertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):  # pylint: disable=invalid-name
  """This family's LayerNorm: fp32 statistics, params at `<name>.scale` / `<name>.bias`."""
  return layers.Fp32LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dtype=dtype, param_dtype=param_dtype,
                              rngs=rngs)


def _dropout(rate: float, x, rngs):
  """Dropout that is active only when the caller passes `rngs`."""
  if rngs is None or rate == 0.0:
    return x
  return nnx.Dropout(rate, deterministic=False)(x, rngs=rngs)


class BertEmbeddings(nnx.Module):
  """Word + position + token-type embeddings, LayerNorm, dropout."""

  def __init__(self, cfg: BertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.word_embeddings = embed(cfg, cfg.vocab_size, **kw)
    self.position_embeddings = embed(cfg, cfg.max_position_embeddings, **kw)
    self.token_type_embeddings = embed(cfg, cfg.type_vocab_size, **kw)
    self.LayerNorm = LayerNorm(cfg, **kw)  # pylint: disable=invalid-name
    # Position of the first token; HF's `cache_length`. Prefix tuning sets it to
    # its number of virtual tokens, as HF does when they come as a KV cache.
    self.position_offset = 0

  def __call__(self, input_ids, token_type_ids, rngs=None, *,
               inputs_embeds=None):
    """`inputs_embeds` [B, S, H], when given, replaces the word embeddings of
    `input_ids` (HF's argument of that name; prompt tuning prepends to it)."""
    if inputs_embeds is None:
      inputs_embeds = self.word_embeddings(input_ids)
    seq_len = inputs_embeds.shape[1]
    offset = self.position_offset
    first = self.cfg.pad_token_id + 1 if self.cfg.fairseq_positions else 0
    if first + seq_len + offset > self.cfg.max_position_embeddings:
      raise UserError(
          f'sequence length {seq_len}'
          + (f' (+{offset} virtual tokens)' if offset else '')
          + ' exceeds max_position_embeddings '
          f'{self.cfg.max_position_embeddings} of the {self.cfg.model_type} model'
          + (f' ({first} positions before the first token)' if first else ''))
    if self.cfg.fairseq_positions and input_ids is not None:
      # HF's `create_position_ids_from_input_ids`: real tokens count from pad + 1, padding
      # sits at pad; a gather (positions differ per row). Given only embeddings (prompt
      # tuning), HF numbers them in order, as the slice below does.
      real = (input_ids != self.cfg.pad_token_id).astype(jnp.int32)
      positions = (jnp.cumsum(real, axis=1) + offset) * real + self.cfg.pad_token_id
      position_embeddings = self.position_embeddings(positions)
    else:
      position_embeddings = layers.embed_rows(self.position_embeddings, first + offset,
                                              seq_len)[None]
    x = (inputs_embeds + position_embeddings
         + layers.embed_few(self.token_type_embeddings, token_type_ids))
    x = self.LayerNorm(x)
    return _dropout(self.cfg.hidden_dropout_prob, x, rngs)


class BertSelfAttention(nnx.Module):
  """Multi-head attention projections; HF name `attention.self`."""

  def __init__(self, cfg: BertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.cfg = cfg
    h = cfg.hidden_size
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.query = linear(cfg, h, h, ('embed', 'heads'), **kw)
    self.key = linear(cfg, h, h, ('embed', 'heads'), **kw)
    self.value = linear(cfg, h, h, ('embed', 'heads'), **kw)

  def __call__(self, x, mask_bias, rngs=None):
    """x: [B*S, H] token rows; mask_bias: [B, 1, 1, S]. Returns [B*S, H]."""
    b, s = mask_bias.shape[0], mask_bias.shape[-1]
    n, d = self.cfg.num_attention_heads, self.cfg.head_dim
    # Heads-major [B, N, S, D] layout: XLA:CPU runs these batched matmuls
    # ~3x faster than contracting the [B, S, N, D] layout directly.
    q, k, v = (layer_stack.name_qkv(proj(x)).reshape(b, s, n, d)
               .transpose(0, 2, 1, 3)
               for proj in (self.query, self.key, self.value))
    # Scores and softmax in fp32 for bf16 stability; scale q before the matmul.
    scores = jnp.einsum('bnqd,bnkd->bnqk', q * (d ** -0.5), k,
                        preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores + mask_bias, axis=-1)
    probs = _dropout(self.cfg.attention_probs_dropout_prob, probs, rngs)
    out = jnp.einsum('bnqk,bnkd->bnqd', probs.astype(v.dtype), v)
    return out.transpose(0, 2, 1, 3).reshape(b * s, n * d)


class BertSelfOutput(nnx.Module):
  """Attention output projection + residual + LayerNorm."""

  def __init__(self, cfg: BertConfig, d_in: int, axes, *, dtype, param_dtype,
               rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dense = linear(cfg, d_in, cfg.hidden_size, axes, **kw)
    self.LayerNorm = LayerNorm(cfg, **kw)  # pylint: disable=invalid-name

  def __call__(self, x, residual, rngs=None):
    x = _dropout(self.cfg.hidden_dropout_prob, self.dense(x), rngs)
    return self.LayerNorm(x + residual)


class BertAttention(nnx.Module):

  def __init__(self, cfg: BertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.self_attn = BertSelfAttention(cfg, **kw)
    self.output = BertSelfOutput(cfg, cfg.hidden_size, ('heads', 'embed'), **kw)

  def __call__(self, x, mask_bias, rngs=None):
    return self.output(self.self_attn(x, mask_bias, rngs), x, rngs)


class BertIntermediate(nnx.Module):

  def __init__(self, cfg: BertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.act = ACTIVATIONS[cfg.hidden_act]
    self.dense = linear(cfg, cfg.hidden_size, cfg.intermediate_size,
                         ('embed', 'mlp'), dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x):
    return self.act(self.dense(x))


class BertLayer(nnx.Module):
  """One transformer block (post-LayerNorm, like the original BERT)."""

  def __init__(self, cfg: BertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attention = BertAttention(cfg, **kw)
    self.intermediate = BertIntermediate(cfg, **kw)
    self.output = BertSelfOutput(cfg, cfg.intermediate_size, ('mlp', 'embed'),
                                 **kw)

  def __call__(self, x, mask_bias, rngs=None):
    x = self.attention(x, mask_bias, rngs)
    return self.output(self.intermediate(x), x, rngs)


class BertEncoder(nnx.Module):
  """The layer stack, run through `layer_stack.run_layers` (so it can be stacked
  and scanned); `remat` is the per-layer rematerialisation policy."""

  def __init__(self, cfg: BertConfig, *, dtype, param_dtype, rngs: nnx.Rngs,
               remat: str = 'none'):
    self.remat = layer_stack.check_remat(remat)
    self.layer = nnx.List([
        BertLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        for _ in range(cfg.num_hidden_layers)])

  def __call__(self, x, mask_bias, rngs=None):
    def body(layer, x, unused_i, unused_x, rngs):
      return layer(x, mask_bias, rngs), None

    x, _ = layer_stack.run_layers(self.layer, body, x, rngs=rngs,
                                  remat=self.remat)
    return x


class BertPooler(nnx.Module):
  """tanh(dense(hidden state of the first token)), as in HF."""

  def __init__(self, cfg: BertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.dense = linear(cfg, cfg.hidden_size, cfg.hidden_size,
                         ('embed', 'embed'), dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)

  def __call__(self, first_token):
    return jnp.tanh(self.dense(first_token))


def check_attention(model_cls: type, impl: str) -> None:
  """BERT's bidirectional attention has one implementation (config `model.attention`)."""
  if impl != 'xla':
    raise UserError(f"config key 'model.attention' = '{impl}': {model_cls.__name__} has no "
                    "decoder attention (only Llama-family and GPT-2 models run it); use 'xla'")


class BertModel(nnx.Module):
  """The BERT encoder; HF `BertModel`. `remat`: the encoder's per-layer policy (config
  `model.remat`); `attention` (config `model.attention`) must be 'xla'."""

  def __init__(self, config: BertConfig, *, add_pooling_layer: bool = True,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs,
               remat: str = 'none', attention: str = 'xla'):
    check_attention(type(self), attention)
    self.config = config
    self.dtype = dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.embeddings = BertEmbeddings(config, **kw)
    self.encoder = BertEncoder(config, **kw, remat=remat)
    self.pooler = BertPooler(config, **kw) if add_pooling_layer else None

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    """Encodes a batch.

    Args:
      input_ids: int [B, S] token ids.
      attention_mask: [B, S], 1 for real tokens and 0 for padding; None = all 1.
      token_type_ids: int [B, S] segment ids; None = all 0.
      rngs: an `nnx.Rngs` with a `dropout` stream to enable dropout (training);
        None for deterministic evaluation.

    Returns:
      (last_hidden_state [B, S, H], pooled_output [B, H] or None).
    """
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = self.embeddings(input_ids, token_type_ids, rngs)
    b, s, h = x.shape
    if s > attention_mask.shape[1]:
      # Embeddings that prepend virtual tokens (prompt tuning): always attended.
      extra = jnp.ones((b, s - attention_mask.shape[1]), jnp.int32)
      attention_mask = jnp.concatenate(
          [extra, jnp.asarray(attention_mask).astype(jnp.int32)], axis=1)
    # [B, 1, 1, S] additive bias over keys, fp32 regardless of compute dtype.
    mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0,
                          MASK_VALUE).astype(jnp.float32)
    # The encoder works on [B*S, H] rows: XLA:CPU's fast matmul kernels take
    # the 2-D weight gradients, the 3-D ones fall back to a ~2x slower path.
    x = self.encoder(x.reshape(b * s, h), mask_bias, rngs).reshape(b, s, h)
    pooled = self.pooler(x[:, 0]) if self.pooler is not None else None
    return x, pooled


class BertForSequenceClassification(nnx.Module):
  """BERT + pooler + dropout + linear `classifier`; HF
  `BertForSequenceClassification`, so exported weights give the same logits.
  `remat` and `attention` as `BertModel`'s."""

  def __init__(self, config: BertConfig, num_labels: int, *,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs,
               remat: str = 'none', attention: str = 'xla'):
    check_attention(type(self), attention)
    self.config = config
    self.num_labels = num_labels
    self.bert = BertModel(config, add_pooling_layer=True, dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs, remat=remat)
    self.classifier = linear(config, config.hidden_size, num_labels,
                              ('embed', None), dtype=dtype,
                              param_dtype=param_dtype, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    """Returns logits [B, num_labels] (in the compute dtype)."""
    _, pooled = self.bert(input_ids, attention_mask, token_type_ids, rngs=rngs)
    rate = self.config.classifier_dropout
    if rate is None:
      rate = self.config.hidden_dropout_prob
    return self.classifier(_dropout(rate, pooled, rngs))


class RobertaClassificationHead(nnx.Module):
  """HF `RobertaClassificationHead`: dropout, dense, tanh, dropout, `out_proj` on the first
  token's hidden state (no pooler)."""

  def __init__(self, config: BertConfig, num_labels: int, *, dtype, param_dtype,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.config = config
    self.dense = linear(config, config.hidden_size, config.hidden_size, ('embed', 'embed'), **kw)
    self.out_proj = linear(config, config.hidden_size, num_labels, ('embed', None), **kw)

  def __call__(self, first_token, rngs=None):
    rate = self.config.classifier_dropout
    if rate is None:
      rate = self.config.hidden_dropout_prob
    x = jnp.tanh(self.dense(_dropout(rate, first_token, rngs)))
    return self.out_proj(_dropout(rate, x, rngs))


class RobertaForSequenceClassification(nnx.Module):
  """RoBERTa (no pooler) + `RobertaClassificationHead`; HF
  `RobertaForSequenceClassification` / `XLMRobertaForSequenceClassification`. `remat` and
  `attention` as `BertModel`'s."""

  def __init__(self, config: BertConfig, num_labels: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs, remat: str = 'none',
               attention: str = 'xla'):
    check_attention(type(self), attention)
    self.config = config
    self.num_labels = num_labels
    self.roberta = BertModel(config, add_pooling_layer=False, dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs, remat=remat)
    self.classifier = RobertaClassificationHead(config, num_labels, dtype=dtype,
                                                param_dtype=param_dtype, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    """Returns logits [B, num_labels] (in the compute dtype)."""
    hidden, _ = self.roberta(input_ids, attention_mask, token_type_ids, rngs=rngs)
    return self.classifier(hidden[:, 0], rngs)


class BertForTokenClassification(nnx.Module):
  """BERT (no pooler) + dropout + linear `classifier` on every token; HF
  `BertForTokenClassification` (`RobertaForTokenClassification` / XLM-R's with the base under
  `roberta`). `remat` and `attention` as `BertModel`'s."""

  BASE = 'bert'  # the attribute (and HF name prefix) of the encoder

  def __init__(self, config: BertConfig, num_labels: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs, remat: str = 'none',
               attention: str = 'xla'):
    check_attention(type(self), attention)
    self.config = config
    self.num_labels = num_labels
    setattr(self, self.BASE, BertModel(config, add_pooling_layer=False, dtype=dtype,
                                       param_dtype=param_dtype, rngs=rngs, remat=remat))
    self.classifier = linear(config, config.hidden_size, num_labels, ('embed', None),
                             dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    """Returns per-token logits [B, S, num_labels] (in the compute dtype)."""
    hidden, _ = getattr(self, self.BASE)(input_ids, attention_mask, token_type_ids, rngs=rngs)
    rate = self.config.classifier_dropout
    if rate is None:
      rate = self.config.hidden_dropout_prob
    return self.classifier(_dropout(rate, hidden, rngs))


class RobertaForTokenClassification(BertForTokenClassification):
  """HF `RobertaForTokenClassification` / `XLMRobertaForTokenClassification`."""

  BASE = 'roberta'


def _flatten_choices(*arrays):
  """[B, C, T] arrays (None kept) as [B * C, T], for one encoder pass over every choice."""
  return tuple(None if x is None else jnp.asarray(x).reshape(-1, x.shape[-1]) for x in arrays)


class BertForMultipleChoice(BertForSequenceClassification):
  """HF `BertForMultipleChoice`: BERT + pooler + dropout + a one-output `classifier` scoring each
  (prompt, choice) row of [B, C, T] inputs; logits [B, C]."""

  def __init__(self, config: BertConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs, remat: str = 'none', attention: str = 'xla'):
    super().__init__(config, 1, dtype=dtype, param_dtype=param_dtype, rngs=rngs, remat=remat,
                     attention=attention)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    b, c = input_ids.shape[:2]
    return super().__call__(*_flatten_choices(input_ids, attention_mask, token_type_ids),
                            rngs=rngs).reshape(b, c)


class RobertaForMultipleChoice(nnx.Module):
  """HF `RobertaForMultipleChoice` / XLM-R's: RoBERTa *with* its pooler + dropout + a one-output
  `classifier` per (prompt, choice) row; logits [B, C]."""

  def __init__(self, config: BertConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs, remat: str = 'none', attention: str = 'xla'):
    check_attention(type(self), attention)
    self.config = config
    self.roberta = BertModel(config, add_pooling_layer=True, dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs, remat=remat)
    self.classifier = linear(config, config.hidden_size, 1, ('embed', None), dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    b, c = input_ids.shape[:2]
    _, pooled = self.roberta(*_flatten_choices(input_ids, attention_mask, token_type_ids),
                             rngs=rngs)
    return self.classifier(_dropout(self.config.hidden_dropout_prob, pooled, rngs)).reshape(b, c)


class BertForQuestionAnswering(nnx.Module):
  """HF `BertForQuestionAnswering` (`RobertaForQuestionAnswering` / XLM-R's with the base under
  `roberta`): the encoder without its pooler and a two-output `qa_outputs` on every token;
  returns (start logits, end logits), each [B, S]."""

  BASE = 'bert'

  def __init__(self, config: BertConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs, remat: str = 'none', attention: str = 'xla'):
    check_attention(type(self), attention)
    self.config = config
    setattr(self, self.BASE, BertModel(config, add_pooling_layer=False, dtype=dtype,
                                       param_dtype=param_dtype, rngs=rngs, remat=remat))
    self.qa_outputs = linear(config, config.hidden_size, 2, ('embed', None), dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    hidden, _ = getattr(self, self.BASE)(input_ids, attention_mask, token_type_ids, rngs=rngs)
    logits = self.qa_outputs(hidden)
    return logits[..., 0], logits[..., 1]


class RobertaForQuestionAnswering(BertForQuestionAnswering):
  """HF `RobertaForQuestionAnswering` / `XLMRobertaForQuestionAnswering`."""

  BASE = 'roberta'
