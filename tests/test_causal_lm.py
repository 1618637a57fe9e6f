"""Tests for the causal-LM task: loss vs a numpy reference, packing invariance, eval sums."""

import math

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftjax import tasks
from ftjax.data import packing
from ftjax.tasks import causal_lm

VOCAB = 23


class TinyLM(nnx.Module):
  """A one-layer causal LM with the Llama model's call signature; attends within segments."""

  def __init__(self, *, vocab=VOCAB, dim=16, max_positions=64, rngs):
    self.embed_tokens = nnx.Embed(vocab, dim, rngs=rngs)
    self.embed_positions = nnx.Embed(max_positions, dim, rngs=rngs)
    self.q_proj = nnx.Linear(dim, dim, rngs=rngs)
    self.k_proj = nnx.Linear(dim, dim, rngs=rngs)
    self.v_proj = nnx.Linear(dim, dim, rngs=rngs)
    self.lm_head = nnx.Linear(dim, vocab, rngs=rngs)

  def __call__(self, input_ids, attention_mask, *, positions, segment_ids, rngs=None):
    del rngs
    x = self.embed_tokens(input_ids) + self.embed_positions(positions)
    q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
    scores = jnp.einsum("bqd,bkd->bqk", q, k) / math.sqrt(x.shape[-1])
    t = jnp.arange(input_ids.shape[1])
    mask = ((t[:, None] >= t[None, :])[None]
            & (segment_ids[:, :, None] == segment_ids[:, None, :])
            & (attention_mask[:, None, :] > 0))
    scores = jnp.where(mask, scores, -1e9)  # Finite: all-padding queries stay NaN-free.
    return self.lm_head(x + jnp.einsum("bqk,bkd->bqd", jax.nn.softmax(scores, -1), v))


@pytest.fixture(scope="module")
def model():
  return TinyLM(rngs=nnx.Rngs(0))


