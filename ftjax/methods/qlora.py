"""QLoRA (Dettmers et al. 2023): LoRA on top of frozen base kernels stored quantized.

Each targeted Linear's kernel is replaced by block-wise quantized storage (`quant.py`: NF4 or
int8 in bitsandbytes' layout, blocks along the input axis, per-block absmax scales, optional
double quantization as bitsandbytes' `compress_statistics`), dequantized on the fly in the forward
pass; the LoRA update trains in full precision beside it. The quantized storage is an
`nnx.Variable` that is not a `Param`, so no filter ever trains it. Merging dequantizes and folds
the update in (full-precision plain Linear, like PEFT's merge_and_unload of a 4-bit model).

The dequantized kernel is transient: it is computed in the layer's compute dtype, and a
`jax.custom_vjp` keeps only the codes for the backward pass, which dequantizes again once the
cotangent has arrived, instead of one full-size kernel per layer alive between the forward and
the backward pass (more than the unquantized kernels themselves). Gradients reach the inputs
and the LoRA factors only; the quantized storage gets none.

Options: those of `lora` plus
  quant: 'nf4' or 'int8'.
  block_size: values per absmax scale (QLoRA: 64); must divide every target's input size.
  double_quant: also quantize the scales (bitsandbytes' 8-bit dynamic map, blocks of 256).

Trainable parameters: as LoRA, sum over targets of rank * (in + out), plus the head.
Storage per targeted kernel of n values: nf4 n/2 bytes + 4 n/block_size (fp32 scales) or
n/block_size + 4 ceil(n/block_size/256) + 4 with double quantization; int8 n bytes + the same
scales. `storage_bytes(model)` reports it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from ftjax.errors import UserError
from ftjax.methods import lora_layers, lora_peft, quant
from ftjax.methods.base import path_string
from ftjax.methods.lora import LoRA, check_dropout
from ftjax.methods.registry import register

DOUBLE_QUANT_BLOCK = quant.DOUBLE_QUANT_BLOCK


class QuantizedWeight(nnx.Variable):
  """Frozen quantized storage (codes, scales); never a `Param`, so never trained."""


class QLoRALinear(lora_layers.LoRALinear):
  """`LoRALinear` whose base kernel is stored quantized and dequantized per call."""

  def __init__(self, linear: nnx.Linear, *, rank: int, alpha: float, rslora: bool, dora: bool,
               dropout: float = 0.0, rngs: nnx.Rngs, kind: str, block_size: int,
               double_quant: bool):
    if dora:
      raise UserError("QLoRA with DoRA is not supported")
    super().__init__(linear, rank=rank, alpha=alpha, rslora=rslora, dora=False, dropout=dropout,
                     rngs=rngs)
    self.kind, self.block_size = kind, block_size
    self.kernel_shape = tuple(linear.kernel[...].shape)
    self.kernel_meta = tuple(sorted(linear.kernel.get_metadata().items()))
    q = quant.quantize(linear.kernel[...], kind, block_size, double_quant, DOUBLE_QUANT_BLOCK)
    del self.kernel  # the full-precision kernel is gone: only the quantized copy stays
    # Codes [in / 2, out] and scales [in / block, out] keep the kernel's axes, so they shard as
    # the kernel would (`embed` -> `fsdp`, `heads`/`mlp` -> `tensor` by default): FSDP keeps 1/N
    # of the quantized base per device. The double quantization's few block scales and mean
    # stay whole. A length an axis does not divide stays whole along it.
    axes = dict(self.kernel_meta).get('out_sharding')
    store = lambda x, sharded: None if x is None else QuantizedWeight(
        x, **({"out_sharding": tuple(axes), "eager_sharding": False} if sharded and axes else {}))
    self.q_codes, self.q_scales = store(q.codes, True), store(q.scales, True)
    self.q_scales_scale = store(q.scales_scale, False)
    self.q_scales_mean = store(q.scales_mean, False)

  def set_quantized(self, q: quant.Quantized) -> None:
    """Replaces the stored codes and scales with `q` (quantized elsewhere, same layout)."""
    for var, value in ((self.q_codes, q.codes), (self.q_scales, q.scales),
                       (self.q_scales_scale, q.scales_scale), (self.q_scales_mean, q.scales_mean)):
      if var is not None:
        var.set_value(value)

  def quantized(self) -> quant.Quantized:
    opt = lambda v: None if v is None else v[...]
    return quant.Quantized(self.q_codes[...], self.q_scales[...], opt(self.q_scales_scale),
                           opt(self.q_scales_mean))

  def base_kernel(self):
    return quant.dequantize(self.quantized(), self.kernel_shape, self.kind, self.block_size,
                            DOUBLE_QUANT_BLOCK, dtype=self.param_dtype)

  def kernel_metadata(self) -> dict:
    return dict(self.kernel_meta)

  def base(self, x):
    bias = self.bias[...] if self.use_bias else None
    dtype = self.dtype or jnp.result_type(x.dtype, self.param_dtype)
    y = _dequantized_dot(x.astype(dtype), self.quantized(), self.kernel_shape, self.kind,
                         self.block_size, self.precision)
    return y + bias.astype(dtype) if bias is not None else y

  def nbytes(self) -> tuple[int, int]:
    """(bytes of the quantized storage, bytes the kernel takes in its param dtype)."""
    n = 1
    for d in self.kernel_shape:
      n *= d
    return quant.nbytes(self.quantized()), n * jnp.dtype(self.param_dtype).itemsize


def _after(q: quant.Quantized, g) -> quant.Quantized:
  """`q`, made to wait for `g` (the layer's input, or its output's cotangent): nothing else
  orders the dequantization, and XLA would otherwise make every layer's kernel at the start of
  the step, or merge the backward pass's with the forward pass's, and hold them all."""
  g, q = jax.lax.optimization_barrier((g, q))
  if jax.default_backend() != "cpu":
    return q
  # XLA:CPU drops barriers before its common-subexpression pass; a data dependency it cannot
  # fold (0 * x is not 0 for floats) keeps the two apart. One element of g: on a mesh, one scalar
  # moves per layer, so only where it is needed.
  tie = jnp.zeros((), jnp.float32) * g.reshape(-1)[0].astype(jnp.float32)
  if q.scales_mean is not None:
    return q._replace(scales_mean=q.scales_mean + tie)
  return q._replace(scales=q.scales + tie)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _dequantized_dot(x, q: quant.Quantized, shape, kind: str, block_size: int, precision):
  """x @ dequantize(q), the kernel made in x's dtype; the backward pass makes it again."""
  kernel = quant.dequantize(_after(q, x), shape, kind, block_size, DOUBLE_QUANT_BLOCK, dtype=x.dtype)
  return jnp.dot(x, kernel, precision=precision)


