"""Sparse mixture-of-experts feed-forward blocks (Mixtral, Qwen3-MoE) in NNX.

A router (`gate`, a Linear hidden -> experts) scores each token; softmax in fp32, the top k
experts are kept and their weights renormalised to sum to 1 (Mixtral always, Qwen3-MoE when
`norm_topk_prob`). Each expert is a SwiGLU MLP; the experts' weights are stacked,
[experts, in, out], with the logical `expert` axis first, so the mesh rules can shard the
experts over a mesh axis.

Two computations:
  dropless (`capacity_factor` 0, the default, equal to transformers): the token-expert
    assignments are sorted by expert and each expert multiplies exactly its rows with
    `jax.lax.ragged_dot`; no token is dropped, whatever the routing.
  capacity (`capacity_factor` c > 0): each expert takes at most ceil(c * tokens * k / experts)
    assignments, earlier tokens first (GShard), into a dense [experts, capacity, hidden] buffer
    multiplied by batched einsums (static shapes that shard along the expert axis); the rest
    are dropped (their expert contributes nothing; the residual carries the token) and counted.

Padding rows are routed too (as transformers routes them) but never take a capacity slot and
are left out of the statistics. Each block returns `RouterStats` summed over its tokens; the
decoder adds them over its layers and `load_balancing_loss` turns them into the Switch
Transformer auxiliary loss exactly as transformers' `load_balancing_loss_func` computes it.
"""

import dataclasses
import math
from typing import NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp

from ftjax.errors import UserError

# `nnx.Intermediate` name under which the decoder records its layers' summed `RouterStats`; the
# train step pops it and adds the auxiliary loss (`ftjax.train.steps`).
STATS = 'router_stats'


@dataclasses.dataclass(frozen=True)
class MoeOptions:
  """How a mixture-of-experts model routes and what it adds to the training loss (config
  `model.moe`; not architecture, so not in config.json).

  capacity_factor: 0 = dropless; c > 0 = at most ceil(c * tokens * k / experts) assignments per
    expert and layer, the rest dropped and counted.
  router_aux_loss_coef: the load-balancing loss' weight in the training loss; None = the
    checkpoint's `router_aux_loss_coef`.
  """
  capacity_factor: float = 0.0
  router_aux_loss_coef: float | None = None

  def __post_init__(self):
    if self.capacity_factor < 0:
      raise UserError(f"config key 'model.moe.capacity_factor' must be >= 0 (0 = dropless), "
                      f'got {self.capacity_factor}')
    if self.router_aux_loss_coef is not None and self.router_aux_loss_coef < 0:
      raise UserError(f"config key 'model.moe.router_aux_loss_coef' must be >= 0, "
                      f'got {self.router_aux_loss_coef}')


class RouterStats(NamedTuple):
  """A block's routing over its real (non-padding) tokens, summable over layers.

  assigned: [experts] top-k assignments per expert; probs: [experts] summed router
  probabilities; tokens: real tokens routed; dropped: assignments over capacity.
  """
  assigned: jax.Array
  probs: jax.Array
  tokens: jax.Array
  dropped: jax.Array


def load_balancing_loss(stats: RouterStats) -> jax.Array:
  """experts * sum_e f_e * P_e over all layers' tokens pooled (transformers'
  `load_balancing_loss_func`): f_e the share of assignments to expert e (summing to k), P_e its
  mean router probability."""
  tokens = jnp.maximum(stats.tokens, 1.0)
  return stats.assigned.shape[-1] * jnp.sum((stats.assigned / tokens) * (stats.probs / tokens))


def split_layer_outputs(outputs):
  """A decoder's per-layer (kv, stats) outputs (`layer_stack.run_layers`: a list, or one stacked
  pytree from a scan) -> (the per-layer kvs as the layers gave them, the sparse layers'
  `RouterStats` summed, or None for a dense model)."""
  if isinstance(outputs, list):
    kvs = [kv for kv, _ in outputs]
    stats = [s for _, s in outputs if s is not None]
    return kvs, (jax.tree.map(lambda *a: sum(a), *stats) if stats else None)
  kvs, stats = outputs
  return kvs, (None if stats is None else jax.tree.map(lambda a: a.sum(axis=0), stats))


