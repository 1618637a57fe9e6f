"""Optax optimizer and learning-rate schedule from `config.optimizer`."""

from __future__ import annotations

import jax
import optax
from flax import nnx

from ftjax.methods.base import keypath_string
from ftjax.models import layer_stack


def warmup_steps(opt_cfg, total_steps: int) -> int:
  if opt_cfg.warmup_steps:
    return min(int(opt_cfg.warmup_steps), total_steps)
  return int(round(opt_cfg.warmup_ratio * total_steps))


def make_schedule(opt_cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0, then cosine, linear or constant to `end_lr_ratio * lr`."""
  peak = opt_cfg.lr
  end = peak * opt_cfg.end_lr_ratio
  warmup = warmup_steps(opt_cfg, total_steps)
  decay = max(total_steps - warmup, 1)
  if opt_cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, decay, alpha=opt_cfg.end_lr_ratio)
  elif opt_cfg.schedule == "linear":
    after = optax.linear_schedule(peak, end, decay)
  else:
    after = optax.constant_schedule(peak)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def decay_mask(params):
  """True for weight matrices; biases, norm scales and other vectors get no weight decay.

  A stacked layer axis (`model.scan_layers`) does not count: a stack of vectors is no matrix.
  """
  def decays(path, leaf):
    name = keypath_string(path).lower()
    return layer_stack.per_layer_ndim(leaf) >= 2 and "norm" not in name and not name.endswith("bias")

  def mask(path, leaf):
    if isinstance(leaf, nnx.Variable):  # one flag per variable, at its value's place
      return jax.tree.map(lambda _: decays(path, leaf), leaf)
    return decays(path, leaf)

  return jax.tree_util.tree_map_with_path(mask, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def make_optimizer(opt_cfg, total_steps: int) -> optax.GradientTransformation:
  """AdamW with warmup + decay and global-norm clipping; state only for what it is given."""
  parts = []
  if opt_cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt_cfg.clip_norm))
  parts.append(optax.adamw(
      make_schedule(opt_cfg, total_steps), b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
      weight_decay=opt_cfg.weight_decay, mask=decay_mask))
  return optax.chain(*parts)
