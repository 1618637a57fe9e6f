"""LoRA's PEFT mapping (LoRA, DoRA, rsLoRA, QLoRA): what a PEFT LoRA adapter holds and how it
maps to our `LoRALinear` wrappers, both ways.

Per targeted module, under its Hugging Face name (`peft_io.ModelNames`), in PyTorch layouts:
`lora_A.weight` [r, in] (our A is [in, r]), `lora_B.weight` [out, r] (our B [r, out]) and,
for DoRA, `lora_magnitude_vector` [out]. `adapter_config.json` carries r, lora_alpha,
use_rslora, use_dora and target_modules.

Importing an adapter made elsewhere: `load_peft_lora` wraps the modules it names with its own
settings (no method options involved); the methods' `init_from` option (`lora.LoRA.apply`)
instead wraps by the method's options and refuses an adapter that disagrees with them
(`check_settings`, `fill`), so the run's config.json says what ran and its export writes the
same adapter config back.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ftjax.errors import UserError
from ftjax.methods import lora_layers
from ftjax.methods.base import HEAD_PATTERN, path_string
from ftjax.weights import peft_io

_LORA_TENSOR = re.compile(re.escape(peft_io.PREFIX)
                          + r"(.+)\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector)")


def export_lora(model: nnx.Module, options, out_dir, *, base_path: str) -> pathlib.Path:
  """Writes a LoRA / DoRA / rsLoRA model (our `LoRALinear` wrappers) as a PEFT LoRA adapter."""
  names = peft_io.ModelNames(model)
  tensors, modules, dora = {}, [], set()
  for path, layer in lora_layers.iter_wrappers(model, lora_layers.LoRALinear):
    name = names.hf_module(path_string(path))
    modules.append(name)
    tensors[f"{peft_io.PREFIX}{name}.lora_A.weight"] = peft_io.as_numpy(layer.lora_a[...]).T.copy()
    tensors[f"{peft_io.PREFIX}{name}.lora_B.weight"] = peft_io.as_numpy(layer.lora_b[...]).T.copy()
    if layer.dora:
      tensors[f"{peft_io.PREFIX}{name}.lora_magnitude_vector"] = peft_io.as_numpy(
          layer.magnitude[...])
    dora.add(layer.dora)
  if not modules:
    raise UserError("the model has no LoRA layers to export")
  head, head_modules = names.head_tensors(model, HEAD_PATTERN)
  tensors.update(head)
  config = peft_io.base_config("LORA", names.task, base_path, head_modules)
  config.update(r=int(options["rank"]), lora_alpha=float(options["alpha"]),
                use_rslora=bool(options["rslora"]), use_dora=dora == {True},
                lora_dropout=float(options["dropout"]), target_modules=sorted(modules), bias="none",
                fan_in_fan_out=False, init_lora_weights=True, lora_bias=False,
                rank_pattern={}, alpha_pattern={}, layers_to_transform=None,
                layers_pattern=None)
  return peft_io.write_adapter(out_dir, config, tensors)


@dataclasses.dataclass(frozen=True)
class Adapter:
  """A PEFT LoRA adapter read against one model."""
  source: str  # its adapter_config.json, for messages
  rank: int
  alpha: float
  rslora: bool
  dora: bool
  modules: dict[str, dict[str, np.ndarray]]  # NNX module path -> {PEFT tensor key: array}
  hf_modules: dict[str, str]  # NNX module path -> HF module name
  full: dict[str, np.ndarray]  # whole tensors (`modules_to_save`), HF-named


def read(model: nnx.Module, adapter_dir) -> Adapter:
  """Reads a PEFT LoRA (or DoRA) adapter and maps its modules to `model`'s plain Linears."""
  adapter_dir = pathlib.Path(adapter_dir).expanduser()
  config, tensors = peft_io.read_adapter(adapter_dir)
  where = str(adapter_dir / peft_io.CONFIG_FILE)
  if config.get("peft_type") != "LORA":
    raise UserError(f"{where}: peft_type '{config.get('peft_type')}' is not LORA")
  for key in ("rank_pattern", "alpha_pattern"):
    if config.get(key):
      raise UserError(f"{where}: per-module '{key}' is not supported")
  # `fan_in_fan_out` (PEFT sets it for GPT-2's Conv1D) only says how the *base* weight is laid
  # out; lora_A / lora_B are [r, in] / [out, r] either way, so it needs nothing here.
  if config.get("lora_bias"):
    raise UserError(f"{where}: lora_bias adapters are not supported")
  try:
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
  except (KeyError, TypeError, ValueError) as e:
    raise UserError(f"{where}: needs numeric 'r' and 'lora_alpha' ({e})") from None
  names = peft_io.ModelNames(model)
  linears = {path_string(p): m for p, m in nnx.iter_modules(model)}
  modules, hf_modules, full = {}, {}, {}
  for name, value in tensors.items():
    m = _LORA_TENSOR.fullmatch(name)
    if m is None:
      full[name] = value
      continue
    path = names.module_path(m.group(1))
    if type(linears.get(path)) is not nnx.Linear:  # pylint: disable=unidiomatic-typecheck
      raise UserError(f"LoRA module '{m.group(1)}' in {adapter_dir} is not a Linear of the model")
    modules.setdefault(path, {})[m.group(2)] = value
    hf_modules[path] = m.group(1)
  if not modules:
    raise UserError(f"{adapter_dir}: no lora_A/lora_B tensors in {peft_io.WEIGHTS_FILE}")
  for path, parts in modules.items():
    if "lora_A.weight" not in parts or "lora_B.weight" not in parts:
      raise UserError(f"LoRA module '{hf_modules[path]}' in {adapter_dir} lacks lora_A or lora_B")
  return Adapter(where, rank, alpha, bool(config.get("use_rslora")), bool(config.get("use_dora")),
                 modules, hf_modules, full)