def record(module: nnx.Module, stats: RouterStats, coef: float, top_k: int) -> None:
  """Records, as an `nnx.Intermediate` named `STATS` on `module`, what the train step adds:
  `aux_loss` (coef x the load-balancing loss, into the loss), and the metrics
  `load_balancing_loss` and `dropped_fraction` (assignments over capacity / all). Read back with
  `nnx.capture(..., nnx.Intermediate)` around the forward and `recorded_terms`."""
  balance = load_balancing_loss(stats)
  module.sow(nnx.Intermediate, STATS, {
      'aux_loss': coef * balance, 'load_balancing_loss': balance,
      'dropped_fraction': stats.dropped / jnp.maximum(stats.tokens * top_k, 1.0)})


def recorded_terms(recorded) -> dict[str, jax.Array]:
  """What `record` left in `recorded` (the `nnx.Intermediate` state `nnx.capture` returns around
  a train step's loss), each term's mean over the forward passes that recorded it ({} for a
  dense model)."""
  calls = [call for path, var in nnx.to_flat_state(recorded) if path[-1] == STATS
           for call in var.get_value()]
  if not calls:
    return {}
  return {k: sum(c[k] for c in calls) / len(calls) for k in calls[0]}


class Experts(nnx.Module):
  """`num_experts` SwiGLU MLPs, down(act(gate(x)) * up(x)), with stacked [experts, in, out]
  kernels named as the family's checkpoints name each expert's Linears (Mixtral: w1, w3, w2;
  Qwen3-MoE: gate_proj, up_proj, down_proj). Not Linears: methods that wrap Linears refuse
  them by name (`stacked_linears`)."""

  def __init__(self, num_experts: int, hidden: int, intermediate: int, *, names, act,
               init_std: float, dtype, param_dtype, rngs: nnx.Rngs):
    self.names = tuple(names)  # (gate, up, down)
    self.act = act
    self.dtype = dtype
    init = nnx.initializers.normal(init_std)
    into = ((hidden, intermediate), ('expert', 'embed', 'mlp'))
    out_of = ((intermediate, hidden), ('expert', 'mlp', 'embed'))
    for name, ((d_in, d_out), axes) in zip(names, (into, into, out_of)):
      setattr(self, name, nnx.Param(init(rngs.params(), (num_experts, d_in, d_out), param_dtype),
                                    out_sharding=axes, eager_sharding=False))

  @property
  def stacked_linears(self) -> tuple[str, ...]:
    return self.names

  def kernels(self):
    return tuple(getattr(self, n)[...].astype(self.dtype) for n in self.names)


