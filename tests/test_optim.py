import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ftjax import optim
from ftjax.config import base_config
from ftjax.errors import UserError


def opt_cfg(**kw):
  c = base_config().optimizer
  for k, v in kw.items():
    c[k] = v
  return c


def test_warmup_then_cosine_reaches_end():
  schedule = optim.make_schedule(opt_cfg(lr=1.0, warmup_steps=10, schedule="cosine", end_lr_ratio=0.1), 110)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(60)) == pytest.approx(0.55, abs=1e-3)  # cosine midpoint between 1 and 0.1
  assert float(schedule(110)) == pytest.approx(0.1)


def test_linear_schedule_and_warmup_ratio():
  schedule = optim.make_schedule(opt_cfg(lr=2.0, warmup_ratio=0.25, schedule="linear"), 100)
  assert optim.warmup_steps(opt_cfg(warmup_ratio=0.25), 100) == 25
  assert float(schedule(25)) == pytest.approx(2.0)
  assert float(schedule(100)) == pytest.approx(0.0, abs=1e-6)


class Tiny(nnx.Module):
  def __init__(self, rngs):
    self.dense = nnx.Linear(3, 4, rngs=rngs)
    self.LayerNorm = nnx.LayerNorm(4, rngs=rngs)


def test_no_weight_decay_on_biases_and_norms():
  params = nnx.state(Tiny(nnx.Rngs(0)), nnx.Param)
  mask = optim.decay_mask(params)
  flat = {jax.tree_util.keystr(p, simple=True, separator="."): v
          for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert flat == {"LayerNorm.bias.value": False, "LayerNorm.scale.value": False,
                  "dense.bias.value": False, "dense.kernel.value": True}


def test_decay_applies_only_to_kernels_with_zero_gradients():
  params = nnx.state(Tiny(nnx.Rngs(0)), nnx.Param)
  tx = optim.make_optimizer(opt_cfg(lr=0.1, weight_decay=0.5, schedule="constant"), 10)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["dense"]["kernel"][...], params["dense"]["kernel"][...] * (1 - 0.05), rtol=1e-6)
  np.testing.assert_array_equal(new["dense"]["bias"][...], params["dense"]["bias"][...])
  np.testing.assert_array_equal(new["LayerNorm"]["scale"][...], params["LayerNorm"]["scale"][...])


def test_clipping_bounds_the_gradient_adam_sees():
  params = {"w": jnp.zeros((2, 2))}
  tx = optim.make_optimizer(opt_cfg(lr=1.0, weight_decay=0.0, clip_norm=1.0, b1=0.9), 10)
  grads = {"w": jnp.full((2, 2), 100.0)}  # global norm 200
  _, state = tx.update(grads, tx.init(params), params)
  adam_state = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
  mu = next(s.mu for s in adam_state if isinstance(s, optax.ScaleByAdamState))
  # First moment = (1 - b1) * clipped gradient, clipped to global norm 1 -> 0.5 per entry.
  np.testing.assert_allclose(mu["w"], np.full((2, 2), 0.1 * 0.5), rtol=1e-5)


class Stack(nnx.Module):
  """Embeddings, a layer list, a LayerNorm, a classifier and a frozen part: every group's kind."""

  def __init__(self, rngs, layers=3):
    self.embeddings = nnx.Embed(5, 4, rngs=rngs)
    self.layers = nnx.List([nnx.Linear(4, 4, rngs=rngs) for _ in range(layers)])
    self.LayerNorm = nnx.LayerNorm(4, rngs=rngs)
    self.classifier = nnx.Linear(4, 2, rngs=rngs)
    self.frozen = nnx.Linear(4, 4, rngs=rngs)


def trainable_split(model):
  return nnx.split(model, nnx.All(nnx.Param, nnx.Not(nnx.PathContains("frozen"))), ...)


def quadratic(params):
  return sum(jnp.sum((x - 0.5) ** 2) for x in jax.tree.leaves(params))


