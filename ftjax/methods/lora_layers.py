"""Shared machinery for methods that wrap `nnx.Linear` layers (LoRA, DoRA, IA3, QLoRA, adapters).

Wrapping is generic: a method names its targets by a regex over *module* paths
(`bert.encoder.layer.0.attention.self_attn.query`, `model.layers.3.self_attn.q_proj`), so it
works on any model whose projections are `nnx.Linear` at Hugging Face-named paths.

A wrapper adopts the wrapped Linear's variables (`kernel`, `bias`) at the *same* paths and adds
its own next to them (`query.lora_a`, `query.lora_b`). The base weights therefore keep their
checkpoint paths (so `method.freeze` regexes and weight tables still apply), and merging is just
putting a plain `nnx.Linear` holding the merged kernel back at the path.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from ftjax.errors import UserError
from ftjax.methods.base import HEAD_PATTERN, TrainRngs, path_string


class AdapterParam(nnx.Param):
  """A parameter that a method adds to the model (IA3 vectors, adapters, prompts)."""


# LoRA's own parameters are `nnx.LoRAParam` (a `nnx.Param` subclass), as in flax and tunix.
LoRAParam = nnx.LoRAParam

# Attributes of `nnx.Linear` a wrapper copies so that `nnx.Linear.__call__(wrapper, x)` runs
# the exact base computation (bit-identical outputs before training).
_LINEAR_ATTRS = ("kernel", "bias", "in_features", "out_features", "use_bias", "dtype",
                 "param_dtype", "precision", "dot_general", "promote_dtype",
                 "preferred_element_type")


def find_linears(model: nnx.Module, pattern: str, *, option: str,
                 exclude_head: bool = True) -> list[tuple[tuple[Any, ...], nnx.Linear]]:
  """The `nnx.Linear` modules whose dotted path matches `pattern` (re.search).

  The task head (`HEAD_PATTERN`) is never a target: it trains in full or not at all.
  Raises a UserError naming `option` (a config key) when nothing matches.
  """
  try:
    regex = re.compile(pattern)
  except re.error as e:
    raise UserError(f"config key '{option}' is not a valid regex: {e}") from None
  head = re.compile(HEAD_PATTERN)
  found = []
  for path, module in nnx.iter_modules(model):
    name = path_string(path)
    for stacked in getattr(module, "stacked_linears", ()):  # a mixture of experts' experts
      if regex.search(f"{name}.{stacked}"):
        raise UserError(
            f"config key '{option}' = '{pattern}' matches '{name}.{stacked}', the stacked "
            "[experts, in, out] weights of a mixture of experts, which this method cannot wrap; "
            "target the attention projections or the router ('gate') instead")
    if type(module) is not nnx.Linear or not regex.search(name):  # pylint: disable=unidiomatic-typecheck
      continue
    if exclude_head and head.search(name):
      continue
    if name.endswith("lm_head"):
      # Causal LM heads are read as `lm_head.kernel` (tied or not), not called, so a wrapper
      # there would be silently bypassed.
      raise UserError(f"config key '{option}' = '{pattern}' matches '{name}', which cannot be "
                      "wrapped (the model reads its kernel directly)")
    found.append((tuple(path), module))
  if not found:
    linears = [path_string(p) for p, m in nnx.iter_modules(model) if isinstance(m, nnx.Linear)]
    raise UserError(f"config key '{option}' = '{pattern}' matches no nnx.Linear module; "
                    f"e.g. {', '.join(linears[:4])}")
  return found


def replace_module(model: nnx.Module, path: tuple[Any, ...], new: nnx.Module) -> None:
  """Puts `new` at `path` inside `model` (attribute or list index), in place."""
  parent = model
  for part in path[:-1]:
    parent = parent[part] if isinstance(part, int) else getattr(parent, part)
  if isinstance(path[-1], int):
    parent[path[-1]] = new
  else:
    setattr(parent, path[-1], new)


def iter_wrappers(model: nnx.Module, cls) -> Iterator[tuple[tuple[Any, ...], Any]]:
  for path, module in list(nnx.iter_modules(model)):
    if isinstance(module, cls):
      yield tuple(path), module


class WrappedLinear(nnx.Module):
  """Base of Linear wrappers: holds the Linear's variables and configuration at its paths."""

  def __init__(self, linear: nnx.Linear):
    for name in _LINEAR_ATTRS:
      setattr(self, name, getattr(linear, name))

  def base(self, x):
    """The wrapped Linear's own output, computed exactly as `nnx.Linear` does."""
    return nnx.Linear.__call__(self, x)

  def base_kernel(self) -> jax.Array:
    """The base kernel [in, out] (QLoRA overrides this to dequantize)."""
    return self.kernel[...]

  def kernel_metadata(self) -> dict:
    return self.kernel.get_metadata()

  def to_linear(self, kernel: jax.Array, bias: jax.Array | None = None) -> nnx.Linear:
    """A plain `nnx.Linear` like the wrapped one, holding `kernel` (and `bias`, else its own)."""
    linear = nnx.eval_shape(lambda: nnx.Linear(
        self.in_features, self.out_features, use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, precision=self.precision, dot_general=self.dot_general,
        promote_dtype=self.promote_dtype, preferred_element_type=self.preferred_element_type,
        rngs=nnx.Rngs(0)))
    # Keep the variables' metadata (logical sharding axes); only the values change.
    linear.kernel = nnx.Param(kernel.astype(self.param_dtype), **self.kernel_metadata())
    if self.use_bias:
      value = self.bias[...] if bias is None else bias.astype(self.param_dtype)
      linear.bias = nnx.Param(value, **self.bias.get_metadata())
    return linear


