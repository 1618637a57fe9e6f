"""DistilBERT encoder and sequence classifier in NNX; HF `distilbert`.

A 6-layer BERT without token types or pooler, with its own module names (mirrored so the
weight table, `weights/distilbert_table.py`, is one rule per tensor and methods target HF's
names: `q_lin`/`v_lin` for LoRA, as PEFT's default):

  embeddings.{word_embeddings,position_embeddings,LayerNorm}
  transformer.layer.{i}.attention.{q_lin,k_lin,v_lin,out_lin}, .sa_layer_norm
  transformer.layer.{i}.ffn.{lin1,lin2}, .output_layer_norm
  distilbert.*, pre_classifier, classifier   (DistilBertForSequenceClassification)

The classifier reads the first token: classifier(dropout(relu(pre_classifier(h[:, 0])))).
Sinusoidal position tables (`sinusoidal_pos_embds`) are weights in the checkpoint like learnt
ones, so both load alike. LayerNorms are the BERT family's (fp32 statistics, eps 1e-12).
"""

import dataclasses
from typing import Any, ClassVar

from flax import nnx
import jax
import jax.numpy as jnp

from ftjax.errors import UserError
from ftjax.models import attention
from ftjax.models import bert
from ftjax.models import layer_stack
from ftjax.models import layers


@dataclasses.dataclass(frozen=True)
class DistilBertConfig:
  """Architecture hyperparameters, read from / written to an HF config.json."""

  model_type: ClassVar[str] = 'distilbert'

  vocab_size: int = 30522
  max_position_embeddings: int = 512
  sinusoidal_pos_embds: bool = False
  n_layers: int = 6
  n_heads: int = 12
  dim: int = 768
  hidden_dim: int = 3072
  dropout: float = 0.1
  attention_dropout: float = 0.1
  activation: str = 'gelu'
  initializer_range: float = 0.02
  qa_dropout: float = 0.1
  seq_classif_dropout: float = 0.2
  pad_token_id: int = 0

  def __post_init__(self):
    if self.activation not in bert.ACTIVATIONS:
      raise UserError(f"unsupported activation '{self.activation}' in distilbert config; "
                      f'supported: {", ".join(sorted(bert.ACTIVATIONS))}')
    if self.dim % self.n_heads:
      raise UserError(f'dim {self.dim} is not divisible by n_heads {self.n_heads} in '
                      'distilbert config')

  # The names the BERT-family helpers and the methods read.
  @property
  def hidden_size(self) -> int:
    return self.dim

  @property
  def layer_norm_eps(self) -> float:
    return 1e-12

  @property
  def num_hidden_layers(self) -> int:
    return self.n_layers

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> 'DistilBertConfig':
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in hf.items() if k in names and v is not None})

  def to_hf(self) -> dict[str, Any]:
    return {'model_type': self.model_type, **dataclasses.asdict(self)}


def _linear(cfg, d_in, d_out, axes, *, dtype, param_dtype, rngs):
  return bert.linear(cfg, d_in, d_out, axes, dtype, param_dtype, rngs)


