"""Sentence embeddings from an encoder's last hidden states: pooling and normalisation.

The same operations as sentence-transformers' `Pooling` (`pooling_mode` mean / cls / max) and
`Normalize` modules, so a model trained here embeds like the sentence-transformers model built
from the same weights (`tests/test_embedding.py` checks all-MiniLM-L6-v2 within 1e-5).
"""

import jax.numpy as jnp

POOLINGS = ("mean", "cls", "max")


def pool(hidden, attention_mask, mode: str):
  """[B, S, H] hidden states and a [B, S] 0/1 mask -> [B, H] fp32 sentence embeddings.

  mean: the mean over real tokens (sentence-transformers clamps the count at 1e-9; a row always
  has at least its [CLS] token); cls: the first token; max: the maximum over real tokens.
  """
  hidden = hidden.astype(jnp.float32)
  mask = attention_mask.astype(jnp.float32)[..., None]
  if mode == "mean":
    return (hidden * mask).sum(1) / jnp.maximum(mask.sum(1), 1e-9)
  if mode == "cls":
    return hidden[:, 0]
  if mode == "max":
    return jnp.where(mask > 0, hidden, jnp.finfo(jnp.float32).min).max(1)
  raise ValueError(f"unknown pooling {mode!r}; known: {POOLINGS}")


def normalize(x, eps: float = 1e-12):
  """Rows scaled to unit L2 norm (torch's `F.normalize`: the norm clamped at eps)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)