def _dequantized_dot_fwd(x, q, shape, kind, block_size, precision):
  return _dequantized_dot(x, q, shape, kind, block_size, precision), q  # only the codes are kept


def _dequantized_dot_bwd(shape, kind, block_size, precision, q, g):
  q = _after(q, g)
  kernel = quant.dequantize(q, shape, kind, block_size, DOUBLE_QUANT_BLOCK, dtype=g.dtype)
  return jnp.dot(g, kernel.T, precision=precision), None  # the frozen storage gets no gradient


_dequantized_dot.defvjp(_dequantized_dot_fwd, _dequantized_dot_bwd)


def storage_bytes(model) -> tuple[int, int]:
  """Summed (quantized, full-precision) bytes of every quantized kernel of `model`."""
  sizes = [w.nbytes() for _, w in lora_layers.iter_wrappers(model, QLoRALinear)]
  return sum(q for q, _ in sizes), sum(f for _, f in sizes)


@register
class QLoRA(LoRA):
  name = "qlora"
  defaults = dict(LoRA.defaults, quant="nf4", block_size=64, double_quant=False)

  def _targets(self, model):
    """The targeted Linears, their options checked."""
    o = self.options
    if o["quant"] not in quant.KINDS:
      raise UserError(f"config key 'method.qlora.quant' must be one of {', '.join(quant.KINDS)}, "
                      f"got '{o['quant']}'")
    if o["block_size"] <= 0 or o["block_size"] % 2:
      raise UserError(f"config key 'method.qlora.block_size' must be a positive even number, "
                      f"got {o['block_size']}")
    found = lora_layers.find_linears(model, o["targets"], option="method.qlora.targets")
    for path, linear in found:
      quant.check_shape(linear.kernel.shape, o["block_size"],
                        f"kernel of '{path_string(path)}'")
    return found

  def _quantize(self, kernel) -> quant.Quantized:
    o = self.options
    return quant.quantize(kernel, o["quant"], o["block_size"], o["double_quant"], DOUBLE_QUANT_BLOCK)

  def load_transforms(self, model):
    """Each targeted kernel is quantized as soon as it is read: the full-precision base never
    exists whole (the wrapper then adopts the codes instead of quantizing a placeholder)."""
    return {path_string(path + ("kernel",)): self._quantize for path, _ in self._targets(model)}

  def adopt(self, model, transformed):
    for path, wrapper in lora_layers.iter_wrappers(model, QLoRALinear):
      q = transformed.get(path_string(path + ("kernel",)))
      if q is not None:
        wrapper.set_quantized(q)

  def wrap(self, model, *, rngs):
    o = self.options
    dropout = check_dropout(self.name, o)
    self._targets(model)
    return lora_layers.wrap_lora(
        model, o["targets"], option="method.qlora.targets", rank=o["rank"], alpha=o["alpha"],
        rslora=o["rslora"], dora=False, dropout=dropout, rngs=rngs, linear_cls=QLoRALinear, kind=o["quant"],
        block_size=o["block_size"], double_quant=o["double_quant"])

  def export_peft(self, model, out_dir, *, base_path: str):
    """A PEFT LoRA adapter; apply it to the (quantized or not) base model."""
    return lora_peft.export_lora(model, self.options, out_dir, base_path=base_path)
