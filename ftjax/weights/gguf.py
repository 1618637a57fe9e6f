"""Imports a llama.cpp GGUF file as a Hugging Face style checkpoint.

A GGUF holds the weights (often quantized), the model hyper-parameters and the
tokenizer as metadata under llama.cpp's key names. `read_gguf` turns that into
what the rest of ftjax reads from an HF directory: a transformers-style
`config.json` dict, HF-named float32 tensors and a tokenizer directory.
`resolve_checkpoint_dir` converts a `.gguf` once into a cached HF directory
(`$FTJAX_CACHE/gguf/<sha256 prefix>/`) so the registry loads it like any other.

Conventions followed, checked against transformers' own GGUF loader (the
oracle in tests/weights/test_gguf.py):
  * Tensors are dequantized to float32 with `gguf.quants.dequantize` (numpy;
    no torch at runtime). The cached HF directory is written one tensor at a time, in
    safetensors shards, F16/BF16 tensors in their own dtype (the same values): converting never
    holds the whole model, let alone a float32 copy of it.
  * Per architecture (llama, gemma2, gemma3): llama.cpp's converter permutes a Llama's Q
    and K rows (and biases) from HF's rotate-half rotary layout to GGML's interleaved one; we
    undo it exactly as transformers' `LlamaTensorProcessor._reverse_permute_weights` does.
    Gemma's RoPE is NeoX-style (rotate-half already), so nothing is permuted, and its RMSNorm
    weights are stored as 1 + w: 1 is taken off (transformers' `Gemma2TensorProcessor`).
    Gemma hyper-parameters the file does not hold (layer pattern, local RoPE base, query
    scale) are set as llama.cpp's runtime sets them (`_gemma_config`).
  * `tie_word_embeddings` is true when the file has no `output.weight`; the
    tied `lm_head.weight` is then not emitted (as HF `save_pretrained` does).
  * The tokenizer is built by transformers' GGUF tokenizer converter
    (`convert_gguf_tokenizer`), from metadata read with the `gguf` package
    (transformers' own metadata reader imports torch).
"""

import dataclasses
import json
import logging
import os
import pathlib
import re
import shutil
import tempfile
import time
from typing import Any

import filelock
import gguf
import ml_dtypes
import numpy as np

from ftjax import sources
from ftjax.errors import UserError
from ftjax.models import rope as rope_lib
from ftjax.weights import safetensors_io

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

SUPPORTED_ARCHITECTURES = ('llama', 'gemma2', 'gemma3')

# Bump when the conversion changes, so cached HF directories are rebuilt.
FORMAT_VERSION = 4  # 2: legacy rope_scaling, eot/eom ids in generation_config eos_token_id;
# 3: safetensors shards written tensor by tensor, F16/BF16 kept in their dtype; 4: Gemma
_COMPLETE = '.ftjax-complete'

_GT = gguf.GGMLQuantizationType
# Stored as plain values, not blocks; everything else goes to gguf.quants.
_PLAIN = (_GT.F32, _GT.F16, _GT.F64)

# GGUF tensor name -> HF name (llama.cpp's convert_hf_to_gguf names), shared by the families.
_COMMON_NAMES = (
    (r'token_embd\.weight', 'model.embed_tokens.weight'),
    (r'output_norm\.weight', 'model.norm.weight'),
    (r'output\.weight', 'lm_head.weight'),
    (r'blk\.(\d+)\.attn_norm\.weight', r'model.layers.\1.input_layernorm.weight'),
    (r'blk\.(\d+)\.attn_q\.(weight|bias)', r'model.layers.\1.self_attn.q_proj.\2'),
    (r'blk\.(\d+)\.attn_k\.(weight|bias)', r'model.layers.\1.self_attn.k_proj.\2'),
    (r'blk\.(\d+)\.attn_v\.(weight|bias)', r'model.layers.\1.self_attn.v_proj.\2'),
    (r'blk\.(\d+)\.attn_output\.(weight|bias)', r'model.layers.\1.self_attn.o_proj.\2'),
    (r'blk\.(\d+)\.ffn_gate\.weight', r'model.layers.\1.mlp.gate_proj.weight'),
    (r'blk\.(\d+)\.ffn_up\.weight', r'model.layers.\1.mlp.up_proj.weight'),
    (r'blk\.(\d+)\.ffn_down\.weight', r'model.layers.\1.mlp.down_proj.weight'),
)
_LLAMA_NAMES = _COMMON_NAMES + (
    (r'blk\.(\d+)\.ffn_norm\.weight', r'model.layers.\1.post_attention_layernorm.weight'),
)
# Gemma's sandwich norms: llama.cpp's `ffn_norm` is the pre-FFN one here.
_GEMMA_NAMES = _COMMON_NAMES + (
    (r'blk\.(\d+)\.post_attention_norm\.weight',
     r'model.layers.\1.post_attention_layernorm.weight'),
    (r'blk\.(\d+)\.ffn_norm\.weight', r'model.layers.\1.pre_feedforward_layernorm.weight'),
    (r'blk\.(\d+)\.post_ffw_norm\.weight', r'model.layers.\1.post_feedforward_layernorm.weight'),
    (r'blk\.(\d+)\.attn_q_norm\.weight', r'model.layers.\1.self_attn.q_norm.weight'),
    (r'blk\.(\d+)\.attn_k_norm\.weight', r'model.layers.\1.self_attn.k_norm.weight'),
)
_NAME_RES = {arch: tuple((re.compile(g), hf) for g, hf in names)
             for arch, names in (('llama', _LLAMA_NAMES), ('gemma2', _GEMMA_NAMES),
                                 ('gemma3', _GEMMA_NAMES))}
