"""LoRA (Hu et al. 2021): a trainable low-rank update B A beside each targeted frozen Linear.

Options (`config.method.lora.*`):
  rank, alpha: the update is (alpha / rank) * x A B (alpha / sqrt(rank) with `rslora`).
    Defaults r=8, alpha=8 (scale 1) follow PEFT's `LoraConfig` and the paper, which sets alpha
    to the first rank tried and does not tune it.
  dropout: dropout on the LoRA branch's input, PEFT's `lora_B(lora_A(dropout(x)))`, in the
    train step only (a fresh mask every step from the train state's rng; none in eval,
    generation, merge or export; see `lora_layers.LoRALinear`). In [0, 1).
  targets: regex (re.search) over module paths; the default is PEFT's per-model one: BERT's
    query/value, Llama's and Gemma's q_proj/v_proj, DistilBERT's q_lin/v_lin, DeBERTa's
    query_proj/value_proj, GPT-2's c_attn; Phi-3's fused qkv_proj and ModernBERT's fused Wqkv
    (PEFT has none for either; the fused counterpart of q/v).
  rslora: rank-stabilised scaling alpha / sqrt(rank) (Kalajdzievski 2023).
  train_head: also train the task head (`classifier`/`score`) in full, like PEFT's
    `modules_to_save` for sequence classification.
  init_from: '' = start A at random and B at zero; else a PEFT LoRA adapter directory
    (`adapter_config.json` + `adapter_model.safetensors`, e.g. from `peft`'s `save_pretrained`)
    whose A, B (DoRA: magnitude) and saved head start the run. Its r, lora_alpha, use_rslora,
    use_dora and modules must equal this method's rank, alpha, rslora, method name and targets:
    a mismatch is a UserError naming the key and both values (the run's config.json then says
    what ran, and `--format peft` writes the same settings back). Resuming or exporting the run
    builds the model again, so the directory must still be there. QLoRA starts from it on its
    quantized base.

Trainable parameters: sum over targets of rank * (in + out), plus the head when `train_head`.
"""

import logging

from flax import nnx

from ftjax.errors import UserError
from ftjax.methods import lora_layers, lora_peft
from ftjax.methods.base import HEAD_PATTERN, Method, path_matches
from ftjax.methods.registry import register

DEFAULT_TARGETS = (r"(^|\.)(query|value|q_proj|v_proj|q_lin|v_lin|query_proj|value_proj|c_attn|"
                   r"qkv_proj|Wqkv)$")

log = logging.getLogger("ftjax")


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
  defaults = {"rank": 8, "alpha": 8.0, "dropout": 0.0, "targets": DEFAULT_TARGETS,
              "rslora": False, "train_head": True, "init_from": ""}
  dora = False

  def apply(self, model, *, rngs):
    adapter = None
    if self.options["init_from"]:
      adapter = lora_peft.read(model, self.options["init_from"])
      lora_peft.check_settings(adapter, self.name, self.options, dora=self.dora)
    model = self.wrap(model, rngs=rngs)
    if adapter is not None:
      lora_peft.fill(model, adapter, option=f"method.{self.name}.targets")
      log.info("method.%s.init_from: started from the PEFT adapter %s (%d modules)",
               self.name, adapter.source, len(adapter.modules))
    return model

  def wrap(self, model, *, rngs):
    """Wraps the targeted Linears (fresh A, zero B); `apply` may then fill them from an adapter."""
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
    return lora_peft.export_lora(model, self.options, out_dir, base_path=base_path)
