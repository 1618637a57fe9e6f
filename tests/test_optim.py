import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ftjax import optim
from ftjax.config import base_config


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
