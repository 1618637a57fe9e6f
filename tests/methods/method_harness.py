"""The checks every fine-tuning method must pass, on the tiny BERT and tiny sentiment task.

`run_method` builds the experiment exactly as the trainer does (`train.build_experiment`), takes
a few jitted `train.make_train_step` steps and returns what the tests compare.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ftjax import sharding, train
from ftjax.methods import base as methods_base
from ftjax.models import registry
from tiny_assets import files_config

HIDDEN, INTERMEDIATE, LAYERS, LABELS = 32, 64, 2, 2
HEAD = HIDDEN * LABELS + LABELS


def _files_config(model_dir, files, *, data, method, steps, lr, max_length, batch_size, options):
  """A method on local train/validation files, one padded shape (one compilation)."""
  c = files_config(model_dir, files)
  c.method.name = method
  for key, value in options.items():
    c.method[method][key] = value
  c.data.name = data
  c.data.max_length = max_length
  c.data.bucket_boundaries = (max_length,)
  c.data.padding = "max_length"
  c.train.steps = steps
  c.train.batch_size = batch_size
  c.optimizer.lr = lr
  c.optimizer.schedule = "constant"
  return c


def tiny_config(model_dir, files, *, method, steps=6, lr=1e-2, **options):
  """The tiny BERT on tiny sentiment files (classification)."""
  c = _files_config(model_dir, files, data="files", method=method, steps=steps, lr=lr,
                    max_length=16, batch_size=16, options=options)
  c.eval.batch_size = 40
  return c


def tiny_llama_config(model_dir, files, *, method, steps=6, lr=1e-2, **options):
  """The tiny Llama (`tiny_assets.make_tiny_llama`) on tiny chat data (causal LM), unpacked."""
  c = _files_config(model_dir, files, data="chat_files", method=method, steps=steps, lr=lr,
                    max_length=24, batch_size=8, options=options)
  c.model.task = "causal_lm"
  c.eval.batch_size = 8
  c.eval.metric = "loss"
  c.eval.mode = "min"
  return c


def names(tree) -> set[str]:
  return {methods_base.keypath_string(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def flat(tree) -> dict[str, np.ndarray]:
  return {methods_base.keypath_string(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@dataclasses.dataclass
class Run:
  exp: train.Experiment
  initial: train.TrainState
  final: train.TrainState
  batch: dict
  loss_before: float
  loss_after: float
  metrics: dict  # the last step's


def batch_loss(exp, state, batch) -> float:
  model = train.model_from_state(exp, state)
  return float(exp.task.train_loss(model, jax.tree.map(jnp.asarray, batch), None)[0])


def run_method(cfg, steps=None) -> Run:
  """Takes `steps` train steps on one fixed batch (memorising it must lower its loss)."""
  exp = train.build_experiment(cfg)
  initial = jax.tree.map(np.asarray, exp.state)  # host copies: the step donates its input
  it = exp.dataset.train_iterator(cfg.train.batch_size, seed=0, shard_index=0, shard_count=1)
  batch = next(it)
  before = batch_loss(exp, exp.state, batch)
  step = jax.jit(train.make_train_step(exp.graphdef, exp.tx, exp.schedule, exp.task),
                 donate_argnums=0)
  state = exp.state
  device_batch = sharding.put_batch(batch, sharding.batch_sharding(exp.mesh))
  for _ in range(steps or cfg.train.steps):
    state, metrics = step(state, device_batch)
  after = batch_loss(exp, state, batch)
  return Run(exp, initial, state, batch, before, after, jax.device_get(metrics))


def logits(model, batch):
  return np.asarray(model(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]),
                          jnp.asarray(batch["token_type_ids"])))


def base_logits(run: Run, batch) -> np.ndarray:
  """The untouched pretrained model (same seed, so the same fresh head) on `batch`."""
  cfg = run.exp.cfg
  model, _ = registry.build_model(run.exp.model_path, task="classification", num_labels=LABELS,
                                  rngs=nnx.Rngs(params=cfg.seed))
  return logits(model, batch)


def check_common(run: Run, *, expected_trainable: int, own: str, identity_atol: float | None):
  """Identity at step 0, frozen bit-identical, every trainable param moved, optimizer state
  only for trainable params, trainable count, and the loss goes down."""
  exp = run.exp
  if identity_atol is not None:
    model0 = train.model_from_state(exp, jax.tree.map(jnp.asarray, run.initial))
    np.testing.assert_allclose(logits(model0, run.batch), base_logits(run, run.batch),
                               atol=identity_atol, rtol=0)

  assert exp.param_counts["trainable"] == expected_trainable, exp.param_counts
  own_regex = re.compile(own)
  head_regex = re.compile(methods_base.HEAD_PATTERN)
  for name in names(run.initial.params):
    assert own_regex.search(name) or head_regex.search(name), name

  frozen_before, frozen_after = flat(run.initial.frozen), flat(run.final.frozen)
  assert frozen_before.keys() == frozen_after.keys()
  for name, value in frozen_before.items():
    np.testing.assert_array_equal(value, frozen_after[name], err_msg=name)
  params_before, params_after = flat(run.initial.params), flat(run.final.params)
  for name, value in params_before.items():
    assert not np.array_equal(value, params_after[name]), f"{name} did not move"

  moments = [x for x in jax.tree.leaves(run.final.opt_state) if x.ndim > 0]
  assert sum(x.size for x in moments) == 2 * expected_trainable

  assert run.loss_after < run.loss_before, (run.loss_before, run.loss_after)


def check_merge(run: Run, method, tmp_path, atol=1e-5):
  """Merging gives a plain model with the same logits that `registry.save_hf` exports."""
  model = train.model_from_state(run.exp, run.final)
  expected = logits(model, run.batch)
  merged = method.merge(model)
  assert merged is not None
  assert all(type(v) is nnx.Param  # pylint: disable=unidiomatic-typecheck
             for _, v in nnx.to_flat_state(nnx.state(merged, nnx.Param)))
  np.testing.assert_allclose(logits(merged, run.batch), expected, atol=atol, rtol=0)
  # The unmerged model is left as it was.
  np.testing.assert_array_equal(logits(model, run.batch), expected)
  out = registry.save_hf(merged, tmp_path / "merged")
  reloaded, fresh = registry.build_model(out, task="classification", rngs=nnx.Rngs(0))
  assert not fresh
  np.testing.assert_allclose(logits(reloaded, run.batch), expected, atol=atol, rtol=0)
  return merged