def _examples(lengths, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for n in lengths:
    mask = np.zeros(n, np.int32)
    mask[n // 2:] = 1  # The second half plays the assistant reply.
    out.append((rng.integers(1, VOCAB, size=n).astype(np.int32), mask))
  return out


def _reference_token_losses(logits, targets):
  """float64 numpy log-softmax cross-entropy and argmax hits."""
  logits = np.asarray(logits, np.float64)
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  losses = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  return losses, (logits.argmax(-1) == targets)


def test_registered():
  assert "sft" in tasks.names() and tasks.get("sft") is causal_lm
  assert tasks.get("causal_lm") is causal_lm  # a head names its default objective
  assert causal_lm.MODEL_TASK == "causal_lm"
  assert causal_lm.HEADLINE_METRICS == ("loss", "perplexity", "token_accuracy")
  assert set(causal_lm.HEADLINE_METRICS) <= set(causal_lm.METRICS)
  assert causal_lm.model_kwargs(object()) == {}


def test_train_loss_and_eval_sums_match_numpy(model):
  examples = _examples([9, 5, 12, 3, 7])
  rows = packing.first_fit([len(e[0]) for e in examples], 16)
  batch = packing.collate_rows([[examples[i] for i in r] for r in rows], length=16, pad_id=0,
                               batch_size=len(rows) + 1)  # Plus a padding row.
  logits = causal_lm.logits(model, batch)
  losses, hits = _reference_token_losses(logits, batch["targets"])
  w = batch["loss_mask"].astype(np.float64)
  want_loss = (losses * w).sum() / w.sum()

  loss, aux = causal_lm.train_loss(model, batch, nnx.Rngs(0))
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
  np.testing.assert_allclose(float(aux["token_accuracy"]), (hits * w).sum() / w.sum(), rtol=1e-6)
  assert float(aux["loss_weight"]) == w.sum()  # Token-weighted: exact gradient accumulation.

  sums = jax.device_get(causal_lm.eval_sums(model, batch, None))
  np.testing.assert_allclose(float(sums["loss_sum"]), (losses * w).sum(), rtol=1e-5)
  assert float(sums["tokens"]) == w.sum() == sum(e[1][1:].sum() for e in examples)
  metrics = causal_lm.finalize(sums)
  np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["perplexity"], math.exp(want_loss), rtol=1e-5)
  np.testing.assert_allclose(metrics["token_accuracy"], (hits * w).sum() / w.sum(), rtol=1e-6)
  assert metrics["num_tokens"] == int(w.sum())


def test_packed_equals_unpacked_per_example(model):
  examples = _examples([9, 5, 12, 3, 7, 16, 2], seed=1)
  rows = packing.pack(examples, 16, seed=0)
  packed = packing.collate_rows([rows[r] for r in range(len(rows))], length=16, pad_id=0)
  unpacked = packing.collate_rows([[e] for e in examples], length=16, pad_id=0)
  assert packed["input_ids"].shape[0] < unpacked["input_ids"].shape[0]

  def per_example(batch, layout):
    losses, _ = causal_lm.token_losses(causal_lm.logits(model, batch), batch["targets"])
    losses = np.asarray(losses) * batch["loss_mask"]
    return {i: losses[b][batch["segment_ids"][b] == s].sum() for i, (b, s) in layout.items()}

  packed_layout = {i: (r, s + 1) for r, row in enumerate(rows.rows) for s, i in enumerate(row)}
  got = per_example(packed, packed_layout)
  want = per_example(unpacked, {i: (i, 1) for i in range(len(examples))})
  for i in range(len(examples)):
    np.testing.assert_allclose(got[i], want[i], rtol=1e-5, atol=1e-6)
  # Same tokens, same mean loss: packing changes nothing but the speed.
  np.testing.assert_allclose(float(causal_lm.train_loss(model, packed, None)[0]),
                             float(causal_lm.train_loss(model, unpacked, None)[0]), rtol=1e-5)


def test_batch_counts():
  examples = _examples([4, 5, 3])
  examples.append((np.array([1, 2], np.int32), np.array([1, 0], np.int32)))  # No loss token.
  batch = packing.collate_rows([[examples[0], examples[1]], [examples[2], examples[3]]],
                               length=10, pad_id=0, batch_size=3)
  assert causal_lm.batch_counts(batch) == (3, 4 + 5 + 3 + 2)


def test_jitted_grad_step(model):
  """The task inside a pure jitted step, as the trainer runs it (split/merge + grad)."""
  examples = _examples([6, 8, 4])
  batch = packing.collate_rows([[e] for e in examples], length=8, pad_id=0, batch_size=4)
  graphdef, params = nnx.split(model, nnx.Param)

  @jax.jit
  def step(params, batch):
    def loss_fn(p):
      return causal_lm.train_loss(nnx.merge(graphdef, p), batch, nnx.Rngs(dropout=0))
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  (loss, aux), grads = step(params, batch)
  assert np.isfinite(float(loss)) and 0 <= float(aux["token_accuracy"]) <= 1
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_finalize_empty_and_huge():
  assert causal_lm.finalize({"loss_sum": 0.0, "tokens": 0.0, "correct": 0.0})["num_tokens"] == 0
  assert math.isfinite(causal_lm.finalize(
      {"loss_sum": 1e6, "tokens": 1.0, "correct": 0.0})["perplexity"])


def test_packed_equals_unpacked_with_llama():
  """The same invariance with ftjax's Llama (SmolLM2-shaped, tiny, random)."""
  llama = pytest.importorskip("ftjax.models.llama")
  transformers = pytest.importorskip("transformers")
  hf = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                                num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=1, max_position_embeddings=64,
                                tie_word_embeddings=True)
  model = llama.LlamaForCausalLM(llama.LlamaConfig.from_hf(hf.to_dict()), rngs=nnx.Rngs(0))
  examples = _examples([9, 5, 12, 3, 7, 16, 2], seed=2)
  rows = packing.pack(examples, 16, seed=0)
  packed = packing.collate_rows([rows[r] for r in range(len(rows))], length=16, pad_id=0,
                                batch_size=len(rows) + 1)  # Plus an all-padding row.
  unpacked = packing.collate_rows([[e] for e in examples], length=16, pad_id=0)
  got = jax.device_get(causal_lm.eval_sums(model, packed, None))
  want = jax.device_get(causal_lm.eval_sums(model, unpacked, None))
  assert float(got["tokens"]) == float(want["tokens"])
  np.testing.assert_allclose(float(got["loss_sum"]), float(want["loss_sum"]), rtol=1e-5)
  assert float(got["correct"]) == float(want["correct"])
  assert np.isfinite(float(causal_lm.train_loss(model, packed, None)[0]))


def test_loss_weight_makes_microbatches_exact(model):
  """Weighting microbatch losses by `loss_weight` recovers the big batch's loss exactly."""
  examples = _examples([9, 5, 12, 3, 7, 16, 2, 11], seed=3)
  big = packing.collate_rows([[e] for e in examples], length=16, pad_id=0)
  want = float(causal_lm.train_loss(model, big, None)[0])
  total = weight = 0.0
  for half in (slice(0, 4), slice(4, 8)):
    loss, aux = causal_lm.train_loss(model, {k: v[half] for k, v in big.items()}, None)
    total += float(loss) * float(aux["loss_weight"])
    weight += float(aux["loss_weight"])
  np.testing.assert_allclose(total / weight, want, rtol=1e-5)
