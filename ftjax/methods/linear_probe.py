"""Linear probe: the pretrained model is frozen and only the task head trains."""

from flax import nnx

from ftjax.methods.base import HEAD_PATTERN, Method, path_matches
from ftjax.methods.registry import register


@register
class LinearProbe(Method):
  name = "linear_probe"

  def trainable(self):
    return nnx.All(nnx.Param, path_matches(HEAD_PATTERN))
