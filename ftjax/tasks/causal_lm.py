"""Supervised fine-tuning (objective `sft`) of a causal LM: next-token loss on chat data's
assistant tokens, or on every token of plain-text documents (`data.name = "text_files"`).

Batches come from `ftjax.data.chat` or `ftjax.data.text` (see `ftjax.data.packing` for the
layout): the loss at position t predicts `targets[t]` and counts only where `loss_mask[t]` is 1
(a target of the same segment: an assistant token, or any token of a text window). The loss is the token-weighted mean over the batch, so a
long reply weighs more than a short one, the same whether conversations are packed or not.

Eval steps return sums (loss, tokens, correct tokens); `finalize` divides once per split.

`logits_chunk` (config `model.logits_chunk`) is an option of the loss, not of the model:
`with_logits_chunk(n)` is this task with `train_loss` / `eval_sums` bound to it.
"""

from __future__ import annotations

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np

MODEL_TASK = "causal_lm"
uses_reference = False
HEADLINE_METRICS = ("loss", "perplexity", "token_accuracy")
METRICS = {"loss": "min", "perplexity": "min", "token_accuracy": "max"}  # eval.metric -> mode


def configure(cfg):
  """This objective with the loss over chunks of `model.logits_chunk` positions (0: all)."""
  return with_logits_chunk(cfg.model.get("logits_chunk", 0))


def load_data(data_cfg, tokenizer, *, seed: int):
  # pylint: disable=g-import-not-at-top  (a run imports only the pipeline it reads)
  from ftjax.data import text
  if data_cfg.name in text.NAMES:
    return text.load_text_data(data_cfg, tokenizer, seed=seed)
  from ftjax.data.chat import load_chat_data
  return load_chat_data(data_cfg, tokenizer, seed=seed)


def model_kwargs(dataset) -> dict:
  del dataset
  return {}


def batch_counts(local_batch) -> tuple[int, int]:
  """Sequences (segments) with at least one loss token, and real (non-padding) tokens."""
  segment_ids = np.asarray(local_batch["segment_ids"], np.int64)
  has_loss = np.asarray(local_batch["loss_mask"]) > 0
  rows = np.nonzero(has_loss)[0]
  keys = rows * (int(segment_ids.max(initial=0)) + 1) + segment_ids[has_loss]
  return int(np.unique(keys).size), int(np.asarray(local_batch["attention_mask"]).sum())


def logits(model, batch, rngs=None, *, return_hidden=False):
  """The model's fp32 logits [B, T, V] on the batch (final hidden states with `return_hidden`)."""
  kw = {"return_hidden": True} if return_hidden else {}  # models without the option still work
  return model(batch["input_ids"], batch["attention_mask"], positions=batch["positions"],
               segment_ids=batch["segment_ids"], rngs=rngs, **kw)


def model_token_losses(model, batch, rngs=None, *, logits_chunk: int = 0):
  """`token_losses` of the model on the batch, in chunks of `logits_chunk` positions when
  that is not 0."""
  if not logits_chunk:
    return token_losses(logits(model, batch, rngs), batch["targets"])
  hidden = logits(model, batch, rngs, return_hidden=True)
  return chunked_token_losses(hidden, batch["targets"], model.lm_logits, logits_chunk)


def chunked_token_losses(hidden, targets, lm_logits, chunk: int):
  """`token_losses(lm_logits(hidden), targets)` with only [B, chunk, V] fp32 logits live at a
  time: a `lax.map` over chunks of `chunk` sequence positions (every row in each chunk, so a
  batch sharded over rows stays so), each under `jax.checkpoint`, so the backward pass
  recomputes a chunk's logits instead of keeping them (MaxText's and Liger's chunked
  cross-entropy). [B, T, V] fp32 logits are 3.2 GB at 16 x 1024 x 49k; chunks of 128 positions
  hold 0.4 GB. Costs one more LM-head matmul per step (the recomputation).
  """
  b, t, h = hidden.shape
  n = -(-t // chunk)
  pad = n * chunk - t  # padded positions get target 0 and are cut off below
  xs = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, h).swapaxes(0, 1)
  ys = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n, chunk).swapaxes(0, 1)
  one_chunk = jax.checkpoint(lambda xy: token_losses(lm_logits(xy[0]), xy[1]))
  losses, correct = jax.lax.map(one_chunk, (xs, ys))  # each [n, B, chunk]
  unchunk = lambda z: z.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]
  return unchunk(losses), unchunk(correct)


