"""Top-layers fine-tuning: the last `num_layers` transformer layers and the head train.

A cheap middle ground between a linear probe and full fine-tuning (lower layers hold general
features, upper layers task-specific ones). Also the worked example of README's "Adding a
method": one file, one registry line.
"""

import re

from flax import nnx

from ftjax.methods.base import HEAD_PATTERN, Method, path_string
from ftjax.methods.registry import register

# `encoder.layer.3.` (BERT) or `model.layers.3.` (Llama); GPT-2's `transformer.h.3.`.
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers|h)\.(\d+)\.")


@register
class TopLayers(Method):
  name = "top_layers"
  defaults = {"num_layers": 2}

  def apply(self, model, *, rngs):
    del rngs
    indices = [int(m.group(1)) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))
               if (m := LAYER_INDEX.search(path_string(path)))]
    self.first_trained = max(indices, default=-1) + 1 - self.options["num_layers"]
    return model

  def trainable(self):
    head = re.compile(HEAD_PATTERN)

    def in_top_layers_or_head(path, unused_variable):
      name = path_string(path)
      match = LAYER_INDEX.search(name)
      return bool(head.search(name)) or (match is not None and int(match.group(1)) >= self.first_trained)

    return nnx.All(nnx.Param, in_top_layers_or_head)
