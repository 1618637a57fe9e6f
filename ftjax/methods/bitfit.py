"""BitFit (Ben Zaken et al. 2021): train only the bias terms (and the task head).

Every parameter named `bias` trains: linear biases and LayerNorm biases, as in the paper.
Options: `train_head` (default True). Trainable parameters: all biases + the head's kernel
(the head's bias is a bias already). Mergeable trivially (the model keeps its structure).
"""

from flax import nnx

from ftjax.methods.base import Method, path_matches
from ftjax.methods.lora import trainable_with_head
from ftjax.methods.registry import register

BIAS_PATTERN = r"(^|\.)bias$"


@register
class BitFit(Method):
  name = "bitfit"
  defaults = {"train_head": True}

  def trainable(self):
    return trainable_with_head(nnx.All(nnx.Param, path_matches(BIAS_PATTERN)),
                               self.options["train_head"])
