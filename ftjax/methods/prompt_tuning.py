"""Prompt tuning (Lester et al. 2021): trainable virtual-token embeddings before the input.

`num_virtual_tokens` vectors come before the input, as PEFT's `PromptTuningConfig` puts them:
- BERT family: prepended to the word embeddings (positions 0..n-1, token type 0, always
  attended), so the [CLS] pooler reads the first virtual token.
- Decoders (Llama family, GPT-2): the virtual tokens run first, at positions 0..n-1, and the
  real tokens follow at n, n+1, ... attending to them (`prompt_layers.PrefilledDecoder`: the
  virtual tokens' keys and values start the KV cache). The model returns logits for the real
  tokens only, so causal-LM losses never see the virtual ones; generation works as is.
  Packing (`data.packing`) is refused.
The model itself is frozen. Not mergeable; exported in PEFT's format (`prompt_embeddings`).

Options (`config.method.prompt_tuning.*`):
  num_virtual_tokens: how many virtual tokens.
  init_text: '' = initialise from the embeddings of randomly drawn vocabulary tokens; else
    from the tokens of this text (PEFT's TEXT init: tokenised with special tokens, repeated or
    cut to `num_virtual_tokens`). Needs `tokenizer`.
  tokenizer: a tokenizer source (path, pypi:..., hf:...) for `init_text`; usually the model's.
  train_head: also train the task head in full.

Trainable parameters: num_virtual_tokens * hidden_size, plus the head (causal LMs have none).
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ftjax.errors import UserError
from ftjax.methods import lora_layers, prompt_layers
from ftjax.methods.base import HEAD_PATTERN, Method
from ftjax.methods.lora import trainable_with_head
from ftjax.methods.registry import register
from ftjax.models import bert
from ftjax.weights import peft_io

_EMBED_ATTRS = ("cfg", "word_embeddings", "position_embeddings", "token_type_embeddings",
                "LayerNorm", "position_offset")


def find_embeddings(model, method: str):
  found = [(p, m) for p, m in nnx.iter_modules(model) if type(m) is bert.BertEmbeddings]  # pylint: disable=unidiomatic-typecheck
  if len(found) != 1:
    raise UserError(f"method '{method}' supports BERT-family encoders and decoders with a KV "
                    f"cache ({type(model).__name__} has no single BertEmbeddings)")
  return found[0]


class PromptEmbeddings(nnx.Module):
  """BERT embeddings with trainable virtual tokens prepended; same paths plus `prompt_embeddings`."""

  def __init__(self, embeddings: bert.BertEmbeddings, prompt: jax.Array):
    for name in _EMBED_ATTRS:
      setattr(self, name, getattr(embeddings, name))
    self.prompt_embeddings = lora_layers.AdapterParam(prompt)

  def __call__(self, input_ids, token_type_ids, rngs=None):
    words = self.word_embeddings(input_ids)
    b = words.shape[0]
    n, h = self.prompt_embeddings[...].shape
    prompt = jnp.broadcast_to(self.prompt_embeddings[...].astype(words.dtype)[None], (b, n, h))
    types = jnp.concatenate([jnp.zeros((b, n), jnp.int32), jnp.asarray(token_type_ids, jnp.int32)],
                            axis=1)
    return bert.BertEmbeddings.__call__(self, None, types, rngs,
                                        inputs_embeds=jnp.concatenate([prompt, words], axis=1))


class PromptEmbed(nnx.Module):
  """A decoder's `nnx.Embed` (its `embedding` at the same path, which a tied LM head reads) that
  maps ids vocab, vocab + 1, ... to the trainable virtual tokens `prompt_embeddings`."""

  def __init__(self, embed: nnx.Embed, prompt: jax.Array):
    prompt_layers.adopt(self, embed)
    self.prompt_embeddings = lora_layers.AdapterParam(prompt)

  def __call__(self, input_ids):
    vocab, n = self.num_embeddings, self.prompt_embeddings[...].shape[0]
    words = nnx.Embed.__call__(self, jnp.minimum(input_ids, vocab - 1))
    prompt = jnp.take(self.prompt_embeddings[...], jnp.clip(input_ids - vocab, 0, n - 1), axis=0)
    return jnp.where((input_ids >= vocab)[..., None], prompt.astype(words.dtype), words)


class PromptTunedDecoder(prompt_layers.PrefilledDecoder):
  """A decoder whose virtual tokens (ids vocab.. through `PromptEmbed`) run before the input."""

  def __init__(self, model, embed: PromptEmbed):
    super().__init__(model, embed.prompt_embeddings[...].shape[0])
    self.vocab_size = embed.num_embeddings

  def prefill(self, cache, rngs):
    b = cache.lengths.shape[0]
    n = self.num_virtual_tokens
    ids = jnp.broadcast_to(self.vocab_size + jnp.arange(n, dtype=jnp.int32), (b, n))
    _, cache = self.wrapped_class.__call__(self, ids, cache=cache, rngs=rngs, return_hidden=True)
    return cache


def init_token_ids(options, vocab_size: int, key):
  n = options["num_virtual_tokens"]
  if not options["init_text"]:
    return jax.random.randint(key, (n,), 0, vocab_size)  # traceable: built under jit
  if not options["tokenizer"]:
    raise UserError("config key 'method.prompt_tuning.tokenizer' must name a tokenizer source "
                    "(usually model.checkpoint) when 'method.prompt_tuning.init_text' is set")
  from ftjax import sources  # pylint: disable=g-import-not-at-top
  from ftjax.data.tokenization import load_tokenizer  # pylint: disable=g-import-not-at-top
  ids = load_tokenizer(sources.resolve(options["tokenizer"]))(options["init_text"])["input_ids"]
  if not ids:
    raise UserError(f"config key 'method.prompt_tuning.init_text' {options['init_text']!r} gives "
                    f"no tokens with the tokenizer of '{options['tokenizer']}'")
  return np.resize(np.asarray(ids, np.int32), n)  # repeats or cuts, like PEFT


@register
class PromptTuning(Method):
  name = "prompt_tuning"
  defaults = {"num_virtual_tokens": 20, "init_text": "", "tokenizer": "", "train_head": True}

  def apply(self, model, *, rngs):
    n = self.options["num_virtual_tokens"]
    if n <= 0:
      raise UserError(f"config key 'method.prompt_tuning.num_virtual_tokens' must be > 0, got {n}")
    if prompt_layers.is_decoder(model):
      path, embed = prompt_layers.find_token_embedding(model, self.name)
      table = embed.embedding[...]
      prompt = PromptEmbed(embed, table[init_token_ids(self.options, table.shape[0],
                                                       rngs.params())])
      lora_layers.replace_module(model, path, prompt)
      return PromptTunedDecoder(model, prompt)
    path, embeddings = find_embeddings(model, self.name)
    table = embeddings.word_embeddings.embedding[...]
    ids = init_token_ids(self.options, table.shape[0], rngs.params())
    lora_layers.replace_module(model, path, PromptEmbeddings(embeddings, table[ids]))
    return model

  def check_config(self, cfg):
    prompt_layers.refuse_packing(self.name, cfg)

  def trainable(self):
    return trainable_with_head(lora_layers.AdapterParam, self.options["train_head"])

  def merge(self, model):
    return None

  def export_peft(self, model, out_dir, *, base_path: str):
    """Writes a PEFT prompt-tuning adapter (`prompt_embeddings` [n, hidden] + the head)."""
    embeddings = next(m for _, m in nnx.iter_modules(model)
                      if isinstance(m, (PromptEmbeddings, PromptEmbed)))
    cfg = embeddings.cfg if isinstance(embeddings, PromptEmbeddings) else model.config
    prompt = np.asarray(jax.device_get(embeddings.prompt_embeddings[...]), np.float32)
    return peft_io.export_prompt_learning(
        model, out_dir, base_path=base_path, peft_type="PROMPT_TUNING", prompt_embeddings=prompt,
        head_pattern=HEAD_PATTERN,
        extra=dict(num_virtual_tokens=prompt.shape[0], token_dim=prompt.shape[1],
                   num_attention_heads=prompt_layers.config_value(cfg, "num_attention_heads",
                                                                  "n_head"),
                   num_layers=prompt_layers.config_value(cfg, "num_hidden_layers", "n_layer"),
                   prompt_tuning_init="RANDOM", prompt_tuning_init_text=None,
                   tokenizer_name_or_path=None, tokenizer_kwargs=None))