# llama.cpp derives these from the config; transformers drops them too.
_SKIPPED = frozenset({'rope_freqs.weight'})

# tokenizer.ggml.* keys -> transformers' names (its GGUF_TOKENIZER_MAPPING).
_SPECIAL_TOKENS = {'bos_token': 'bos_token_id', 'eos_token': 'eos_token_id',
                   'unk_token': 'unknown_token_id', 'pad_token': 'padding_token_id'}


@dataclasses.dataclass
class GgufCheckpoint:
  """A GGUF file read as an HF checkpoint.

  Attributes:
    path: the GGUF file.
    hf_config: a transformers-style `config.json` dict.
    tensors: HF name -> float32 array (empty when read with tensors=False).
    tokenizer_dir: directory holding `tokenizer.json` and
      `tokenizer_config.json` (None when read with tokenizer=False).
    generation_config: a `generation_config.json` dict (token ids).
    tensor_types: GGUF tensor name -> GGUF type name, e.g. 'Q4_1'.
  """
  path: pathlib.Path
  hf_config: dict[str, Any]
  tensors: dict[str, np.ndarray]
  tokenizer_dir: pathlib.Path | None
  generation_config: dict[str, Any]
  tensor_types: dict[str, str]


# --- reading ------------------------------------------------------------------


def _open(path: pathlib.Path) -> gguf.GGUFReader:
  if not path.is_file():
    raise UserError(f'GGUF file {path} does not exist')
  try:
    reader = gguf.GGUFReader(str(path))
  except Exception as e:  # ValueError, IndexError, struct errors: bad bytes.
    raise UserError(f'cannot read GGUF file {path}: it is truncated or corrupt '
                    f'({type(e).__name__}: {e})') from e
  # The reader makes views without checking they reach the file's end, so a
  # truncated data section shows up as short tensors.
  for tensor in reader.tensors:
    block, type_bytes = gguf.GGML_QUANT_SIZES.get(tensor.tensor_type, (1, 0))
    want = int(tensor.n_elements) // block * type_bytes
    if type_bytes and tensor.data.nbytes != want:
      raise UserError(f'cannot read GGUF file {path}: it is truncated or corrupt '
                      f"(tensor '{tensor.name}' has {tensor.data.nbytes} of "
                      f'{want} bytes)')
  return reader


def _metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
  """Metadata key -> Python value (str, int, float, bool or list)."""
  return {key: field.contents() for key, field in reader.fields.items()
          if not key.startswith('GGUF.')}


# GGUF types kept in their own dtype in the HF cache; every other (quantized) type becomes
# float32, which holds its dequantized values exactly.
_OWN_DTYPE = {_GT.F16: np.float16, _GT.BF16: ml_dtypes.bfloat16}


def _dequantize(tensor, path: pathlib.Path, *, own_dtype: bool = False) -> np.ndarray:
  """One tensor in numpy (HF) axis order: float32, or with `own_dtype` F16/BF16 kept as
  float16/bfloat16 (the same values, half the bytes)."""
  qtype = tensor.tensor_type
  shape = tuple(int(d) for d in reversed(tensor.shape))  # GGML lists dims fastest first.
  dtype = _OWN_DTYPE.get(qtype, np.float32) if own_dtype else np.float32
  if qtype in _PLAIN:
    values = tensor.data
  else:
    try:
      values = gguf.quants.dequantize(tensor.data, qtype)
    except NotImplementedError:
      raise UserError(
          f"tensor '{tensor.name}' in {path} has GGUF type {qtype.name}, which "
          f'ftjax cannot dequantize; supported: {", ".join(supported_types())}'
      ) from None
  return np.array(values, dtype=dtype).reshape(shape)  # Copy: off the mmap.


