"""PEFT adapters on disk: export ftjax methods to, and import LoRA from, `peft`'s format.

A PEFT adapter directory holds `adapter_config.json` and `adapter_model.safetensors` whose
tensor names are the Hugging Face module names under `base_model.model.` (PyTorch layouts:
`lora_A.weight` [r, in], `lora_B.weight` [out, r], DoRA's `lora_magnitude_vector` [out],
IA3's `ia3_l` [out, 1] or, for feed-forward modules, [1, in]). Modules trained in full (the
classification head) are saved whole and listed in `modules_to_save`. Prompt-learning methods
save `prompt_embeddings` and their head under `base_model.` (no `.model`).

Module names come from the model's weight table (`ftjax/weights/*_table.py`), so this works for
any registered model family.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import nnx

from ftjax.errors import UserError
from ftjax.methods import lora_layers
from ftjax.methods.base import HEAD_PATTERN, path_string
from ftjax.models import registry
from ftjax.weights import safetensors_io

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
TASK_TYPES = {"classification": "SEQ_CLS", "base": "FEATURE_EXTRACTION", "causal_lm": "CAUSAL_LM"}


def _family_of(model: nnx.Module):
  """(family, task) of a model, seeing through prompt-learning decoder wrappers
  (`prompt_layers.PrefilledDecoder.wrapped_class`) to the model class they adopted."""
  wrapped = getattr(model, "wrapped_class", None)
  if wrapped is None:
    return registry._family_of(model)  # pylint: disable=protected-access
  families = registry._FAMILIES  # pylint: disable=protected-access
  model_type = getattr(model.config, "model_type", None)
  for family in [families[model_type]] if model_type in families else list(families.values()):
    for task, (cls, _, _) in family.classes.items():
      if cls is wrapped:
        return family, task
  raise UserError(f"cannot export a model wrapping {wrapped.__name__}: not a registered class")


def _table(model: nnx.Module):
  family, task = _family_of(model)
  _, table, _ = family.classes[task]
  if not isinstance(table, safetensors_io.WeightTable):  # chosen by the config (tied heads)
    table = table(model.config)
  return safetensors_io._Compiled(table), task  # pylint: disable=protected-access


def _hf_module(compiled, module_path: str) -> str:
  """NNX module path -> HF module name, through the table's name for its `kernel`."""
  hit = compiled.to_hf(f"{module_path}.kernel")
  if hit is None or not hit[0].endswith(".weight"):
    raise UserError(f"module '{module_path}' has no Hugging Face name in the weight table")
  return hit[0][: -len(".weight")]


def _head_tensors(model, compiled, prefix: str) -> tuple[dict[str, np.ndarray], list[str]]:
  """The task head's params, HF-named under `prefix`, and its module names."""
  tensors, modules = {}, set()
  for path, var in safetensors_io.param_vars(model).items():
    if not re.search(HEAD_PATTERN, path):
      continue
    hit = compiled.to_hf(path)
    if hit is None:
      raise UserError(f"head parameter '{path}' has no Hugging Face name")
    name, rule = hit
    tensors[prefix + name] = np.asarray(safetensors_io._apply(  # pylint: disable=protected-access
        rule.transform, np.asarray(jax.device_get(var[...]))))
    modules.add(name.rsplit(".", 1)[0])
  return tensors, sorted(modules)


def _np(x) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(jax.device_get(x), np.float32))


def _write(out_dir: pathlib.Path, config: dict, tensors: dict[str, np.ndarray]) -> None:
  out_dir.mkdir(parents=True, exist_ok=True)
  safetensors_io.write_safetensors(tensors, out_dir / WEIGHTS_FILE)
  tmp = out_dir / f".{CONFIG_FILE}.tmp-{os.getpid()}"
  tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, out_dir / CONFIG_FILE)


def _base_config(peft_type: str, task: str, base_path: str, modules_to_save) -> dict[str, Any]:
  return {"peft_type": peft_type, "task_type": TASK_TYPES[task], "inference_mode": True,
          "base_model_name_or_path": str(base_path), "revision": None,
          "modules_to_save": modules_to_save or None}


