"""DoRA (Liu et al. 2024): LoRA plus a learned per-output-feature magnitude.

W' = m * (W + s B A) / ||W + s B A||, with the norm per output feature over the input axis
(PEFT's `lora_magnitude_vector`, dim=1 of torch's [out, in] weight) and detached in backward.
Options: those of `lora`. Trainable parameters: sum over targets of rank * (in + out) + out,
plus the head when `train_head`. Mergeable.
"""

from ftjax.methods.lora import LoRA
from ftjax.methods.registry import register


@register
class DoRA(LoRA):
  name = "dora"
  defaults = dict(LoRA.defaults)
  dora = True