class Embeddings(nnx.Module):
  """Word + position embeddings, LayerNorm, dropout (no token types)."""

  def __init__(self, cfg: DistilBertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.word_embeddings = bert.embed(cfg, cfg.vocab_size, **kw)
    self.position_embeddings = bert.embed(cfg, cfg.max_position_embeddings, **kw)
    self.LayerNorm = bert.LayerNorm(cfg, **kw)  # pylint: disable=invalid-name

  def __call__(self, input_ids, rngs=None):
    seq_len = input_ids.shape[1]
    if seq_len > self.cfg.max_position_embeddings:
      raise UserError(f'sequence length {seq_len} exceeds max_position_embeddings '
                      f'{self.cfg.max_position_embeddings} of the distilbert model')
    x = (self.word_embeddings(input_ids)
         + layers.embed_rows(self.position_embeddings, 0, seq_len)[None])
    return attention.dropout(self.cfg.dropout, self.LayerNorm(x), rngs)


class MultiHeadSelfAttention(nnx.Module):
  """HF `DistilBertSelfAttention`: q_lin/k_lin/v_lin/out_lin."""

  def __init__(self, cfg: DistilBertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.cfg = cfg
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    h = cfg.dim
    self.q_lin = _linear(cfg, h, h, ('embed', 'heads'), **kw)
    self.k_lin = _linear(cfg, h, h, ('embed', 'heads'), **kw)
    self.v_lin = _linear(cfg, h, h, ('embed', 'heads'), **kw)
    self.out_lin = _linear(cfg, h, h, ('heads', 'embed'), **kw)

  def __call__(self, x, mask_bias, rngs=None):
    """x: [B*S, H] rows; mask_bias: [B, 1, 1, S]. Returns [B*S, H]."""
    b, s = mask_bias.shape[0], mask_bias.shape[-1]
    n = self.cfg.n_heads
    d = self.cfg.dim // n
    q, k, v = (layer_stack.name_qkv(proj(x)).reshape(b, s, n, d).transpose(0, 2, 1, 3)
               for proj in (self.q_lin, self.k_lin, self.v_lin))
    scores = jnp.einsum('bnqd,bnkd->bnqk', q * (d ** -0.5), k,
                        preferred_element_type=jnp.float32)
    probs = attention.dropout(self.cfg.attention_dropout,
                              jax.nn.softmax(scores + mask_bias, axis=-1), rngs)
    out = jnp.einsum('bnqk,bnkd->bnqd', probs.astype(v.dtype), v)
    return self.out_lin(out.transpose(0, 2, 1, 3).reshape(b * s, n * d))


class FFN(nnx.Module):

  def __init__(self, cfg: DistilBertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.cfg = cfg
    self.act = bert.ACTIVATIONS[cfg.activation]
    self.lin1 = _linear(cfg, cfg.dim, cfg.hidden_dim, ('embed', 'mlp'), **kw)
    self.lin2 = _linear(cfg, cfg.hidden_dim, cfg.dim, ('mlp', 'embed'), **kw)

  def __call__(self, x, rngs=None):
    return attention.dropout(self.cfg.dropout, self.lin2(self.act(self.lin1(x))), rngs)


class TransformerBlock(nnx.Module):
  """Post-LayerNorm block: LN(x + attn(x)); LN(x + ffn(x))."""

  def __init__(self, cfg: DistilBertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.cfg = cfg
    self.attention = MultiHeadSelfAttention(cfg, **kw)
    self.sa_layer_norm = bert.LayerNorm(cfg, **kw)
    self.ffn = FFN(cfg, **kw)
    self.output_layer_norm = bert.LayerNorm(cfg, **kw)

  def __call__(self, x, mask_bias, rngs=None):
    attn = attention.dropout(self.cfg.dropout, self.attention(x, mask_bias, rngs), rngs)
    x = self.sa_layer_norm(attn + x)
    return self.output_layer_norm(self.ffn(x, rngs) + x)


class Transformer(nnx.Module):
  """The layer stack (`layer_stack.run_layers`: stackable, scannable, `remat`)."""

  def __init__(self, cfg: DistilBertConfig, *, dtype, param_dtype, rngs: nnx.Rngs,
               remat: str = 'none'):
    self.remat = layer_stack.check_remat(remat)
    self.layer = nnx.List([TransformerBlock(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                           for _ in range(cfg.n_layers)])

  def __call__(self, x, mask_bias, rngs=None):
    def body(layer, x, unused_i, unused_x, rngs):
      return layer(x, mask_bias, rngs), None

    x, _ = layer_stack.run_layers(self.layer, body, x, rngs=rngs, remat=self.remat)
    return x


class DistilBertModel(nnx.Module):
  """HF `DistilBertModel`; returns (last_hidden_state [B, S, H], None) like `BertModel`
  (no pooler). `remat` as `BertModel`'s; `attention` must be 'xla'."""

  def __init__(self, config: DistilBertConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs, remat: str = 'none',
               attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    bert.check_attention(type(self), attention)
    self.config = config
    self.dtype = dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.embeddings = Embeddings(config, **kw)
    self.transformer = Transformer(config, **kw, remat=remat)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    """`token_type_ids` (which DistilBERT has none of) is ignored."""
    del token_type_ids
    input_ids = jnp.asarray(input_ids)
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    x = self.embeddings(input_ids, rngs)
    b, s, h = x.shape
    mask_bias = jnp.where(jnp.asarray(attention_mask)[:, None, None, :] > 0, 0.0,
                          bert.MASK_VALUE).astype(jnp.float32)
    return self.transformer(x.reshape(b * s, h), mask_bias, rngs).reshape(b, s, h), None


class DistilBertForSequenceClassification(nnx.Module):
  """DistilBERT + pre_classifier + ReLU + dropout + classifier on the first token; HF
  `DistilBertForSequenceClassification`. Both head layers are new on a base checkpoint and
  train as the head (`methods.base.HEAD_PATTERN`)."""

  def __init__(self, config: DistilBertConfig, num_labels: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs, remat: str = 'none',
               attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    self.config = config
    self.num_labels = num_labels
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.distilbert = DistilBertModel(config, **kw, remat=remat, attention=attention)
    self.pre_classifier = _linear(config, config.dim, config.dim, ('embed', 'embed'), **kw)
    self.classifier = _linear(config, config.dim, num_labels, ('embed', None), **kw)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    """Logits [B, num_labels] (compute dtype)."""
    hidden, _ = self.distilbert(input_ids, attention_mask, rngs=rngs)
    x = jax.nn.relu(self.pre_classifier(hidden[:, 0]))
    return self.classifier(attention.dropout(self.config.seq_classif_dropout, x, rngs))


class DistilBertForTokenClassification(nnx.Module):
  """DistilBERT + dropout + linear `classifier` on every token; HF
  `DistilBertForTokenClassification`."""

  def __init__(self, config: DistilBertConfig, num_labels: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs, remat: str = 'none',
               attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    self.config = config
    self.num_labels = num_labels
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.distilbert = DistilBertModel(config, **kw, remat=remat, attention=attention)
    self.classifier = _linear(config, config.dim, num_labels, ('embed', None), **kw)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    """Per-token logits [B, S, num_labels] (compute dtype)."""
    hidden, _ = self.distilbert(input_ids, attention_mask, rngs=rngs)
    return self.classifier(attention.dropout(self.config.dropout, hidden, rngs))


class DistilBertForMultipleChoice(DistilBertForSequenceClassification):
  """HF `DistilBertForMultipleChoice`: the sequence classifier's head with one output, scoring
  each (prompt, choice) row of [B, C, T] inputs; logits [B, C]."""

  def __init__(self, config: DistilBertConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs, remat: str = 'none', attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    super().__init__(config, 1, dtype=dtype, param_dtype=param_dtype, rngs=rngs, remat=remat,
                     attention=attention)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    b, c, t = input_ids.shape
    mask = None if attention_mask is None else jnp.asarray(attention_mask).reshape(b * c, t)
    return super().__call__(jnp.asarray(input_ids).reshape(b * c, t), mask,
                            rngs=rngs).reshape(b, c)


class DistilBertForQuestionAnswering(nnx.Module):
  """HF `DistilBertForQuestionAnswering`: DistilBERT + dropout (`qa_dropout`) + a two-output
  `qa_outputs` on every token; returns (start logits, end logits), each [B, S]."""

  def __init__(self, config: DistilBertConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs, remat: str = 'none', attention: str = 'xla'):  # pylint: disable=redefined-outer-name
    self.config = config
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.distilbert = DistilBertModel(config, **kw, remat=remat, attention=attention)
    self.qa_outputs = _linear(config, config.dim, 2, ('embed', None), **kw)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *,
               rngs: nnx.Rngs | None = None):
    hidden, _ = self.distilbert(input_ids, attention_mask, rngs=rngs)
    logits = self.qa_outputs(attention.dropout(self.config.qa_dropout, hidden, rngs))
    return logits[..., 0], logits[..., 1]