class SparseMoeBlock(nnx.Module):
  """Router `gate` + `experts`; HF `MixtralSparseMoeBlock` / `Qwen3MoeSparseMoeBlock`.

  Args:
    hidden, intermediate: model width and each expert's hidden width.
    num_experts, top_k: experts and experts per token.
    normalize_top_k: renormalise the top-k weights to sum to 1.
    names: the experts' (gate, up, down) parameter names.
    act: the experts' activation.
    jitter_noise: Mixtral's `router_jitter_noise`: in training, the block's input is scaled by
      uniform(1 - j, 1 + j) noise before routing and the experts.
    capacity_factor: see `MoeOptions`.
  """

  def __init__(self, hidden: int, intermediate: int, *, num_experts: int, top_k: int,
               normalize_top_k: bool, names, act, jitter_noise: float = 0.0,
               capacity_factor: float = 0.0, init_std: float, dtype, param_dtype,
               rngs: nnx.Rngs):
    if not 0 < top_k <= num_experts:
      raise UserError(f'num_experts_per_tok {top_k} must be in [1, {num_experts}] '
                      f'(num_experts)')
    self.num_experts, self.top_k = num_experts, top_k
    self.normalize_top_k = normalize_top_k
    self.jitter_noise = jitter_noise
    self.capacity_factor = capacity_factor
    self.dtype = dtype
    self.gate = nnx.Linear(
        hidden, num_experts, use_bias=False, dtype=dtype, param_dtype=param_dtype,
        kernel_init=nnx.initializers.normal(init_std),
        kernel_metadata={'out_sharding': ('embed', None), 'eager_sharding': False}, rngs=rngs)
    self.experts = Experts(num_experts, hidden, intermediate, names=names, act=act,
                           init_std=init_std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x, real, rngs=None):
    """x: [N, H] rows; real: bool [N] (False: padding). Returns ([N, H], RouterStats)."""
    if rngs is not None and self.jitter_noise > 0:
      x = x * jax.random.uniform(rngs.dropout(), x.shape, x.dtype, 1.0 - self.jitter_noise,
                                 1.0 + self.jitter_noise)
    n, k, e = x.shape[0], self.top_k, self.num_experts
    probs = jax.nn.softmax(self.gate(x).astype(jnp.float32), axis=-1)  # [N, E]
    weights, chosen = jax.lax.top_k(probs, k)  # [N, K]
    if self.normalize_top_k:
      weights = weights / weights.sum(axis=-1, keepdims=True)
    # Assignments sorted by expert (stable: token order within each expert).
    flat = chosen.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    expert = flat[order]
    token = order // k
    rows = x[token]
    real_sorted = real[token]
    sizes = jnp.bincount(flat, length=e).astype(jnp.int32)
    if self.capacity_factor:
      capacity = max(1, math.ceil(self.capacity_factor * n * k / e))
      out, kept = self._with_capacity(rows, expert, real_sorted, capacity)
    else:
      out, kept = self._dropless(rows, sizes), None
    # Weighted, back in token order, summed over each token's k experts.
    out = out.astype(jnp.float32) * weights.reshape(-1)[order][:, None]
    if kept is not None:
      out = jnp.where(kept[:, None], out, 0.0)
    inverse = jnp.zeros_like(order).at[order].set(jnp.arange(n * k, dtype=order.dtype))
    y = out[inverse].reshape(n, k, -1).sum(axis=1).astype(self.dtype)
    mask = real.astype(jnp.float32)
    stats = RouterStats(
        assigned=jnp.zeros((e,), jnp.float32).at[flat].add(jnp.repeat(mask, k)),
        probs=(probs * mask[:, None]).sum(axis=0), tokens=mask.sum(),
        dropped=(jnp.zeros((), jnp.float32) if kept is None
                 else (real_sorted & ~kept).sum().astype(jnp.float32)))
    return y, stats

  def _dropless(self, rows, sizes):
    gate, up, down = self.experts.kernels()
    rows = rows.astype(self.dtype)
    h = self.experts.act(jax.lax.ragged_dot(rows, gate, sizes)) * jax.lax.ragged_dot(
        rows, up, sizes)
    return jax.lax.ragged_dot(h, down, sizes)

  def _with_capacity(self, rows, expert, real_sorted, capacity):
    """Experts on at most `capacity` real assignments each; returns (outputs in sorted order,
    which assignments were kept)."""
    e = self.num_experts
    real_counts = jnp.zeros((e,), jnp.int32).at[expert].add(real_sorted.astype(jnp.int32))
    real_before = jnp.cumsum(real_counts) - real_counts  # real assignments of earlier experts
    rank = jnp.cumsum(real_sorted.astype(jnp.int32)) - 1 - real_before[expert]
    kept = real_sorted & (rank < capacity)
    slot = jnp.where(kept, expert * capacity + rank, e * capacity)  # dropped: a spare row
    buffer = jnp.zeros((e * capacity + 1, rows.shape[-1]), self.dtype).at[slot].set(
        rows.astype(self.dtype))
    gate, up, down = self.experts.kernels()
    inputs = buffer[:-1].reshape(e, capacity, -1)
    h = self.experts.act(jnp.einsum('ech,ehi->eci', inputs, gate)) * jnp.einsum(
        'ech,ehi->eci', inputs, up)
    out = jnp.einsum('eci,eih->ech', h, down).reshape(e * capacity, -1)
    out = jnp.concatenate([out, jnp.zeros((1, out.shape[-1]), out.dtype)])
    return out[slot], kept