def fill(model: nnx.Module, adapter: Adapter, *, option: str = "") -> None:
  """Copies the adapter's tensors into `model`, whose LoRA wrappers must sit exactly at the
  adapter's modules (else a UserError naming `option`, the targets key), in place."""
  wrappers = {path_string(p): w
              for p, w in lora_layers.iter_wrappers(model, lora_layers.LoRALinear)}
  if set(wrappers) != set(adapter.modules):
    missing = sorted(set(adapter.modules) - set(wrappers))
    extra = sorted(set(wrappers) - set(adapter.modules))
    raise UserError(f"config key '{option}' selects other modules than the PEFT adapter "
                    f"{adapter.source} has LoRA on (adapter only: {', '.join(missing) or '-'}; "
                    f"{option} only: {', '.join(extra) or '-'})")
  for path, parts in adapter.modules.items():
    layer = wrappers[path]
    pairs = [("lora_a", "lora_A.weight", True), ("lora_b", "lora_B.weight", True)]
    if layer.dora:
      if "lora_magnitude_vector" not in parts:
        raise UserError(f"LoRA module '{adapter.hf_modules[path]}' in {adapter.source} lacks "
                        "lora_magnitude_vector (use_dora is set)")
      pairs.append(("magnitude", "lora_magnitude_vector", False))
    for attr, key, transpose in pairs:
      value = parts[key].T if transpose else parts[key]
      var = getattr(layer, attr)
      if tuple(value.shape) != tuple(var[...].shape):
        raise UserError(f"tensor '{peft_io.PREFIX}{adapter.hf_modules[path]}.{key}' of "
                        f"{adapter.source} has shape {tuple(parts[key].shape)}, which does not "
                        f"fit rank {layer.rank}")
      var[...] = jnp.asarray(value, var[...].dtype)
  peft_io.ModelNames(model).load_tensors(model, adapter.full, adapter.source)


def check_settings(adapter: Adapter, method: str, options, *, dora: bool) -> None:
  """Refuses an `init_from` adapter whose r / lora_alpha / use_rslora / use_dora differ from
  the method's options, naming the key and both values."""
  for key, ours, theirs, peft_key in (("rank", int(options["rank"]), adapter.rank, "r"),
                                      ("alpha", float(options["alpha"]), adapter.alpha,
                                       "lora_alpha"),
                                      ("rslora", bool(options["rslora"]), adapter.rslora,
                                       "use_rslora")):
    if ours != theirs:
      raise UserError(f"config key 'method.{method}.{key}' is {ours}, but the PEFT adapter of "
                      f"'method.{method}.init_from' ({adapter.source}) has {peft_key}={theirs}: "
                      f"set --config.method.{method}.{key}={theirs}")
  if dora != adapter.dora:
    raise UserError(f"config key 'method.name' is '{method}', but the PEFT adapter of "
                    f"'method.{method}.init_from' ({adapter.source}) has use_dora="
                    f"{adapter.dora}: start it with method.name="
                    f"{'dora' if adapter.dora else 'lora'}")


def load_peft_lora(model: nnx.Module, adapter_dir, *, rngs: nnx.Rngs | None = None) -> nnx.Module:
  """Applies a PEFT LoRA (or DoRA) adapter trained elsewhere to `model`, in place.

  Each module with `lora_A`/`lora_B` tensors is wrapped in a `LoRALinear` holding them (the
  adapter's r, lora_alpha, use_rslora, use_dora); tensors of `modules_to_save` (e.g. the
  classifier) overwrite the model's own. Returns the model, ready for the `lora` (or `dora`)
  method's `trainable()` filter and `merge`.
  """
  adapter = read(model, adapter_dir)
  rngs = rngs or nnx.Rngs(0)
  modules = {path_string(p): (tuple(p), m) for p, m in nnx.iter_modules(model)}
  for name in sorted(adapter.modules):
    path, linear = modules[name]
    lora_layers.replace_module(model, path, lora_layers.LoRALinear(
        linear, rank=adapter.rank, alpha=adapter.alpha, rslora=adapter.rslora,
        dora=adapter.dora, rngs=rngs))
  fill(model, adapter)
  return model