def token_losses(out, targets):
  """Per-token cross-entropy and correctness, computed in float32. Shapes [B, T].

  This materialises the [B, T, V] logits in float32 (B*T*V*4 bytes: 0.8 GB at 16 x 256 x 49k);
  `chunked_token_losses` bounds that.
  """
  out = out.astype(jnp.float32)
  log_z = jax.nn.logsumexp(out, axis=-1)
  target_logit = jnp.take_along_axis(out, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  # Correct when the target's logit is the largest: a max (which logsumexp already reduces)
  # instead of an argmax pass over [B, T, V]. A tie for the top counts as correct.
  correct = target_logit >= out.max(axis=-1)
  return log_z - target_logit, correct.astype(jnp.float32)


def train_loss(model, batch, rngs, *, logits_chunk: int = 0):
  """Mean cross-entropy over loss tokens, plus token accuracy for the progress bar.

  `aux["loss_weight"]` is the number of loss tokens the mean is over, so gradient accumulation
  weights microbatches exactly (the trainer pops it from the logged metrics). `logits_chunk`:
  see `model_token_losses`.
  """
  losses, correct = model_token_losses(model, batch, rngs, logits_chunk=logits_chunk)
  weights = batch["loss_mask"].astype(jnp.float32)
  denominator = jnp.maximum(weights.sum(), 1.0)
  # `where`, not a product: a non-finite logit at a masked position must not poison the sum.
  loss = jnp.where(weights > 0, losses * weights, 0.0).sum() / denominator
  return loss, {"token_accuracy": (correct * weights).sum() / denominator,
                "loss_weight": weights.sum()}


def eval_sums(model, batch, dataset, *, logits_chunk: int = 0):
  """Summed loss, loss-token count and correctly predicted loss tokens of one batch."""
  del dataset
  losses, correct = model_token_losses(model, batch, logits_chunk=logits_chunk)
  weights = batch["loss_mask"].astype(jnp.float32)
  return {
      "loss_sum": jnp.where(weights > 0, losses * weights, 0.0).sum(),
      "tokens": weights.sum(),
      "correct": (correct * weights).sum(),
  }


def finalize(sums) -> dict:
  """Loss per token, perplexity = exp(loss), token accuracy and the token count."""
  tokens = float(sums["tokens"])
  denominator = max(tokens, 1.0)
  loss = float(sums["loss_sum"]) / denominator
  return {
      "loss": loss,
      "perplexity": math.exp(min(loss, 700.0)),  # Capped: exp overflows a double past ~709.
      "token_accuracy": float(sums["correct"]) / denominator,
      "num_tokens": int(round(tokens)),
  }


class _WithLogitsChunk:
  """This task (the module) with its loss over chunks of `logits_chunk` positions."""

  def __init__(self, logits_chunk: int):
    self.logits_chunk = logits_chunk

  def __getattr__(self, name):  # everything else is the module's own
    return getattr(sys.modules[__name__], name)

  def train_loss(self, model, batch, rngs):
    return train_loss(model, batch, rngs, logits_chunk=self.logits_chunk)

  def eval_sums(self, model, batch, dataset):
    return eval_sums(model, batch, dataset, logits_chunk=self.logits_chunk)


def with_logits_chunk(logits_chunk: int):
  """The task whose `train_loss` / `eval_sums` take `logits_chunk` (config
  `model.logits_chunk`; 0 = the whole [B, T, V] logits at once, this module itself)."""
  return _WithLogitsChunk(logits_chunk) if logits_chunk else sys.modules[__name__]
