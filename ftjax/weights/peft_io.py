"""PEFT's adapter format on disk: `adapter_config.json` + `adapter_model.safetensors`.

Tensor names are the Hugging Face module names under `base_model.model.` (prompt-learning
adapters: under `base_model.`); modules trained in full (the classification head) are saved
whole and listed in `modules_to_save`. Module names come from the model's weight table
(`ftjax/weights/*_table.py`, through `registry.weight_table`), so this works for any
registered model family.

This is the format layer only, below the methods: each method owns its mapping (which tensors
it writes, their PyTorch layouts, and importing; e.g. `methods/lora_peft.py`) and builds it
from `ModelNames`, `base_config`, `write_adapter` and `read_adapter`.
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
from ftjax.models import registry
from ftjax.weights import safetensors_io

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
PROMPT_PREFIX = "base_model."  # prompt learning: no `.model`
# model task -> PEFT's task type (None: PEFT has none for multiple choice; the adapter then
# loads as a plain `PeftModel` on `AutoModelForMultipleChoice`).
TASK_TYPES = {"classification": "SEQ_CLS", "base": "FEATURE_EXTRACTION", "causal_lm": "CAUSAL_LM",
              "token_classification": "TOKEN_CLS", "question_answering": "QUESTION_ANS",
              "multiple_choice": None}


class ModelNames:
  """The Hugging Face names of one model's modules and parameters, and its task.

  Works through prompt-learning decoder wrappers (`registry.family_and_task`)."""

  def __init__(self, model: nnx.Module):
    _, self.task = registry.family_and_task(model)
    self.table = safetensors_io.CompiledTable(registry.weight_table(model))

  def hf_module(self, module_path: str) -> str:
    """NNX module path -> HF module name, through the table's name for its `kernel`."""
    hit = self.table.to_hf(f"{module_path}.kernel")
    if hit is None or not hit[0].endswith(".weight"):
      raise UserError(f"module '{module_path}' has no Hugging Face name in the weight table")
    return hit[0][: -len(".weight")]

  def module_path(self, hf_module: str) -> str | None:
    """HF module name -> NNX module path (of a module with a `kernel`), or None."""
    hit = self.table.to_nnx(f"{hf_module}.weight")
    if hit is None or not hit[0].endswith(".kernel"):
      return None
    return hit[0][: -len(".kernel")]

  def head_tensors(self, model: nnx.Module, pattern: str,
                   prefix: str = PREFIX) -> tuple[dict[str, np.ndarray], list[str]]:
    """The params whose path matches `pattern` (the head a method trains in full), HF-named
    under `prefix` in PyTorch layouts, and their module names (for `modules_to_save`)."""
    tensors, modules = {}, set()
    for path, var in safetensors_io.param_vars(model).items():
      if not re.search(pattern, path):
        continue
      hit = self.table.to_hf(path)
      if hit is None:
        raise UserError(f"head parameter '{path}' has no Hugging Face name")
      name, rule = hit
      tensors[prefix + name] = np.asarray(safetensors_io.apply_transform(
          rule.transform, np.asarray(jax.device_get(var[...]))))
      modules.add(_head_module(name.rsplit(".", 1)[0], pattern))
    return tensors, sorted(modules)

  def load_tensors(self, model: nnx.Module, tensors: dict[str, np.ndarray], source) -> None:
    """Writes whole-parameter tensors (`modules_to_save`, HF-named under `PREFIX`) into
    `model`'s params, in place; a tensor that fits no param is a UserError naming it."""
    params = safetensors_io.param_vars(model)
    for name, value in tensors.items():
      hf = name[len(PREFIX):] if name.startswith(PREFIX) else name
      hit = self.table.to_nnx(hf)
      if hit is None or hit[0] not in params:
        raise UserError(f"tensor '{name}' in {source} matches no parameter of the model")
      path, rule = hit
      var = params[path]
      value = safetensors_io.apply_transform(rule.transform, value)
      if tuple(value.shape) != tuple(var[...].shape):
        raise UserError(f"tensor '{name}' in {source} has shape {tuple(value.shape)}, "
                        f"model expects {tuple(var[...].shape)}")
      var[...] = jnp.asarray(value, var[...].dtype)


def _head_module(module: str, pattern: str) -> str:
  """The outermost module of `module` that `pattern` matches: PEFT wraps a whole head
  (RoBERTa's `classifier` holds `dense` and `out_proj`), and listing its parts as well makes
  PEFT wrap them twice."""
  parts = module.split(".")
  return next((".".join(parts[:i]) for i in range(1, len(parts) + 1)
               if re.search(pattern, ".".join(parts[:i]))), module)


def as_numpy(x) -> np.ndarray:
  """A device array as a contiguous float32 numpy array (PEFT's adapter dtype)."""
  return np.ascontiguousarray(np.asarray(jax.device_get(x), np.float32))


def write_adapter(out_dir, config: dict, tensors: dict[str, np.ndarray]) -> pathlib.Path:
  """Writes `tensors` and `config` as a PEFT adapter directory (config last, atomically)."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  safetensors_io.write_safetensors(tensors, out_dir / WEIGHTS_FILE)
  tmp = out_dir / f".{CONFIG_FILE}.tmp-{os.getpid()}"
  tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, out_dir / CONFIG_FILE)
  return out_dir


def base_config(peft_type: str, task: str, base_path: str, modules_to_save) -> dict[str, Any]:
  """The keys every PEFT adapter config has; methods add their own."""
  return {"peft_type": peft_type, "task_type": TASK_TYPES[task], "inference_mode": True,
          "base_model_name_or_path": str(base_path), "revision": None,
          "modules_to_save": modules_to_save or None}


def export_prompt_learning(model: nnx.Module, out_dir, *, base_path: str, peft_type: str,
                           prompt_embeddings: np.ndarray, extra: dict,
                           head_pattern: str) -> pathlib.Path:
  """Writes a prompt- or prefix-tuning adapter: `prompt_embeddings` plus the head (the params
  matching `head_pattern`)."""
  names = ModelNames(model)
  head, head_modules = names.head_tensors(model, head_pattern, PROMPT_PREFIX)
  tensors = {"prompt_embeddings": np.ascontiguousarray(prompt_embeddings, np.float32), **head}
  config = base_config(peft_type, names.task, base_path, head_modules)
  config.update(num_transformer_submodules=1, **extra)
  return write_adapter(out_dir, config, tensors)


def read_adapter(adapter_dir) -> tuple[dict, dict[str, np.ndarray]]:
  """(adapter_config.json as a dict, tensors by name) of a PEFT adapter directory; anything
  missing or unreadable is a UserError naming the file."""
  adapter_dir = pathlib.Path(adapter_dir)
  config_file = adapter_dir / CONFIG_FILE
  if not config_file.is_file():
    raise UserError(f"no {CONFIG_FILE} in PEFT adapter directory {adapter_dir}")
  try:
    config = json.loads(config_file.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise UserError(f"invalid JSON in {config_file}: {e}") from e
  if not isinstance(config, dict):
    raise UserError(f"{config_file} is not a JSON object")
  weights = adapter_dir / WEIGHTS_FILE
  if not weights.is_file():
    raise UserError(f"no {WEIGHTS_FILE} in PEFT adapter directory {adapter_dir}")
  try:
    tensors = safetensors.numpy.load_file(str(weights))
  except Exception as e:  # SafetensorError, OSError: truncated or corrupt.
    raise UserError(f"cannot read {weights}: {e}") from e
  return config, tensors
