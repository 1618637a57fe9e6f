"""Full fine-tuning: every parameter trains."""

from ftjax.methods.base import Method
from ftjax.methods.registry import register


@register
class Full(Method):
  name = "full"
