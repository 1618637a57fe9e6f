"""Writes an HF-style Llama checkpoint directory as one llama.cpp GGUF file.

The inverse of `gguf.py`'s import, with the `gguf` package's writer: llama.cpp's tensor names
(`gguf._LLAMA_NAMES`), Q and K rows permuted from HF's rotate-half rotary layout to GGML's
interleaved one (what llama.cpp's `convert_hf_to_gguf.py` does and the import undoes), the
hyper-parameters under `llama.*`, and the tokenizer under `tokenizer.ggml.*` with its merges,
special token ids, BOS/EOS flags and chat template (`gguf.SpecialVocab`), so llama.cpp, Ollama,
LM Studio and transformers' GGUF loader run the file with its chat format.

Types (`GGUF_TYPES`): `f16`, `bf16` or `q8_0` for the matrices; vectors (norms, biases) stay
F32 as llama.cpp keeps them; a matrix whose rows do not split into Q8_0's blocks of 32 falls
back to F16 (as llama.cpp does). The tensor infos are written first and the data one tensor at
a time, so the writer holds one tensor in memory, not the model. Covered: `model_type` llama with default or linear RoPE
(SmolLM2, Llama 3; not yet Llama 3.1's `llama3` RoPE, which llama.cpp stores as a
`rope_freqs` tensor) and byte-level BPE tokenizers (`tokenizer.ggml.model = gpt2`); anything
else is refused by name.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import gguf
import numpy as np

from ftjax.errors import UserError
from ftjax.models import rope as rope_lib
from ftjax.weights import gguf as gguf_import
from ftjax.weights import safetensors_io

_GT = gguf.GGMLQuantizationType
GGUF_TYPES = {"f16": (_GT.F16, gguf.LlamaFileType.MOSTLY_F16),
              "bf16": (_GT.BF16, gguf.LlamaFileType.MOSTLY_BF16),
              "q8_0": (_GT.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)}


def _inverted(gguf_pattern: str, hf_replacement: str) -> tuple[re.Pattern, str]:
  """One row of the import's (GGUF regex, HF replacement) table read the other way: the HF
  regex (its `\\1` a layer number, its `\\2` weight or bias) and the GGUF replacement."""
  hf = re.escape(hf_replacement).replace(r"\\1", r"(\d+)").replace(r"\\2", "(weight|bias)")
  groups = iter((r"\1", r"\2"))
  name = re.sub(r"\((\\d\+|weight\|bias)\)", lambda _: next(groups), gguf_pattern)
  return re.compile(hf), name.replace("\\.", ".")


# HF name -> GGUF name: the import's table (`gguf._LLAMA_NAMES`) inverted.
_TO_GGUF = tuple(_inverted(g, hf) for g, hf in gguf_import._LLAMA_NAMES)  # pylint: disable=protected-access
_TOKEN_TYPE = gguf.TokenType
_BLOCKED = (_GT.Q8_0, _GT.BF16)  # stored as bytes: their numpy shape is in bytes, not values


def gguf_name(hf_name: str, source: pathlib.Path) -> str:
  for rx, name in _TO_GGUF:
    if rx.fullmatch(hf_name):
      return rx.sub(name, hf_name)
  raise UserError(f"tensor '{hf_name}' in {source} has no GGUF name in the llama layout")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """HF's rotate-half rows of a Q or K weight (or bias) -> GGML's interleaved pairs; the
  inverse of `gguf._reverse_permute`."""
  dim = w.shape[0] // n_head // 2
  return w.reshape(n_head, 2, dim, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _encode(name: str, array: np.ndarray, kind: str) -> tuple[np.ndarray, "_GT"]:
  """(data, GGML type) of one tensor: vectors in F32, matrices in `kind` (F16 for rows Q8_0's
  blocks do not divide)."""
  array = np.asarray(array, np.float32)
  if array.ndim < 2:
    return array, _GT.F32
  qtype = GGUF_TYPES[kind][0]
  if qtype == _GT.Q8_0 and array.shape[-1] % gguf.GGML_QUANT_SIZES[_GT.Q8_0][0]:
    qtype = _GT.F16
  if qtype == _GT.F16:
    return array.astype(np.float16), _GT.F16
  return gguf.quants.quantize(array, qtype), qtype


def _read_json(path: pathlib.Path) -> dict:
  return json.loads(path.read_text()) if path.is_file() else {}


def _add_hyperparameters(writer: gguf.GGUFWriter, config: dict, source: pathlib.Path) -> None:
  if config.get("model_type") != "llama":
    raise UserError(f"GGUF export covers the llama architecture; '{source}' is "
                    f"'{config.get('model_type')}'")
  heads = config["num_attention_heads"]
  head_dim = config.get("head_dim") or config["hidden_size"] // heads
  rope = rope_lib.RopeConfig.from_hf(config, f"{source}/config.json")
  if rope.rope_type not in ("default", "linear"):
    raise UserError(f"GGUF export of rope_type '{rope.rope_type}' ({source}/config.json) is not "
                    "supported; supported: default, linear")
  writer.add_context_length(config["max_position_embeddings"])
  writer.add_embedding_length(config["hidden_size"])
  writer.add_block_count(config["num_hidden_layers"])
  writer.add_feed_forward_length(config["intermediate_size"])
  writer.add_head_count(heads)
  writer.add_head_count_kv(config.get("num_key_value_heads", heads))
  writer.add_key_length(head_dim)
  writer.add_value_length(head_dim)
  writer.add_rope_dimension_count(head_dim)
  writer.add_rope_freq_base(rope.theta)
  if rope.rope_type == "linear":
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(rope.factor)
  writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
  writer.add_vocab_size(config["vocab_size"])


def _add_tokenizer(writer: gguf.GGUFWriter, source: pathlib.Path, vocab_size: int) -> None:
  file = source / "tokenizer.json"
  if not file.is_file():
    raise UserError(f"GGUF export needs the tokenizer: no tokenizer.json in {source}")
  spec = json.loads(file.read_text())
  model = spec.get("model", {})
  pre = json.dumps(spec.get("pre_tokenizer"))
  if model.get("type") != "BPE" or "ByteLevel" not in pre:
    raise UserError(f"GGUF export covers byte-level BPE tokenizers; {file} is "
                    f"{model.get('type')} with pre-tokenizer {json.loads(pre) and json.loads(pre).get('type')}")
  tokens = {i: t for t, i in model["vocab"].items()}
  types = {i: _TOKEN_TYPE.NORMAL for i in tokens}
  for added in spec.get("added_tokens", []):
    tokens[added["id"]] = added["content"]
    types[added["id"]] = _TOKEN_TYPE.CONTROL if added.get("special") else _TOKEN_TYPE.USER_DEFINED
  size = max(vocab_size, max(tokens) + 1)
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("default")
  writer.add_token_list([tokens.get(i, f"[PAD{i}]") for i in range(size)])
  writer.add_token_types([int(types.get(i, _TOKEN_TYPE.UNUSED)) for i in range(size)])
  # Merges, special token ids, add_bos/add_eos flags and the chat template (tokenizer_config.json
  # or chat_template.jinja), as llama.cpp's converter reads them.
  special = gguf.SpecialVocab(source, load_merges=True, n_vocab=size)
  if not special.merges:
    raise UserError(f"tokenizer {file} has no BPE merges")
  if special.chat_template is None and (source / "chat_template.jinja").is_file():
    special.chat_template = (source / "chat_template.jinja").read_text()
  special.add_to_gguf(writer, quiet=True)


def write_gguf(source: os.PathLike, out: os.PathLike, kind: str = "f16", *,
               name: str | None = None) -> pathlib.Path:
  """Writes the HF Llama checkpoint directory `source` (config.json, safetensors, tokenizer)
  as the GGUF file `out` with matrices of type `kind` (`GGUF_TYPES`). Returns `out`."""
  if kind not in GGUF_TYPES:
    raise UserError(f"unknown GGUF type '{kind}'; known: {', '.join(GGUF_TYPES)}")
  source, out = pathlib.Path(source), pathlib.Path(out)
  config = _read_json(source / "config.json")
  writer = gguf.GGUFWriter(str(out), "llama")
  try:
    writer.add_name(name or source.name)
    writer.add_file_type(GGUF_TYPES[kind][1])
    _add_hyperparameters(writer, config, source)
    _add_tokenizer(writer, source, config["vocab_size"])
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    reader = safetensors_io.CheckpointReader(source)
    names = sorted(reader.shapes, key=_layer_order)
    targets = [gguf_name(n, source) for n in names]  # every name checked before any write

    def encoded(hf_name, target):
      array = reader.read(hf_name)
      if ".attn_q." in target:
        array = _permute(array, heads)
      elif ".attn_k." in target:
        array = _permute(array, kv_heads)
      return _encode(target, array, kind)

    # Tensor infos first (shapes and byte sizes from a one-row encoding), then the data one
    # tensor at a time: the file is written with one tensor in memory, not the whole model.
    for hf_name, target in zip(names, targets):
      shape = tuple(reader.shapes[hf_name])
      row, qtype = _encode(target, np.zeros((1,) * (len(shape) - 1) + shape[-1:], np.float32), kind)
      rows = int(np.prod(shape[:-1], dtype=np.int64))
      writer.add_tensor_info(target, shape[:-1] + row.shape[-1:] if qtype in _BLOCKED else shape,
                             row.dtype, rows * row.nbytes, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for hf_name, target in zip(names, targets):
      data, _ = encoded(hf_name, target)
      writer.write_tensor_data(data)
  except BaseException:
    writer.close()
    out.unlink(missing_ok=True)
    raise
  writer.close()
  return out


def _layer_order(hf_name: str):
  """Embeddings, then layer by layer (numerically), then the final norm and head."""
  match = re.search(r"layers\.(\d+)\.", hf_name)
  if match:
    return (1, int(match.group(1)), hf_name)
  return (0 if "embed" in hf_name else 2, 0, hf_name)