def names(tree):
  return {jax.tree_util.keystr(p, simple=True, separator=".") for p, _ in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_each_optimizer_descends_and_keeps_state_for_trainable_params_only(name):
  _, params, frozen = trainable_split(Stack(nnx.Rngs(0)))
  tx = optim.make_optimizer(opt_cfg(name=name, lr=0.02, schedule="constant", weight_decay=0.0), 20)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(quadratic)(params), state, params)
    return optax.apply_updates(params, updates), state

  start = float(quadratic(params))
  for _ in range(10):
    params, state = step(params, state)
  assert float(quadratic(params)) < 0.9 * start
  # Optimizer state lives at trainable parameters' paths only, and no more of it than a few
  # copies of them (Adam's two moments; Adafactor's factored rows and columns are less).
  state_arrays = [x for x in jax.tree.leaves(state) if x.ndim]
  assert not any("frozen" in n for n in names(state))
  assert sum(x.size for x in state_arrays) <= 2 * sum(x.size for x in jax.tree.leaves(params))
  assert state_arrays and len(frozen) == 1


def test_muon_orthogonalises_hidden_kernels_per_layer_and_leaves_the_rest_to_adamw():
  _, params, _ = trainable_split(Stack(nnx.Rngs(0)))
  cfg = opt_cfg(name="muon", lr=0.1, schedule="constant", weight_decay=0.0)
  labels = {n.removesuffix(".value"): v for n, v in zip(
      sorted(names(params)), [x for _, x in sorted(
          (jax.tree_util.keystr(p, simple=True, separator="."), v) for p, v in
          jax.tree_util.tree_flatten_with_path(optim._labels(cfg)(params))[0])])}
  assert {n for n, v in labels.items() if v == "base"} == {f"layers.{i}.kernel" for i in range(3)}
  assert labels["classifier.kernel"] == labels["embeddings.embedding"] == labels["layers.0.bias"] == "adamw"
  # A scan-stacked [L, in, out] kernel gets, per layer, the update its unstacked slices get.
  rng = np.random.default_rng(0)
  kernels = rng.normal(size=(3, 4, 6)).astype(np.float32)
  grads = rng.normal(size=(3, 4, 6)).astype(np.float32)
  stacked = {"layers": {"kernel": nnx.Param(jnp.asarray(kernels), out_sharding=("layers", None, None),
                                            eager_sharding=False)}}
  tx = optim.make_optimizer(cfg, 10)
  update = tx.update({"layers": {"kernel": nnx.Param(jnp.asarray(grads), out_sharding=(
      "layers", None, None), eager_sharding=False)}}, tx.init(stacked), stacked)[0]
  for i in range(3):
    one = {"layers": {"kernel": nnx.Param(jnp.asarray(kernels[i]))}}
    expected = tx.update({"layers": {"kernel": nnx.Param(jnp.asarray(grads[i]))}}, tx.init(one), one)[0]
    np.testing.assert_allclose(update["layers"]["kernel"][...][i], expected["layers"]["kernel"][...],
                               rtol=1e-5, atol=1e-6)
  # Orthogonalised: the update does not grow with the gradient, and its RMS is about AdamW's
  # (optim.MUON_RMS x lr; five Newton-Schulz steps leave the singular values near, not at, 1).
  big = tx.update({"layers": {"kernel": nnx.Param(jnp.asarray(100 * grads), out_sharding=(
      "layers", None, None), eager_sharding=False)}}, tx.init(stacked), stacked)[0]
  np.testing.assert_allclose(big["layers"]["kernel"][...], update["layers"]["kernel"][...], rtol=1e-4, atol=1e-6)
  rms = np.sqrt(np.mean(np.asarray(update["layers"]["kernel"][...]) ** 2, axis=(1, 2)))
  assert np.all((rms > 0.5 * 0.2 * 0.1) & (rms < 1.1 * 0.2 * 0.1)), rms


def lora_params():
  rng = np.random.default_rng(0)
  p = lambda *shape: nnx.Param(jnp.asarray(rng.normal(size=shape), jnp.float32))
  return nnx.State({"layers": {0: {"q": {"lora_a": p(4, 2), "lora_b": p(2, 4)}}},
                    "classifier": {"kernel": p(4, 2), "bias": p(2)}})


