"""Bottleneck adapters: Houlsby et al. 2019 (after attention and FFN) and Pfeiffer et al. 2020
(after the FFN only).

An adapter h + up(act(down(h))) is applied to the output h of the sub-layer's output projection,
before the residual add and normalisation. The up-projection starts at zero, so the model is
the identity at step 0. Not mergeable (the activation sits between the projections).

Options (`config.method.adapters.*`):
  variant: 'houlsby' or 'pfeiffer'.
  bottleneck: the adapter's hidden width.
  activation: 'gelu' (tanh approximation, AdapterHub's 'gelu'), 'relu' or 'silu' (AdapterHub's
    'swish'); '' = the variant's default, AdapterHub's (`DoubleSeqBnConfig` / `SeqBnConfig`):
    silu for Houlsby, relu for Pfeiffer.
  targets: regex over module paths; '' = the variant's default (BERT: attention.output.dense
    and output.dense / output.dense only; Llama: o_proj and down_proj / down_proj only; GPT-2:
    attn.c_proj and mlp.c_proj / mlp.c_proj only).
  train_head: also train the task head in full.

Trainable parameters: sum over targets of 2 * out * bottleneck + bottleneck + out, plus the head.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from ftjax.errors import UserError
from ftjax.methods import lora_layers
from ftjax.methods.base import Method
from ftjax.methods.lora import trainable_with_head
from ftjax.methods.registry import register

VARIANT_TARGETS = {
    "houlsby": r"(^|\.)(attention\.output\.dense|layer\.\d+\.output\.dense|o_proj|down_proj|"
               r"attn\.c_proj|mlp\.c_proj|attn\.Wo|mlp\.Wo)$",  # ModernBERT: attn.Wo, mlp.Wo
    "pfeiffer": r"(^|\.)(layer\.\d+\.output\.dense|down_proj|mlp\.c_proj|mlp\.Wo)$",
}
ACTIVATIONS = {"gelu": jax.nn.gelu, "relu": jax.nn.relu, "silu": jax.nn.silu}
# AdapterHub's defaults: non_linearity 'swish' (Houlsby), 'relu' (Pfeiffer).
VARIANT_ACTIVATION = {"houlsby": "silu", "pfeiffer": "relu"}


class AdapterLinear(lora_layers.WrappedLinear):
  """A Linear followed by a residual bottleneck adapter."""

  def __init__(self, linear: nnx.Linear, *, bottleneck: int, activation: str, rngs: nnx.Rngs):
    super().__init__(linear)
    d, dtype = self.out_features, self.param_dtype
    self.activation = activation
    # Small random down-projection (Houlsby: near-identity init), zero up-projection.
    self.adapter_down = lora_layers.AdapterParam(
        nnx.initializers.normal(1e-2)(rngs.params(), (d, bottleneck), dtype))
    self.adapter_down_bias = lora_layers.AdapterParam(jnp.zeros((bottleneck,), dtype))
    self.adapter_up = lora_layers.AdapterParam(jnp.zeros((bottleneck, d), dtype))
    self.adapter_up_bias = lora_layers.AdapterParam(jnp.zeros((d,), dtype))

  def __call__(self, x):
    h = self.base(x)
    dtype = h.dtype
    z = ACTIVATIONS[self.activation](h @ self.adapter_down[...].astype(dtype)
                                     + self.adapter_down_bias[...].astype(dtype))
    return h + (z @ self.adapter_up[...].astype(dtype) + self.adapter_up_bias[...].astype(dtype))


@register
class Adapters(Method):
  name = "adapters"
  defaults = {"variant": "houlsby", "bottleneck": 64, "activation": "", "targets": "",
              "train_head": True}

  def apply(self, model, *, rngs):
    o = self.options
    if o["variant"] not in VARIANT_TARGETS:
      raise UserError(f"config key 'method.adapters.variant' must be one of "
                      f"{', '.join(VARIANT_TARGETS)}, got '{o['variant']}'")
    activation = o["activation"] or VARIANT_ACTIVATION[o["variant"]]
    if activation not in ACTIVATIONS:
      raise UserError(f"config key 'method.adapters.activation' must be one of "
                      f"{', '.join(ACTIVATIONS)} (or '' for the variant's), got '{activation}'")
    if o["bottleneck"] <= 0:
      raise UserError(f"config key 'method.adapters.bottleneck' must be > 0, got {o['bottleneck']}")
    targets = o["targets"] or VARIANT_TARGETS[o["variant"]]
    for path, linear in lora_layers.find_linears(model, targets, option="method.adapters.targets"):
      lora_layers.replace_module(model, path, AdapterLinear(
          linear, bottleneck=o["bottleneck"], activation=activation, rngs=rngs))
    return model

  def trainable(self):
    return trainable_with_head(lora_layers.AdapterParam,
                               self.options["train_head"])

  def merge(self, model):
    return None
