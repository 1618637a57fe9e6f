"""LoRA / DoRA dropout: PEFT's `lora_B(lora_A(dropout(x)))`, in the train step only.

The mask comes from the train step's rngs (`methods.base.bind_train_rngs`), so it is fresh every
step, fixed by the seed and the step (resuming gives the same masks), and absent in eval,
generation, merge and export; the model holds no RNG state.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ftjax import methods, sharding, train
from ftjax.methods import base, lora_layers
from ftjax.models import registry
from method_harness import flat, logits, tiny_config

RATE = 0.5


def build(path, name, dropout):
  model, _ = registry.build_model(path, task="classification", num_labels=2, rngs=nnx.Rngs(0))
  method = methods.registry._METHODS[name](dict(methods.get(name).defaults, rank=4,
                                                dropout=dropout))
  model = method.apply(model, rngs=nnx.Rngs(1))
  # Move every trainable off its init: LoRA's B = 0 (and DoRA's m = ||W||) hide the branch.
  _, params, _ = nnx.split(model, method.trainable(), ...)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  nnx.update(model, jax.tree.unflatten(
      treedef, [x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]))
  return model


@pytest.mark.parametrize("dora", [False, True])
def test_one_layer_is_peft_semantics(dora):
  """Bound rngs: y = base(x) + s (drop(x) A) B; DoRA rescales drop(x) W' as PEFT's DoRA does."""
  linear = nnx.Linear(6, 5, rngs=nnx.Rngs(0))
  layer = lora_layers.LoRALinear(linear, rank=2, alpha=4.0, dora=dora, dropout=RATE,
                                 rngs=nnx.Rngs(1))
  layer.lora_b[...] = jax.random.normal(jax.random.key(3), layer.lora_b[...].shape)
  if dora:
    layer.magnitude[...] = layer.magnitude[...] * 1.5
  x = jax.random.normal(jax.random.key(4), (7, 6))
  eval_out = layer(x)
  dropped = nnx.Dropout(RATE)(x, rngs=nnx.Rngs(dropout=5))  # the stream's first draw
  layer.train_rngs = nnx.Rngs(dropout=5)
  train_out = layer(x)
  kernel, bias = linear.kernel[...], linear.bias[...]
  delta = layer.scale * layer.lora_a[...] @ layer.lora_b[...]
  if not dora:
    expected = x @ kernel + bias + dropped @ delta
  else:
    factor = layer.magnitude[...] / jnp.linalg.norm(kernel + delta, axis=0)
    expected = x @ kernel + bias + (factor - 1) * (dropped @ kernel) + factor * (dropped @ delta)
  np.testing.assert_allclose(train_out, expected, atol=1e-5, rtol=0)
  assert np.abs(np.asarray(train_out - eval_out)).max() > 1e-2
  layer.train_rngs = None
  np.testing.assert_array_equal(layer(x), eval_out)


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_train_only_fresh_masks_and_no_rng_state(tiny_bert_dir, name):
  with_dropout, without = build(tiny_bert_dir, name, RATE), build(tiny_bert_dir, name, 0.0)
  ids = jax.random.randint(jax.random.key(6), (4, 8), 5, with_dropout.config.vocab_size)
  batch = {"input_ids": ids, "attention_mask": jnp.ones_like(ids),
           "token_type_ids": jnp.zeros_like(ids)}
  # Eval (no rngs bound): exactly the model without dropout; nothing random in the state.
  np.testing.assert_array_equal(logits(with_dropout, batch), logits(without, batch))
  assert not any(isinstance(v, nnx.RngState)
                 for _, v in nnx.to_flat_state(nnx.state(with_dropout)))

  def train_logits(model, seed, bind=True):
    """As in the train step: rngs bound to the method's layers and passed to the model."""
    graphdef, state = nnx.split(model)
    model, rngs = nnx.merge(graphdef, state), nnx.Rngs(dropout=seed)
    if bind:
      base.bind_train_rngs(model, rngs)
    return np.asarray(model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                            rngs=rngs))

  first = train_logits(with_dropout, 0)
  assert np.abs(first - train_logits(without, 0)).max() > 1e-3
  np.testing.assert_array_equal(train_logits(with_dropout, 0), first)  # same key, same masks
  assert np.abs(train_logits(with_dropout, 1) - first).max() > 1e-3
  # Dropout 0 draws nothing: binding changes no mask of the model's own dropout, so the train
  # step is bit for bit what it was before LoRA dropout existed.
  np.testing.assert_array_equal(train_logits(without, 0), train_logits(without, 0, bind=False))


def test_train_step_masks_per_step_and_exact_replay(tiny_bert_dir, tiny_sentiment_files):
  """The jitted train step: each step its own mask; the same seed (or a restart from host
  copies, as a resume does) gives bit-identical params."""
  cfg = tiny_config(tiny_bert_dir, tiny_sentiment_files, method="lora", rank=4, dropout=RATE)
  exp = train.build_experiment(cfg)
  initial = jax.tree.map(np.asarray, exp.state)
  batch = next(exp.dataset.train_iterator(16, seed=0, shard_index=0, shard_count=1))
  batch = sharding.put_batch(batch, sharding.batch_sharding(exp.mesh))
  step = jax.jit(train.make_train_step(exp.graphdef, exp.tx, exp.schedule, exp.task))

  def run(state, steps):
    losses = []
    for _ in range(steps):
      state, metrics = step(state, batch)
      losses.append(float(metrics["loss"]))
    return state, losses

  start = jax.tree.map(jnp.asarray, initial)
  # Same params, different step: different masks, different losses.
  _, (loss_at_0,) = run(start, 1)
  _, (loss_at_1,) = run(start.replace(step=jnp.ones_like(start.step)), 1)
  assert loss_at_0 != loss_at_1
  final, losses = run(start, 4)
  assert len(set(losses)) == 4
  halfway, _ = run(jax.tree.map(jnp.asarray, initial), 2)
  resumed, _ = run(jax.tree.map(jnp.asarray, jax.tree.map(np.asarray, halfway)), 2)
  again = train.build_experiment(cfg)  # same seed from scratch
  replayed, _ = run(again.state, 4)
  for other in (resumed, replayed):
    for key, value in flat(final.params).items():
      np.testing.assert_array_equal(value, flat(other.params)[key], err_msg=key)