def export_lora(model: nnx.Module, options, out_dir, *, base_path: str) -> pathlib.Path:
  """Writes a LoRA / DoRA / rsLoRA model (our `LoRALinear` wrappers) as a PEFT LoRA adapter."""
  compiled, task = _table(model)
  tensors, modules = {}, []
  ranks, scales, dora = set(), set(), set()
  for path, layer in lora_layers.iter_wrappers(model, lora_layers.LoRALinear):
    name = _hf_module(compiled, path_string(path))
    modules.append(name)
    tensors[f"{PREFIX}{name}.lora_A.weight"] = _np(layer.lora_a[...]).T.copy()
    tensors[f"{PREFIX}{name}.lora_B.weight"] = _np(layer.lora_b[...]).T.copy()
    if layer.dora:
      tensors[f"{PREFIX}{name}.lora_magnitude_vector"] = _np(layer.magnitude[...])
    ranks.add(layer.rank)
    scales.add(layer.scale)
    dora.add(layer.dora)
  if not modules:
    raise UserError("the model has no LoRA layers to export")
  head, head_modules = _head_tensors(model, compiled, PREFIX)
  tensors.update(head)
  config = _base_config("LORA", task, base_path, head_modules)
  config.update(r=int(options["rank"]), lora_alpha=float(options["alpha"]),
                use_rslora=bool(options["rslora"]), use_dora=dora == {True},
                lora_dropout=float(options["dropout"]), target_modules=sorted(modules), bias="none",
                fan_in_fan_out=False, init_lora_weights=True, lora_bias=False,
                rank_pattern={}, alpha_pattern={}, layers_to_transform=None,
                layers_pattern=None)
  _write(pathlib.Path(out_dir), config, tensors)
  return pathlib.Path(out_dir)


def export_ia3(model: nnx.Module, out_dir, *, base_path: str, linear_cls) -> pathlib.Path:
  """Writes an IA3 model (its `IA3Linear` wrappers) as a PEFT IA3 adapter."""
  compiled, task = _table(model)
  tensors, targets, feedforward = {}, [], []
  for path, layer in lora_layers.iter_wrappers(model, linear_cls):
    name = _hf_module(compiled, path_string(path))
    targets.append(name)
    scale = _np(layer.ia3_l[...])
    if layer.feedforward:
      feedforward.append(name)
      tensors[f"{PREFIX}{name}.ia3_l"] = scale[None, :].copy()
    else:
      tensors[f"{PREFIX}{name}.ia3_l"] = scale[:, None].copy()
  head, head_modules = _head_tensors(model, compiled, PREFIX)
  tensors.update(head)
  config = _base_config("IA3", task, base_path, head_modules)
  config.update(target_modules=sorted(targets), feedforward_modules=sorted(feedforward),
                fan_in_fan_out=False, init_ia3_weights=True)
  _write(pathlib.Path(out_dir), config, tensors)
  return pathlib.Path(out_dir)


def export_prompt_learning(model: nnx.Module, out_dir, *, base_path: str, peft_type: str,
                           prompt_embeddings: np.ndarray, extra: dict) -> pathlib.Path:
  """Writes a prompt- or prefix-tuning adapter: `prompt_embeddings` plus the head."""
  compiled, task = _table(model)
  head, head_modules = _head_tensors(model, compiled, "base_model.")
  tensors = {"prompt_embeddings": np.ascontiguousarray(prompt_embeddings, np.float32), **head}
  config = _base_config(peft_type, task, base_path, head_modules)
  config.update(num_transformer_submodules=1, **extra)
  _write(pathlib.Path(out_dir), config, tensors)
  return pathlib.Path(out_dir)