def test_group_learning_rates_follow_their_schedules_from_the_optimizer_state():
  cfg = opt_cfg(lr=1.0, warmup_steps=4, schedule="linear", head_lr=3.0, lora_plus_ratio=16.0)
  params = lora_params()
  tx = optim.make_optimizer(cfg, 8)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for count in range(3):
    _, state = tx.update(grads, state, params)
    lrs = {k: float(v) for k, v in optim.learning_rates(state).items()}
    warm = count / 4  # the rate applied at the optimizer's count before this update
    assert lrs == pytest.approx({"lr": warm, "lr/head": 3.0 * warm, "lr/lora_b": 16.0 * warm})


def test_a_group_without_parameters_is_an_error_naming_its_key():
  _, params, _ = trainable_split(Stack(nnx.Rngs(0)))
  with pytest.raises(UserError, match=r"'optimizer.lora_plus_ratio' is set, but no trainable parameter "
                                      r"is a LoRA B factor"):
    optim.make_optimizer(opt_cfg(lora_plus_ratio=16.0), 10).init(params)
  with pytest.raises(UserError, match=r"'optimizer.head_lr' is set, but no trainable parameter is a task head"):
    optim.make_optimizer(opt_cfg(head_lr=1e-3), 10).init({"layers": {0: {"kernel": jnp.ones((2, 2))}}})
  with pytest.raises(UserError, match=r"'optimizer.layer_decay' is set, but no trainable parameter is in "
                                      r"a layer list"):
    tx = optim.make_optimizer(opt_cfg(layer_decay=0.5), 10)
    tx.update(params["classifier"], tx.init(params["classifier"]), params["classifier"])


def test_layer_decay_factors_unstacked_and_scan_stacked():
  decay = 0.5
  _, params, _ = trainable_split(Stack(nnx.Rngs(0)))
  ones = jax.tree.map(jnp.ones_like, params)
  scaled, _ = optim.scale_by_layer_decay(decay).update(ones, optax.EmptyState())
  factor = lambda *keys: float(np.unique(np.asarray(functools.reduce(lambda t, k: t[k], keys, scaled)[...])).item())
  assert [factor("layers", i, "kernel") for i in range(3)] == [decay ** 3, decay ** 2, decay ** 1]
  assert factor("layers", 1, "bias") == decay ** 2
  assert factor("embeddings", "embedding") == decay ** 4
  assert factor("classifier", "kernel") == factor("LayerNorm", "scale") == 1.0
  stacked = {"model": {"layers": {"kernel": nnx.Param(jnp.ones((3, 4, 4)), out_sharding=(
      "layers", None, None), eager_sharding=False)}, "embed_tokens": {"embedding": nnx.Param(jnp.ones((5, 4)))}}}
  scaled, _ = optim.scale_by_layer_decay(decay).update(stacked, optax.EmptyState())
  np.testing.assert_array_equal(np.asarray(scaled["model"]["layers"]["kernel"][...])[:, 0, 0],
                                [decay ** 3, decay ** 2, decay ** 1])
  assert float(scaled["model"]["embed_tokens"]["embedding"][...][0, 0]) == decay ** 4


def test_logged_lr_is_the_optimizers_own_after_a_skipped_update():
  """Step 1's loss is NaN, so its update is dropped: at step 2 the optimizer has applied one
  update, and the step logs each group's rate at that count (not the schedule at step 2)."""
  from ftjax import train
  from ftjax.train.state import TrainState

  model = Stack(nnx.Rngs(0))
  graphdef, params, frozen = trainable_split(model)
  cfg = opt_cfg(lr=1.0, warmup_steps=10, schedule="linear", head_lr=2.0)
  tx = optim.make_optimizer(cfg, 20)
  schedule = optim.make_schedule(cfg, 20)

  def train_loss(model, batch, rngs):
    return batch["scale"] * quadratic(nnx.state(model.classifier)), {}

  step = jax.jit(train.make_train_step(graphdef, tx, schedule, types.SimpleNamespace(train_loss=train_loss)))
  zero = jnp.zeros((), jnp.int32)
  state = TrainState(step=zero, params=params, frozen=frozen, opt_state=tx.init(params),
                     rng=jax.random.key_data(jax.random.key(0)), nonfinite=zero, first_nonfinite=zero - 1)
  logged = []
  for scale in (1.0, np.nan, 1.0):
    state, metrics = step(state, {"scale": jnp.float32(scale)})
    logged.append({k: float(metrics[k]) for k in ("lr", "lr/head")})
  assert int(state.step) == 3 and int(state.nonfinite) == 1
  assert logged[2] == pytest.approx({"lr": float(schedule(1)), "lr/head": 2 * float(schedule(1))})
  assert float(schedule(1)) != pytest.approx(float(schedule(2)))


