"""LoRA (Hu et al. 2021): a trainable low-rank update B A beside each targeted frozen Linear.

Options (`config.method.lora.*`):
  rank, alpha: the update is (alpha / rank) * x A B (alpha / sqrt(rank) with `rslora`).
  dropout: dropout on the LoRA branch's input, PEFT's `lora_B(lora_A(dropout(x)))`, in the
    train step only (a fresh mask every step from the train state's rng; none in eval,
    generation, merge or export; see `lora_layers.LoRALinear`). In [0, 1).
  targets: regex (re.search) over module paths; the default covers BERT's query/value and
    Llama's q_proj/v_proj.
  rslora: rank-stabilised scaling alpha / sqrt(rank) (Kalajdzievski 2023).
  train_head: also train the task head (`classifier`/`score`) in full, like PEFT's
    `modules_to_save` for sequence classification.

Trainable parameters: sum over targets of rank * (in + out), plus the head when `train_head`.
"""

from flax import nnx

from ftjax.errors import UserError
from ftjax.methods import lora_layers
from ftjax.methods.base import HEAD_PATTERN, Method, path_matches
from ftjax.methods.registry import register

DEFAULT_TARGETS = r"(^|\.)(query|value|q_proj|v_proj)$"


def check_dropout(name: str, options) -> float:
  rate = options["dropout"]
  if not 0.0 <= rate < 1.0:
    raise UserError(f"config key 'method.{name}.dropout' must be in [0, 1), got {rate}")
  return float(rate)


def trainable_with_head(own, train_head: bool):
  if train_head:
    return nnx.Any(own, nnx.All(nnx.Param, path_matches(HEAD_PATTERN)))
  return own


@register
class LoRA(Method):
  name = "lora"
  defaults = {"rank": 8, "alpha": 16.0, "dropout": 0.0, "targets": DEFAULT_TARGETS,
              "rslora": False, "train_head": True}
  dora = False

  def apply(self, model, *, rngs):
    o = self.options
    return lora_layers.wrap_lora(model, o["targets"], option=f"method.{self.name}.targets",
                                 rank=o["rank"], alpha=o["alpha"], rslora=o["rslora"],
                                 dora=self.dora, dropout=check_dropout(self.name, o), rngs=rngs)

  def trainable(self):
    return trainable_with_head(lora_layers.LoRAParam, self.options["train_head"])

  def merge(self, model):
    model = nnx.clone(model)  # arrays are shared, not copied; the caller's model stays as is
    return lora_layers.merge_wrappers(model, lora_layers.LoRALinear,
                                      lambda w: w.to_linear(w.merged_kernel()))

  def export_peft(self, model, out_dir, *, base_path: str):
    """Writes a PEFT LoRA adapter (`use_dora`/`use_rslora` as configured)."""
    from ftjax.weights import peft_io  # pylint: disable=g-import-not-at-top  (imports methods)
    return peft_io.export_lora(model, self.options, out_dir, base_path=base_path)