def _read_adapter(adapter_dir) -> tuple[dict, dict[str, np.ndarray]]:
  adapter_dir = pathlib.Path(adapter_dir)
  config_file = adapter_dir / CONFIG_FILE
  if not config_file.is_file():
    raise UserError(f"no {CONFIG_FILE} in PEFT adapter directory {adapter_dir}")
  try:
    config = json.loads(config_file.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise UserError(f"invalid JSON in {config_file}: {e}") from e
  weights = adapter_dir / WEIGHTS_FILE
  if not weights.is_file():
    raise UserError(f"no {WEIGHTS_FILE} in PEFT adapter directory {adapter_dir}")
  try:
    tensors = safetensors.numpy.load_file(str(weights))
  except Exception as e:  # SafetensorError, OSError: truncated or corrupt.
    raise UserError(f"cannot read {weights}: {e}") from e
  return config, tensors


def load_peft_lora(model: nnx.Module, adapter_dir, *, rngs: nnx.Rngs | None = None) -> nnx.Module:
  """Applies a PEFT LoRA (or DoRA) adapter trained elsewhere to `model`, in place.

  Each module with `lora_A`/`lora_B` tensors is wrapped in a `LoRALinear` holding them; tensors
  of `modules_to_save` (e.g. the classifier) overwrite the model's own. Returns the model, ready
  for the `lora` (or `dora`) method's `trainable()` filter and `merge`.
  """
  config, tensors = _read_adapter(adapter_dir)
  where = f"{pathlib.Path(adapter_dir) / CONFIG_FILE}"
  if config.get("peft_type") != "LORA":
    raise UserError(f"{where}: peft_type '{config.get('peft_type')}' is not LORA")
  for key in ("rank_pattern", "alpha_pattern"):
    if config.get(key):
      raise UserError(f"{where}: per-module '{key}' is not supported")
  if config.get("fan_in_fan_out") or config.get("lora_bias"):
    raise UserError(f"{where}: fan_in_fan_out / lora_bias adapters are not supported")
  rank, alpha = int(config["r"]), float(config["lora_alpha"])
  rslora, dora = bool(config.get("use_rslora")), bool(config.get("use_dora"))
  compiled, _ = _table(model)
  rngs = rngs or nnx.Rngs(0)
  modules = dict(nnx.iter_modules(model))
  params = safetensors_io.param_vars(model)

  lora = {}
  for name, value in tensors.items():
    m = re.fullmatch(r"base_model\.model\.(.+)\.(lora_A\.weight|lora_B\.weight|"
                     r"lora_magnitude_vector)", name)
    if m:
      lora.setdefault(m.group(1), {})[m.group(2)] = value
      continue
    hf = name[len(PREFIX):] if name.startswith(PREFIX) else name
    hit = compiled.to_nnx(hf)
    if hit is None or hit[0] not in params:
      raise UserError(f"tensor '{name}' in {adapter_dir} matches no parameter of the model")
    path, rule = hit
    var = params[path]
    value = safetensors_io._apply(rule.transform, value)  # pylint: disable=protected-access
    if tuple(value.shape) != tuple(var[...].shape):
      raise UserError(f"tensor '{name}' in {adapter_dir} has shape {tuple(value.shape)}, "
                      f"model expects {tuple(var[...].shape)}")
    var[...] = jnp.asarray(value, var[...].dtype)

  for hf_module, parts in sorted(lora.items()):
    hit = compiled.to_nnx(f"{hf_module}.weight")
    module_path = hit[0][: -len(".kernel")] if hit and hit[0].endswith(".kernel") else None
    path = next((p for p in modules if path_string(p) == module_path), None)
    if path is None or type(modules[path]) is not nnx.Linear:  # pylint: disable=unidiomatic-typecheck
      raise UserError(f"LoRA module '{hf_module}' in {adapter_dir} is not a Linear of the model")
    if "lora_A.weight" not in parts or "lora_B.weight" not in parts:
      raise UserError(f"LoRA module '{hf_module}' in {adapter_dir} lacks lora_A or lora_B")
    layer = lora_layers.LoRALinear(modules[path], rank=rank, alpha=alpha, rslora=rslora,
                                   dora=dora, rngs=rngs)
    for attr, key, transform in (("lora_a", "lora_A.weight", True),
                                 ("lora_b", "lora_B.weight", True),
                                 ("magnitude", "lora_magnitude_vector", False)):
      if attr == "magnitude" and not dora:
        continue
      value = parts[key].T if transform else parts[key]
      var = getattr(layer, attr)
      if tuple(value.shape) != tuple(var[...].shape):
        raise UserError(f"tensor '{PREFIX}{hf_module}.{key}' in {adapter_dir} has shape "
                        f"{tuple(parts[key].shape)}, which does not fit rank {rank}")
      var[...] = jnp.asarray(value, var[...].dtype)
    lora_layers.replace_module(model, path, layer)
  return model
