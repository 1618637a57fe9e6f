"""Optax optimizers from `config.optimizer`: schedules, parameter groups, masks, clipping.

`optimizer.name`: `adamw`, `adafactor`, `lion`, `sgd` (with `optimizer.momentum`) or `muon`
(`optax.contrib.muon`). Weight decay is decoupled and scaled by the learning rate in all of them,
and never applied to biases, norm scales or other vectors (`decay_mask`).

Parameter groups (`optax.multi_transform` over path labels), each its own optimizer with the same
warmup + decay shape at its own peak:
  base     everything below, at `optimizer.lr`;
  head     the task head (`HEAD_PATTERN`: classifier, score, lm_head) at `optimizer.head_lr`;
  lora_b   LoRA B factors at `optimizer.lora_plus_ratio` x lr (LoRA+, Hayou et al. 2024);
  adamw    with `muon` only: what Muon does not orthogonalise, at lr (see `muon_dimensions`).
Each group's learning rate is a hyperparameter in its own state (`optax.inject_hyperparams`), so
`learning_rates(opt_state)` reports the rate the optimizer applied at its own step count, which a
skipped non-finite update (see ftjax/train/steps.py) does not advance.

`optimizer.layer_decay` (layer-wise lr decay, ELECTRA-style) scales the final updates of layer i
of L by decay^(L - i), embeddings by decay^(L + 1), the head and the rest by 1: a fixed factor on
each group's rate, per row of a scan-stacked `[L, ...]` array. L is one more than the highest
layer index among the trainable parameters (a stacked array's leading size).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ftjax.errors import UserError
from ftjax.methods.base import HEAD_PATTERN as _TASK_HEADS, keypath_string
from ftjax.models import layer_stack

OPTIMIZERS = ("adamw", "adafactor", "lion", "sgd", "muon")
HEAD_PATTERN = rf"{_TASK_HEADS}|(^|\.)lm_head(\.|$)"  # a causal LM's (untied) output layer too
EMBED_PATTERN = r"(^|\.)(embeddings|embed_tokens|wte|wpe)(\.|$)"
LORA_B_PATTERN = r"(^|\.)lora_b$"
LORA_PATTERN = r"(^|\.)lora_[ab]$"
# Muon's updates have the RMS of AdamW's at this value (Liu et al. 2025), so one lr and weight
# decay serve the orthogonalised matrices and the AdamW rest alike.
MUON_RMS = 0.2
_LAYER_INDEX = re.compile(r"^(.*?)\.(\d+)(\.|$)")


def warmup_steps(opt_cfg, total_steps: int) -> int:
  if opt_cfg.warmup_steps:
    return min(int(opt_cfg.warmup_steps), total_steps)
  return int(round(opt_cfg.warmup_ratio * total_steps))


def make_schedule(opt_cfg, total_steps: int, peak: float | None = None) -> optax.Schedule:
  """Linear warmup from 0 to `peak` (default `lr`), then cosine, linear or constant to
  `end_lr_ratio * peak`."""
  peak = opt_cfg.lr if peak is None else peak
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


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def _per_variable(fn, params):
  """A tree like `params` holding `fn(name, leaf)` at each variable's value (or leaf's) place."""
  def one(path, leaf):
    if not jax.tree.leaves(leaf):  # masked out by multi_transform (a MaskedNode, or in a variable)
      return leaf
    value = fn(keypath_string(path), leaf)
    return jax.tree.map(lambda _: value, leaf) if _is_variable(leaf) else value

  return jax.tree_util.tree_map_with_path(
      one, params, is_leaf=lambda x: _is_variable(x) or isinstance(x, optax.MaskedNode))


def decay_mask(params):
  """True for weight matrices; biases, norm scales and other vectors get no weight decay.

  A stacked layer axis (`model.scan_layers`) does not count: a stack of vectors is no matrix.
  """
  def decays(name, leaf):
    name = name.lower()
    return layer_stack.per_layer_ndim(leaf) >= 2 and "norm" not in name and not name.endswith("bias")

  return _per_variable(decays, params)


def _muon_dims(name: str, leaf):
  """How Muon sees a parameter: None (AdamW) or the reduction/output axes of its matrices.

  Muon orthogonalises hidden layers' weight matrices only, as its authors do: vectors (biases,
  norm scales), embeddings and the task head go to AdamW. A scan-stacked `[L, in, out]` kernel is
  L matrices: axis 0 is a batch axis that optax.contrib.muon orthogonalises per layer. LoRA
  factors go to AdamW too: a rank-r factor is not a layer's weight, so orthogonalising it has no
  spectral-norm meaning for the layer's update B·dA + dB·A (and LoRA+ is stated for Adam).
  """
  per_layer = layer_stack.per_layer_ndim(leaf)
  if (per_layer != 2 or not name.endswith("kernel") or re.search(HEAD_PATTERN, name)
      or re.search(EMBED_PATTERN, name) or re.search(LORA_PATTERN, name)):
    return None
  extra = len(leaf.shape) - per_layer
  return optax.contrib.MuonDimensionNumbers(reduction_axis=extra, output_axis=extra + 1)


def muon_dimensions(params):
  return _per_variable(_muon_dims, params)


def _inner(name: str, opt_cfg):
  """`learning_rate -> GradientTransformation` for one group (a one-argument factory, so that
  `inject_hyperparams` injects the learning rate only)."""
  wd = opt_cfg.weight_decay

  def factory(learning_rate):
    if name == "adamw":
      return optax.adamw(learning_rate, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                         weight_decay=wd, mask=decay_mask)
    if name == "adafactor":  # its own decay is not lr-scaled: scale it here, like AdamW's
      return optax.adafactor(learning_rate, weight_decay_rate=wd * learning_rate if wd else None,
                             weight_decay_mask=decay_mask)
    if name == "lion":
      return optax.lion(learning_rate, b1=opt_cfg.b1, b2=opt_cfg.b2, weight_decay=wd, mask=decay_mask)
    if name == "sgd":
      return optax.chain(optax.add_decayed_weights(wd * learning_rate, decay_mask),
                         optax.sgd(learning_rate, momentum=opt_cfg.momentum or None))
    # Every leaf of the muon group is a matrix (see `_labels`), so muon's own AdamW gets none.
    return optax.contrib.muon(learning_rate, beta=opt_cfg.momentum, weight_decay=wd,
                              consistent_rms=MUON_RMS, muon_weight_dimension_numbers=muon_dimensions)

  return factory


def groups(opt_cfg) -> dict[str, float]:
  """Group label -> peak learning rate."""
  out = {"base": opt_cfg.lr}
  if opt_cfg.head_lr > 0:
    out["head"] = opt_cfg.head_lr
  if opt_cfg.lora_plus_ratio > 0:
    out["lora_b"] = opt_cfg.lora_plus_ratio * opt_cfg.lr
  if opt_cfg.name == "muon":
    out["adamw"] = opt_cfg.lr
  return out


_GROUP_KEYS = {"head": ("optimizer.head_lr", "a task head (classifier, score or lm_head)"),
               "lora_b": ("optimizer.lora_plus_ratio", "a LoRA B factor (method lora, qlora, dora)")}


def _labels(opt_cfg):
  names = groups(opt_cfg)

  def label(name: str, leaf) -> str:
    if "head" in names and re.search(HEAD_PATTERN, name):
      return "head"
    if "lora_b" in names and re.search(LORA_B_PATTERN, name):
      return "lora_b"
    if "adamw" in names and _muon_dims(name, leaf) is None:
      return "adamw"
    return "base"

  def labels(params):
    tree = _per_variable(label, params)
    used = set(jax.tree.leaves(tree))
    for group, (key, what) in _GROUP_KEYS.items():
      if group in names and group not in used:
        raise UserError(f"config key '{key}' is set, but no trainable parameter is {what}")
    return tree

  return labels


def _layer_factors(params, decay: float):
  """Per-leaf update factors of layer-wise lr decay (see the module docstring)."""
  depth: dict[str, int] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_variable)[0]:
    name = keypath_string(path)
    if layer_stack.per_layer_ndim(leaf) < len(leaf.shape):
      depth[name] = leaf.shape[0]
    elif (m := _LAYER_INDEX.match(name)):
      depth[m.group(1)] = max(depth.get(m.group(1), 0), int(m.group(2)) + 1)
  if not depth:
    raise UserError("config key 'optimizer.layer_decay' is set, but no trainable parameter is in "
                    "a layer list (model.layers.{i}, encoder.layer.{i}, h.{i} or a scanned stack)")
  total = max(depth.values())

  def factor(name: str, leaf):
    if re.search(HEAD_PATTERN, name):
      return 1.0
    if layer_stack.per_layer_ndim(leaf) < len(leaf.shape):
      rows = decay ** (leaf.shape[0] - np.arange(leaf.shape[0], dtype=np.float64))
      return rows.reshape((-1,) + (1,) * (len(leaf.shape) - 1)).astype(np.float32)
    if (m := _LAYER_INDEX.match(name)):
      return decay ** (depth[m.group(1)] - int(m.group(2)))
    return decay ** (total + 1) if re.search(EMBED_PATTERN, name) else 1.0

  return _per_variable(factor, params)


def scale_by_layer_decay(decay: float) -> optax.GradientTransformation:
  """Multiplies each update by its layer's factor; no state (the factors follow from paths)."""
  def update(updates, state, params=None):
    del params
    factors = _layer_factors(updates, decay)
    return jax.tree.map(lambda u, f: (u * f).astype(u.dtype), updates, factors), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(opt_cfg, total_steps: int) -> optax.GradientTransformation:
  """Clipping, then the groups' optimizers (state only for what it is given), then layer decay."""
  transforms = {
      group: optax.inject_hyperparams(
          _inner("adamw" if group != "base" and opt_cfg.name == "muon" else opt_cfg.name, opt_cfg),
          hyperparam_dtype=jnp.float32)(learning_rate=make_schedule(opt_cfg, total_steps, peak))
      for group, peak in groups(opt_cfg).items()}
  parts = []
  if opt_cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt_cfg.clip_norm))
  parts.append(optax.multi_transform(transforms, _labels(opt_cfg)))
  if opt_cfg.layer_decay != 1.0:
    parts.append(scale_by_layer_decay(opt_cfg.layer_decay))
  return optax.chain(*parts)


def learning_rates(opt_state) -> dict[str, jax.Array]:
  """The learning rate each group's optimizer applied last: {"lr": base, "lr/head": ...}."""
  found = {}
  for state in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.transforms.PartitionState)):
    if isinstance(state, optax.transforms.PartitionState):
      for group, masked in state.inner_states.items():
        found["lr" if group == "base" else f"lr/{group}"] = masked.inner_state.hyperparams["learning_rate"]
  return found
