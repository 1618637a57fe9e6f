"""LayerNorm tuning (Zhao et al. 2023): train only the normalisation scales/biases + the head.

Matches any norm module named like `LayerNorm`, `input_layernorm`, `norm` (RMSNorm has no bias)
or GPT-2's `ln_1`, `ln_2`, `ln_f`.
Options: `train_head` (default True). Trainable parameters: every norm's scale (and bias) +
the head. Mergeable trivially.
"""

from flax import nnx

from ftjax.methods.base import Method, path_matches
from ftjax.methods.lora import trainable_with_head
from ftjax.methods.registry import register

NORM_PATTERN = r"(?i)(^|\.)([^.]*norm[^.]*|ln_[^.]*)\.(scale|bias)$"


@register
class LayerNormTuning(Method):
  name = "layernorm"
  defaults = {"train_head": True}

  def trainable(self):
    return trainable_with_head(nnx.All(nnx.Param, path_matches(NORM_PATTERN)),
                               self.options["train_head"])