def axis_metadata(kernel: nnx.Variable, *axes_of_kernel: int | None) -> dict:
  """Logical sharding metadata for a new variable from the kernel's axes (None = unsharded).

  E.g. LoRA's A [in, r] takes the kernel's input axis and B [r, out] its output axis, so a
  sharding config that splits the kernel splits the adapter the same way.
  """
  axes = kernel.get_metadata().get("out_sharding")
  if not axes:
    return {}
  return {"out_sharding": tuple(None if i is None else axes[i] for i in axes_of_kernel),
          "eager_sharding": False}


def kaiming_uniform_a(key, shape, dtype=jnp.float32):
  """PEFT's LoRA A init: kaiming_uniform(a=sqrt(5)) on [r, in], i.e. U(-1/sqrt(in), 1/sqrt(in))."""
  bound = 1.0 / math.sqrt(shape[0])  # our A is [in, r]
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def lora_scale(rank: int, alpha: float, rslora: bool) -> float:
  """alpha / r, or alpha / sqrt(r) for rank-stabilised LoRA (Kalajdzievski 2023)."""
  return alpha / math.sqrt(rank) if rslora else alpha / rank


class LoRALinear(WrappedLinear, TrainRngs):
  """y = x W + b + scale * (x A) B, with A [in, r] random and B [r, out] zero (identity at init).

  With `dora=True` it is DoRA (Liu et al. 2024, as PEFT defines it): the adapted weight
  W' = W + scale * A B is renormalised per output feature and rescaled by a learned magnitude m,
  y = (m / ||W'||) * (x W') + b, with ||W'|| the norm over the input axis, treated as a
  constant in the backward pass (PEFT's and the paper's choice, section 4.3).

  `dropout` > 0 drops the adapter branch's input in the train step only (PEFT's
  `lora_B(lora_A(dropout(x)))`; for DoRA also the x W' it rescales, as PEFT's DoRA layer does in
  training). The mask comes from the train step's rngs (`base.TrainRngs`): a fresh one every step
  and every layer, none in eval, generation, merge or export.
  """

  def __init__(self, linear: nnx.Linear, *, rank: int, alpha: float, rslora: bool = False,
               dora: bool = False, dropout: float = 0.0, rngs: nnx.Rngs):
    super().__init__(linear)
    if rank <= 0:
      raise UserError(f"LoRA rank must be > 0, got {rank}")
    self.rank = rank
    self.scale = lora_scale(rank, alpha, rslora)
    self.dropout = float(dropout)
    dtype = self.param_dtype
    self.lora_a = LoRAParam(kaiming_uniform_a(rngs.params(), (self.in_features, rank), dtype),
                            **axis_metadata(self.kernel, 0, None))
    self.lora_b = LoRAParam(jnp.zeros((rank, self.out_features), dtype),
                            **axis_metadata(self.kernel, None, 1))
    self.dora = dora
    if dora:
      # m starts at ||W|| so the layer is the identity at step 0.
      self.magnitude = LoRAParam(self._column_norm(self.base_kernel()).astype(dtype),
                                 **axis_metadata(self.kernel, 1))

  @staticmethod
  def _column_norm(kernel):
    """||W||_2 over the input axis, one value per output feature ([out])."""
    return jnp.linalg.norm(kernel.astype(jnp.float32), axis=0)

  def delta(self) -> jax.Array:
    """scale * A B, the low-rank update of the kernel [in, out]."""
    return self.scale * (self.lora_a[...] @ self.lora_b[...])

  def _adapter_out(self, x):
    a, b = self.lora_a[...], self.lora_b[...]
    dtype = self.dtype or jnp.result_type(x, a)
    return (x.astype(dtype) @ a.astype(dtype)) @ b.astype(dtype) * self.scale

  def _adapter_input(self, x):
    """x, dropped out when the train step has bound its rngs (`base.bind_train_rngs`)."""
    if not self.dropout or self.train_rngs is None:
      return x
    return nnx.Dropout(self.dropout)(x, rngs=self.train_rngs)

  def __call__(self, x):
    y = self.base(x)
    lora_x = self._adapter_input(x)
    if not self.dora:
      return y + self._adapter_out(lora_x).astype(y.dtype)
    kernel = self.base_kernel()
    norm = jax.lax.stop_gradient(self._column_norm(kernel + self.delta()))
    factor = (self.magnitude[...] / norm).astype(y.dtype)
    x_w = self.base(lora_x) if lora_x is not x else y
    x_w = x_w - self.bias[...] if self.use_bias else x_w
    # PEFT's form: base + (factor - 1) x W + factor * scale x A B; exactly base at init.
    return y + (factor - 1) * x_w + factor * self._adapter_out(lora_x).astype(y.dtype)

  def merged_kernel(self) -> jax.Array:
    kernel = self.base_kernel().astype(jnp.float32) + self.delta().astype(jnp.float32)
    if self.dora:
      kernel = kernel * (self.magnitude[...] / self._column_norm(kernel))[None, :]
    return kernel


def wrap_lora(model: nnx.Module, targets: str, *, option: str, rank: int, alpha: float,
              rslora: bool, dora: bool, rngs: nnx.Rngs, dropout: float = 0.0,
              linear_cls=LoRALinear, **kwargs) -> nnx.Module:
  """Wraps every targeted `nnx.Linear` of `model` in `linear_cls`, in place."""
  for path, linear in find_linears(model, targets, option=option):
    replace_module(model, path, linear_cls(linear, rank=rank, alpha=alpha, rslora=rslora,
                                           dora=dora, dropout=dropout, rngs=rngs, **kwargs))
  return model


def merge_wrappers(model: nnx.Module, cls, merged_linear) -> nnx.Module:
  """Replaces every `cls` wrapper by `merged_linear(wrapper)` (a plain Linear), in place."""
  for path, wrapper in list(iter_wrappers(model, cls)):
    replace_module(model, path, merged_linear(wrapper))
  return model