SHARDED_INIT = """
from flax import nnx
import jax
from ftjax import optim, sharding
from ftjax.config import base_config
model = nnx.Linear(64, 64, rngs=nnx.Rngs(0))
model.kernel.set_metadata(out_sharding=("embed", "mlp"), eager_sharding=False)
params = nnx.state(model, nnx.Param)
mesh = sharding.make_mesh((2, 2, 2))
shardings = sharding.variable_shardings(params, mesh, tuple(tuple(r) for r in base_config().mesh.rules))
for name in optim.OPTIMIZERS:
  cfg = base_config().optimizer
  cfg.name = name
  tx = optim.make_optimizer(cfg, 10)
  out = sharding.follow_params(jax.eval_shape(tx.init, params), params, shardings, mesh)
  jax.jit(tx.init, out_shardings=out)(sharding.put_global(params, shardings))
  print(name, "ok")
"""


def test_every_optimizers_state_shards_on_a_mesh():
  # Adafactor's factored moments are not of their parameter's shape: they must not take its sharding.
  import os
  import pathlib
  import subprocess
  import sys
  result = subprocess.run([sys.executable, "-c", SHARDED_INIT], capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).resolve().parents[1],
                          env=dict(os.environ, JAX_PLATFORMS="cpu",
                                   XLA_FLAGS="--xla_force_host_platform_device_count=8"))
  assert result.stdout.split() == [w for n in optim.OPTIMIZERS for w in (n, "ok")], result.stderr[-2000:]


def test_muon_with_groups_and_layer_decay_trains_a_scanned_tiny_bert(tiny_bert_dir, tiny_sentiment_files):
  # The real paths: BERT's scan-stacked encoder kernels go to Muon, the classifier to the head
  # group, embeddings and vectors to AdamW; every group's rate is logged.
  from ftjax import train
  from test_train import tiny_config
  cfg = tiny_config(tiny_bert_dir, tiny_sentiment_files)
  with cfg.unlocked():
    cfg.model.scan_layers = True
    cfg.optimizer.update(name="muon", head_lr=3e-3, layer_decay=0.5, schedule="constant")
  exp = train.build_experiment(cfg)
  labels = {optim.keypath_string(p): v for p, v in jax.tree_util.tree_flatten_with_path(
      optim._labels(cfg.optimizer)(exp.state.params))[0]}
  muon = {k for k, v in labels.items() if v == "base"}
  assert all(k.endswith("kernel") and "classifier" not in k for k in muon), muon  # + the pooler
  assert "bert.encoder.layer.attention.self_attn.query.kernel" in muon  # stacked [L, in, out]
  assert {v for k, v in labels.items() if "classifier" in k} == {"head"}
  assert {v for k, v in labels.items()
          if ("embeddings" in k or k.endswith("bias")) and "classifier" not in k} == {"adamw"}
  step = jax.jit(train.make_train_step(exp.graphdef, exp.tx, exp.schedule, exp.task))
  batch = next(exp.dataset.train_iterator(8, seed=0))
  state, metrics = step(exp.state, batch)
  assert {k: float(metrics[k]) for k in metrics if k.startswith("lr")} == pytest.approx(
      {"lr": 1e-3, "lr/head": 3e-3, "lr/adamw": 1e-3})
  assert np.isfinite(float(metrics["loss"])) and int(state.nonfinite) == 0