def supported_types() -> tuple[str, ...]:
  """GGUF tensor type names that `read_gguf` can turn into float32."""
  quant = set(gguf.quants._type_traits)  # pylint: disable=protected-access
  return tuple(t.name for t in _GT if t in _PLAIN or t in quant)


def _reverse_permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Undoes llama.cpp's rotary row permutation of a Q or K weight (or bias).

  Same as transformers' `LlamaTensorProcessor._reverse_permute_weights`.
  """
  dim = w.shape[0] // n_head // 2
  return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def _hf_name(gguf_name: str, arch: str, path: pathlib.Path) -> str | None:
  if gguf_name in _SKIPPED:
    return None
  for rx, hf in _NAME_RES[arch]:
    if rx.fullmatch(gguf_name):
      return rx.sub(hf, gguf_name)
  raise UserError(f"tensor '{gguf_name}' in {path} is not part of a {arch} model "
                  "ftjax knows (mixture-of-experts and other variants are not "
                  'supported)')


def _hf_config(meta: dict[str, Any], tensor_names: set[str],
               path: pathlib.Path) -> dict[str, Any]:
  """A transformers config dict (Llama, Gemma 2 or Gemma 3 text) from the `<arch>.*` and
  `tokenizer.*` keys."""
  arch = meta['general.architecture']

  def get(key, default=None, required=True):
    value = meta.get(f'{arch}.{key}', default)
    if value is None and required:
      raise UserError(f"GGUF file {path} lacks metadata key '{arch}.{key}'")
    if isinstance(value, list):
      raise UserError(f"GGUF file {path} has a per-layer '{arch}.{key}', "
                      f'which {arch} models do not support')
    return value

  heads = int(get('attention.head_count'))
  hidden = int(get('embedding_length'))
  head_dim = int(get('attention.key_length', hidden // heads))
  rotary = int(get('rope.dimension_count', head_dim))
  if rotary != head_dim:
    raise UserError(f'GGUF file {path} rotates {rotary} of {head_dim} head '
                    f'dimensions; {arch} models rotate all of them')
  tokens = meta.get('tokenizer.ggml.tokens')
  vocab = get('vocab_size', len(tokens) if tokens else None)
  rope = {'rope_theta': float(get('rope.freq_base', 10000.0)),
          'rope_type': 'default'}
  scaling = get('rope.scaling.type', 'none', required=False)
  if scaling == 'linear':
    rope.update(rope_type='linear', factor=float(get('rope.scaling.factor')))
  elif scaling != 'none':
    raise UserError(f"GGUF file {path} uses rope scaling '{scaling}'; "
                    "supported: 'none', 'linear'")
  config = {
      'vocab_size': int(vocab),
      'hidden_size': hidden,
      'intermediate_size': int(get('feed_forward_length')),
      'num_hidden_layers': int(get('block_count')),
      'num_attention_heads': heads,
      'num_key_value_heads': int(get('attention.head_count_kv', heads)),
      'head_dim': head_dim,
      'rms_norm_eps': float(get('attention.layer_norm_rms_epsilon')),
      'max_position_embeddings': int(get('context_length')),
      'attention_bias': 'blk.0.attn_q.bias' in tensor_names,
      'tie_word_embeddings': 'output.weight' not in tensor_names,
      'dtype': 'float32',
  }
  config.update(_FAMILY_CONFIG[arch](get, rope, config))
  for name, key in (('bos_token_id', 'bos_token_id'),
                    ('eos_token_id', 'eos_token_id'),
                    ('pad_token_id', 'padding_token_id'),
                    ('unk_token_id', 'unknown_token_id')):
    if f'tokenizer.ggml.{key}' in meta:
      config[name] = int(meta[f'tokenizer.ggml.{key}'])
  return config


def _llama_config(get, rope, common) -> dict[str, Any]:
  del get, common
  return {'architectures': ['LlamaForCausalLM'], 'model_type': 'llama', 'hidden_act': 'silu',
          'mlp_bias': False, 'rope_parameters': rope,
          **rope_lib.legacy_keys(rope)}  # Older readers look here.


def _gemma_config(arch: str):
  """Gemma 2 / 3 keys the file does not hold come as llama.cpp's runtime sets them: every
  second (Gemma 2) or sixth (Gemma 3) layer global, Gemma 3's local RoPE base 10k, queries
  scaled by head_dim ** -0.5 (llama.cpp's rule for all but the 27B models, which use
  hidden / heads; transformers' default, 256, equals head_dim for the other sizes)."""
  def config(get, rope, common) -> dict[str, Any]:
    layers = common['num_hidden_layers']
    out = {'hidden_activation': 'gelu_pytorch_tanh',
           'sliding_window': int(get('attention.sliding_window', 4096)),
           'query_pre_attn_scalar': common['head_dim']}
    if arch == 'gemma2':
      pattern = 2
      if layers == 46:  # Gemma 2 27B (see above)
        out['query_pre_attn_scalar'] = common['hidden_size'] // common['num_attention_heads']
      out.update(architectures=['Gemma2ForCausalLM'], model_type='gemma2',
                 rope_parameters=rope, **rope_lib.legacy_keys(rope),
                 attn_logit_softcapping=float(get('attn_logit_softcapping', 50.0)),
                 final_logit_softcapping=float(get('final_logit_softcapping', 30.0)))
    else:
      pattern = 6
      if layers == 62:  # Gemma 3 27B (see above)
        out['query_pre_attn_scalar'] = common['hidden_size'] // common['num_attention_heads']
      local = {'rope_type': 'default', 'rope_theta': 10000.0}
      out.update(architectures=['Gemma3ForCausalLM'], model_type='gemma3_text',
                 rope_parameters={'full_attention': rope, 'sliding_attention': local},
                 **rope_lib.legacy_keys(rope), rope_local_base_freq=10000.0,
                 final_logit_softcapping=get('final_logit_softcapping', None, required=False),
                 attn_logit_softcapping=None, use_bidirectional_attention=False)
    out['layer_types'] = ['sliding_attention' if (i + 1) % pattern else 'full_attention'
                          for i in range(layers)]
    return out
  return config


_FAMILY_CONFIG = {'llama': _llama_config, 'gemma2': _gemma_config('gemma2'),
                  'gemma3': _gemma_config('gemma3')}
_ARCHITECTURE_OF = {'llama': 'llama', 'gemma2': 'gemma2', 'gemma3_text': 'gemma3'}  # model_type


def _generation_config(meta: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
  """Token ids for `generation_config.json`; its `eos_token_id` lists the end-of-turn (eot) and
  end-of-message (eom) tokens too when the GGUF declares them (Llama 3 Instruct's `<|eot_id|>`),
  so generation stops where the model ends its turn, as llama.cpp does."""
  generation = {k: config[k] for k in ('bos_token_id', 'eos_token_id', 'pad_token_id')
                if k in config}
  stops = [int(meta[f'tokenizer.ggml.{key}']) for key in ('eos_token_id', 'eot_token_id',
                                                          'eom_token_id')
           if f'tokenizer.ggml.{key}' in meta]
  stops = list(dict.fromkeys(stops))
  if len(stops) > 1:
    generation['eos_token_id'] = stops
  return generation


def _check_architecture(meta: dict[str, Any], path: pathlib.Path) -> None:
  arch = meta.get('general.architecture')
  if arch not in SUPPORTED_ARCHITECTURES:
    raise UserError(f"GGUF file {path} has architecture '{arch}'; supported: "
                    + ', '.join(SUPPORTED_ARCHITECTURES))


def _iter_tensors(reader: gguf.GGUFReader, config: dict[str, Any], path: pathlib.Path, *,
                  own_dtype: bool = False):
  """(HF name, array) of every weight, dequantized one at a time (`_dequantize`).

  Llama: Q/K rows un-permuted. Gemma: llama.cpp stores every RMSNorm weight as 1 + w (its
  NeoX-style RoPE needs no permutation), so 1 is taken off, as transformers' loader does.
  """
  arch = _ARCHITECTURE_OF[config['model_type']]
  heads = config['num_attention_heads']
  kv_heads = config['num_key_value_heads']
  for tensor in reader.tensors:
    name = _hf_name(tensor.name, arch, path)  # Before dequantizing: fail fast.
    if name is None:
      continue
    array = _dequantize(tensor, path, own_dtype=own_dtype)
    if arch == 'llama' and '.attn_q.' in tensor.name:
      array = _reverse_permute(array, heads)
    elif arch == 'llama' and '.attn_k.' in tensor.name:
      array = _reverse_permute(array, kv_heads)
    elif arch != 'llama' and name.endswith('norm.weight'):
      array = (array.astype(np.float32) - 1.0).astype(array.dtype)
    yield name, array


def _tensors(reader: gguf.GGUFReader, config: dict[str, Any],
             path: pathlib.Path) -> dict[str, np.ndarray]:
  return dict(_iter_tensors(reader, config, path))


def _tokenizer_parts(meta: dict[str, Any]) -> tuple[dict, dict]:
  """(tokenizer_dict, tokenizer_config) as transformers' `get_gguf_tokenizer`.

  Re-done here because transformers' version reads metadata with a module that
  imports torch.
  """
  # pylint: disable-next=g-import-not-at-top
  from transformers.integrations.gguf import gguf_tokenizer_mapping as tm
  grouped = {group: {name: meta[f'tokenizer.{key}'] for key, name in renames.items()
                     if f'tokenizer.{key}' in meta}
             for group, renames in tm.GGUF_TOKENIZER_MAPPING.items()}
  tokenizer, tokenizer_config = grouped['tokenizer'], grouped['tokenizer_config']
  kind = tokenizer.get('tokenizer_type')
  if kind == 'llama':  # llama.cpp adds BOS to sentencepiece vocabularies by default.
    tokenizer_config.setdefault('add_bos_token', True)
  elif kind == 'gemma4':
    tokenizer_config['add_bos_token'] = False
  for name, key in _SPECIAL_TOKENS.items():
    token_id = meta.get(f'tokenizer.ggml.{key}')
    tokenizer_config[name] = (tokenizer['tokens'][token_id]
                              if token_id is not None else None)
  return tokenizer, tokenizer_config


def write_tokenizer(meta: dict[str, Any], out_dir: PathLike,
                    path: pathlib.Path) -> pathlib.Path:
  """Writes `tokenizer.json` + `tokenizer_config.json` built from GGUF metadata."""
  # pylint: disable=g-import-not-at-top
  from transformers.integrations.gguf import gguf_tokenizer_mapping as tm
  from transformers.tokenization_utils_tokenizers import TokenizersBackend
  # pylint: enable=g-import-not-at-top
  if 'tokenizer.ggml.tokens' not in meta:
    raise UserError(f'GGUF file {path} has no tokenizer (no tokenizer.ggml.tokens)')
  tokenizer_dict, tokenizer_config = _tokenizer_parts(meta)
  try:
    backend, extra = tm.convert_gguf_tokenizer(meta['general.architecture'],
                                               tokenizer_dict)
  except ValueError as e:  # An unknown tokenizer.ggml.model.
    raise UserError(f'cannot build the tokenizer of GGUF file {path}: {e}') from e
  tokenizer = TokenizersBackend(tokenizer_object=backend,
                                **{**tokenizer_config, **extra})
  out_dir = pathlib.Path(out_dir)
  tokenizer.save_pretrained(str(out_dir))
  return out_dir


def read_gguf(path: PathLike, *, tensors: bool = True, tokenizer: bool = True,
              tokenizer_dir: PathLike | None = None) -> GgufCheckpoint:
  """Reads a GGUF file (architecture llama, gemma2 or gemma3) as an HF checkpoint.

  Args:
    path: the `.gguf` file.
    tensors: dequantize the weights (False: config and tokenizer only).
    tokenizer: write the tokenizer files.
    tokenizer_dir: where to write them; default a new temporary directory
      that the caller owns.

  Returns:
    The checkpoint.

  Raises:
    UserError: the file is missing, truncated or corrupt; its architecture is
      not supported; a tensor is unknown or has a type ftjax cannot dequantize.
  """
  path = pathlib.Path(path)
  start = time.perf_counter()
  reader = _open(path)
  meta = _metadata(reader)
  _check_architecture(meta, path)
  names = {t.name for t in reader.tensors}
  config = _hf_config(meta, names, path)
  types = {t.name: t.tensor_type.name for t in reader.tensors}
  weights = _tensors(reader, config, path) if tensors else {}
  tok_dir = None
  if tokenizer:
    tok_dir = pathlib.Path(tokenizer_dir or tempfile.mkdtemp(prefix='ftjax-gguf-tok-'))
    write_tokenizer(meta, tok_dir, path)
  generation = _generation_config(meta, config)
  log.info('read GGUF %s (%d tensors) in %.1fs', path, len(weights),
           time.perf_counter() - start)
  return GgufCheckpoint(path=path, hf_config=config, tensors=weights,
                        tokenizer_dir=tok_dir, generation_config=generation,
                        tensor_types=types)


# --- HF directory cache -------------------------------------------------------


def _write_json(obj: dict[str, Any], file: pathlib.Path) -> None:
  file.write_text(json.dumps(obj, indent=2, sort_keys=True) + '\n')


def materialize_hf_dir(gguf_path: PathLike, out_dir: PathLike) -> pathlib.Path:
  """Writes an HF checkpoint directory for a GGUF file, atomically.

  `out_dir` gets `config.json`, safetensors shards with their index (F16/BF16 tensors in their
  own dtype, quantized ones dequantized to float32, one tensor at a time),
  `generation_config.json` and the tokenizer files. Everything is written into
  a temporary sibling directory that is renamed into place, so a crash never
  leaves a directory that looks complete. An existing complete `out_dir` of
  the current format is kept as is.

  Returns:
    `out_dir`.
  """
  gguf_path, out = pathlib.Path(gguf_path), pathlib.Path(out_dir)
  if _is_complete(out):
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{out.name}.tmp-', dir=out.parent))
  try:
    ckpt = read_gguf(gguf_path, tensors=False, tokenizer_dir=tmp)
    _write_json(ckpt.hf_config, tmp / 'config.json')
    _write_json(ckpt.generation_config, tmp / 'generation_config.json')
    _write_shards(_iter_tensors(_open(gguf_path), ckpt.hf_config, gguf_path, own_dtype=True), tmp)
    _write_json({'source': str(gguf_path.absolute()), 'format': FORMAT_VERSION},
                tmp / _COMPLETE)
    if out.exists():  # Incomplete or an older format: replace it.
      shutil.rmtree(out)
    os.rename(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out


SHARD_BYTES = 1 << 30  # safetensors shard size of the HF cache


def _write_shards(tensors, out: pathlib.Path) -> None:
  """Writes (name, array) pairs as safetensors shards of at most SHARD_BYTES (or one tensor) with
  their `model.safetensors.index.json`; at most one shard is in memory at a time."""
  weight_map, shard, size, count = {}, {}, 0, 0

  def flush():
    nonlocal shard, size, count
    count += 1
    file = f'model-{count:05d}.safetensors'
    safetensors_io.write_safetensors(shard, out / file)
    weight_map.update({name: file for name in shard})
    shard, size = {}, 0

  for name, array in tensors:
    if shard and size + array.nbytes > SHARD_BYTES:
      flush()
    shard[name] = array
    size += array.nbytes
  if shard:
    flush()
  _write_json({'metadata': {}, 'weight_map': weight_map}, out / safetensors_io.INDEX_FILE)


def _is_complete(out: pathlib.Path) -> bool:
  try:
    return json.loads((out / _COMPLETE).read_text()).get('format') == FORMAT_VERSION
  except (OSError, ValueError):
    return False


def is_gguf(path: PathLike) -> bool:
  """Whether `path` is a file named `*.gguf`."""
  path = pathlib.Path(path)
  return path.suffix.lower() == '.gguf' and path.is_file()


def resolve_checkpoint_dir(path: PathLike, *,
                           cache_dir: PathLike | None = None) -> pathlib.Path:
  """The HF checkpoint directory for `path`.

  A directory is returned as is. A `.gguf` file is converted once (keyed by
  its content hash) into `<cache>/gguf/<sha256[:16]>/` and that directory
  returned; the cache root is `cache_dir`, else `$FTJAX_CACHE`, else
  `~/.cache/ftjax`.

  Raises:
    UserError: `path` is neither a directory nor a `.gguf` file, or the GGUF
      cannot be converted.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    return path
  if not is_gguf(path):
    raise UserError(f'checkpoint {path} is neither a directory nor a .gguf file'
                    if path.exists() else f'checkpoint {path} does not exist')
  root = sources.cache_root(cache_dir) / 'gguf'
  out = root / sources.file_sha256(path)[:16]
  if _is_complete(out):
    return out
  (root / '.locks').mkdir(parents=True, exist_ok=True)
  # One converter per file at a time; the others wait and reuse its result.
  with filelock.FileLock(str(root / '.locks' / f'{out.name}.lock')):
    if not _is_complete(out):
      log.info('converting GGUF %s into %s', path, out)
      materialize_hf_dir(path, out)
  return out
