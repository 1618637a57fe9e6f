"""IA3 (Liu et al. 2022): learned rescaling of keys, values and feed-forward activations.

PEFT's semantics: a targeted Linear that is not feed-forward has its *output* scaled,
y = (x W + b) * l (l: [out]); a feed-forward one has its *input* scaled, y = (x * l) W + b
(l: [in]). Vectors start at one (identity). Mergeable: W * l[None, :] and b * l, or
W * l[:, None].

Options (`config.method.ia3.*`):
  targets: regex over module paths; the default is PEFT's for BERT (key, value, output.dense,
    which includes attention.output.dense), Llama (k_proj, v_proj, down_proj) and GPT-2
    (c_attn, mlp.c_proj), DeBERTa-v2 (key_proj, value_proj, output.dense); DistilBERT (no PEFT
    default) by analogy: k_lin, v_lin, ffn.lin2; ModernBERT (none either) as GPT-2: the fused
    attn.Wqkv, and mlp.Wo.
  feedforward: regex over module paths; targets matching it scale their input.
  train_head: also train the task head in full.

Trainable parameters: sum over targets of out (or in, for feed-forward ones), plus the head.

PEFT export: `ia3_l` per target under its HF module name, [out, 1] or, for feed-forward
modules, [1, in] (PyTorch's layouts), plus the head in `modules_to_save`.
"""

import re

import jax.numpy as jnp
from flax import nnx

from ftjax.methods import lora_layers
from ftjax.methods.base import HEAD_PATTERN, Method, path_string
from ftjax.methods.lora import trainable_with_head
from ftjax.methods.registry import register
from ftjax.weights import peft_io


class IA3Linear(lora_layers.WrappedLinear):
  """A Linear whose output (or, `feedforward`, input) is rescaled by a learned vector."""

  def __init__(self, linear: nnx.Linear, *, feedforward: bool):
    super().__init__(linear)
    self.feedforward = feedforward
    size = self.in_features if feedforward else self.out_features
    self.ia3_l = lora_layers.AdapterParam(
        jnp.ones((size,), self.param_dtype),
        **lora_layers.axis_metadata(self.kernel, 0 if feedforward else 1))

  def __call__(self, x):
    scale = self.ia3_l[...]
    if self.feedforward:
      return self.base(x * scale.astype(x.dtype))
    y = self.base(x)
    return y * scale.astype(y.dtype)

  def merged(self) -> nnx.Linear:
    scale = self.ia3_l[...]
    if self.feedforward:
      return self.to_linear(self.kernel[...] * scale[:, None])
    bias = self.bias[...] * scale if self.use_bias else None
    return self.to_linear(self.kernel[...] * scale[None, :], bias)


@register
class IA3(Method):
  name = "ia3"
  defaults = {"targets": (r"(^|\.)(key|value|output\.dense|k_proj|v_proj|down_proj|c_attn|"
                          r"mlp\.c_proj|k_lin|v_lin|ffn\.lin2|key_proj|value_proj|attn\.Wqkv|"
                          r"mlp\.Wo)$"),
              "feedforward": r"(^|\.)(output\.dense|down_proj|mlp\.c_proj|ffn\.lin2|mlp\.Wo)$",
              "train_head": True}

  def apply(self, model, *, rngs):
    del rngs
    feedforward = re.compile(self.options["feedforward"])
    for path, linear in lora_layers.find_linears(model, self.options["targets"],
                                                 option="method.ia3.targets"):
      is_ff = feedforward.search(path_string(path)) is not None
      lora_layers.replace_module(model, path, IA3Linear(linear, feedforward=is_ff))
    return model

  def trainable(self):
    return trainable_with_head(lora_layers.AdapterParam,
                               self.options["train_head"])

  def merge(self, model):
    model = nnx.clone(model)
    return lora_layers.merge_wrappers(model, IA3Linear, lambda w: w.merged())

  def export_peft(self, model, out_dir, *, base_path: str):
    """Writes a PEFT IA3 adapter."""
    names = peft_io.ModelNames(model)
    tensors, targets, feedforward = {}, [], []
    for path, layer in lora_layers.iter_wrappers(model, IA3Linear):
      name = names.hf_module(path_string(path))
      targets.append(name)
      scale = peft_io.as_numpy(layer.ia3_l[...])
      if layer.feedforward:
        feedforward.append(name)
      tensors[f"{peft_io.PREFIX}{name}.ia3_l"] = (
          scale[None, :] if layer.feedforward else scale[:, None]).copy()
    head, head_modules = names.head_tensors(model, HEAD_PATTERN)
    tensors.update(head)
    config = peft_io.base_config("IA3", names.task, base_path, head_modules)
    config.update(target_modules=sorted(targets), feedforward_modules=sorted(feedforward),
                  fan_in_fan_out=False, init_ia3_weights=True)
    return peft_io.write_adapter(out_dir, config, tensors)
