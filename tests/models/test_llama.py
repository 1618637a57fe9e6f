"""Tests for ftjax.models.llama (+ rope, attention, kv_cache, llama_table).

The oracle is `transformers` (PyTorch, eval mode) on tiny random checkpoints
saved with `save_pretrained`: Llama 3 (llama3 RoPE scaling), Llama with
linear RoPE and biases, SmolLM2-like (tied), Mistral (sliding window), Qwen2
(q/k/v biases, a sliding layer) and Qwen3 (q/k norms, explicit head_dim).
"""

import json

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from ftjax.errors import UserError
from ftjax.models import llama
from ftjax.models import registry
from ftjax.models import rope as rope_lib
from ftjax.weights import safetensors_io
import decoder_oracle

VOCAB = 101
TINY = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=64)
VARIANTS = {
    'llama3': (transformers.LlamaConfig, dict(rope_scaling=dict(
        rope_type='llama3', factor=8.0, low_freq_factor=1.0,
        high_freq_factor=4.0, original_max_position_embeddings=16))),
    'llama_linear_bias': (transformers.LlamaConfig, dict(
        rope_scaling=dict(type='linear', factor=2.0), rope_theta=500.0,
        attention_bias=True, mlp_bias=True)),
    'smollm2': (transformers.LlamaConfig, dict(tie_word_embeddings=True,
                                               num_key_value_heads=1)),
    'mistral': (transformers.MistralConfig, dict(sliding_window=3)),
    'qwen2': (transformers.Qwen2Config, dict(
        use_sliding_window=True, sliding_window=3, max_window_layers=1)),
    'qwen3': (transformers.Qwen3Config, dict(head_dim=16,
                                             tie_word_embeddings=True)),
}


def _hf_model(name, seed=0):
  cls, extra = VARIANTS[name]
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(
      cls(**{**TINY, **extra}))
  # Random (not zero) biases and norm scales, so a dropped one would show.
  with torch.no_grad():
    for pname, p in model.named_parameters():
      if pname.endswith('bias') or 'norm' in pname:
        p.add_(torch.randn_like(p) * 0.1)
  return model.eval()


def _batch(seed=0, batch=3, seq=8):
  return decoder_oracle.left_padded_batch(VOCAB, seed, batch, seq)


_torch_logits = decoder_oracle.torch_logits
_logits = decoder_oracle.jit_logits
_assert_real_close = decoder_oracle.assert_real_close


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
  """name -> (saved directory, transformers model), built once."""
  out = {}
  for name in VARIANTS:
    path = tmp_path_factory.mktemp(name)
    model = _hf_model(name)
    model.save_pretrained(path)
    out[name] = (path, model)
  return out


@pytest.mark.parametrize('name', list(VARIANTS))
def test_logits_match_transformers(checkpoints, name):
  path, ref = checkpoints[name]
  model, fresh = registry.build_model(path, task='causal_lm',
                                      rngs=nnx.Rngs(0))
  assert fresh == []
  assert isinstance(model, llama.LlamaForCausalLM)
  ids, mask = _batch()
  got = _logits(model, ids, mask)
  assert got.dtype == jnp.float32 and got.shape == (3, 8, VOCAB)
  _assert_real_close(got, _torch_logits(ref, ids, mask), mask)


@pytest.mark.parametrize('name', list(VARIANTS))
def test_save_hf_round_trip(checkpoints, name, tmp_path):
  path, _ = checkpoints[name]
  model, _ = registry.build_model(path, task='causal_lm', rngs=nnx.Rngs(0))
  registry.save_hf(model, tmp_path)
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['model_type'] == json.loads(
      (path / 'config.json').read_text())['model_type']
  ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
  assert type(ref).__name__ == saved['architectures'][0]
  ids, mask = _batch(seed=1)
  got = _logits(model, ids, mask)
  _assert_real_close(got, _torch_logits(ref, ids, mask), mask)
  # And ftjax reads its own export back exactly.
  again, fresh = registry.build_model(tmp_path, task='causal_lm',
                                      rngs=nnx.Rngs(1))
  assert fresh == [] and again.config == model.config
  np.testing.assert_array_equal(_logits(again, ids, mask), got)


def test_tied_export_has_no_lm_head(checkpoints, tmp_path):
  model, _ = registry.build_model(checkpoints['smollm2'][0], task='causal_lm',
                                  rngs=nnx.Rngs(0))
  assert model.lm_head is None
  registry.save_hf(model, tmp_path)
  names = safetensors_io.read_safetensors_dir(tmp_path)
  assert 'lm_head.weight' not in names
  assert 'model.embed_tokens.weight' in names
  assert json.loads((tmp_path / 'config.json').read_text())[
      'tie_word_embeddings'] is True


def test_sharded_checkpoint(tmp_path):
  ref = _hf_model('llama3')
  ref.save_pretrained(tmp_path, max_shard_size='20KB')
  assert (tmp_path / 'model.safetensors.index.json').is_file()
  model, _ = registry.build_model(tmp_path, task='causal_lm', rngs=nnx.Rngs(0))
  ids, mask = _batch()
  _assert_real_close(_logits(model, ids, mask), _torch_logits(ref, ids, mask),
                     mask)


def test_build_from_tensors(checkpoints):
  path, ref = checkpoints['qwen3']
  hf = registry.read_hf_config(path)
  tensors = safetensors_io.read_safetensors_dir(path)
  model, fresh = registry.build_from_tensors(hf, tensors, task='causal_lm',
                                             rngs=nnx.Rngs(0))
  assert fresh == []
  ids, mask = _batch()
  _assert_real_close(_logits(model, ids, mask), _torch_logits(ref, ids, mask),
                     mask)


@pytest.mark.parametrize('name', ['llama3', 'mistral'])
def test_packed_segments_equal_separate_sequences(checkpoints, name):
  model, _ = registry.build_model(checkpoints[name][0], task='causal_lm',
                                  rngs=nnx.Rngs(0))
  rng = np.random.default_rng(3)
  a, b = rng.integers(0, VOCAB, 5), rng.integers(0, VOCAB, 4)
  packed = np.concatenate([a, b, [0, 0]])[None]
  segments = np.array([[1] * 5 + [2] * 4 + [0, 0]])
  got = np.asarray(_logits(model, packed, segment_ids=segments))[0]
  np.testing.assert_allclose(got[:5], np.asarray(_logits(model, a[None]))[0],
                             atol=1e-5)
  np.testing.assert_allclose(got[5:9], np.asarray(_logits(model, b[None]))[0],
                             atol=1e-5)


@pytest.mark.parametrize('name', ['llama3', 'qwen2'])
def test_kv_cache_prefill_and_decode_match_full_forward(checkpoints, name):
  model, _ = registry.build_model(checkpoints[name][0], task='causal_lm',
                                  rngs=nnx.Rngs(0))
  ids, mask = _batch(seq=9)
  full = np.asarray(_logits(model, ids, mask))
  graphdef, state = nnx.split(model)

  @jax.jit
  def step(state, ids, mask, cache):
    return nnx.merge(graphdef, state)(ids, mask, cache=cache)

  cache = model.init_cache(3, 12)
  prompt = 5
  logits, cache = step(state, ids[:, :prompt], mask[:, :prompt], cache)
  _assert_real_close(logits, full[:, :prompt], mask[:, :prompt], atol=1e-5)
  for t in range(prompt, 9):
    logits, cache = step(state, ids[:, t:t + 1], mask[:, t:t + 1], cache)
    _assert_real_close(logits, full[:, t:t + 1], mask[:, t:t + 1], atol=1e-5)
  assert int(cache.index) == 9
  np.testing.assert_array_equal(cache.lengths, mask.sum(1))
  assert step._cache_size() == 2  # prefill shape + one decode shape


def test_param_paths_mirror_hf_names():
  config = llama.LlamaConfig.from_hf(
      VARIANTS['qwen3'][0](**TINY, head_dim=16).to_dict())
  model = llama.LlamaForCausalLM(config, rngs=nnx.Rngs(0))
  paths = set(safetensors_io.param_vars(model))
  assert 'model.layers.1.self_attn.q_norm.scale' in paths
  assert 'model.layers.0.mlp.gate_proj.kernel' in paths
  assert 'lm_head.kernel' in paths
  attn = model.model.layers[0].self_attn
  assert attn.k_proj.kernel.get_metadata()['out_sharding'] == ('embed',
                                                               'kv_heads')
  assert model.model.embed_tokens.embedding.get_metadata()[
      'out_sharding'] == ('vocab', 'embed')


def test_bf16_compute_close_to_fp32(checkpoints):
  path = checkpoints['llama3'][0]
  fp32, _ = registry.build_model(path, task='causal_lm', rngs=nnx.Rngs(0))
  bf16, _ = registry.build_model(path, task='causal_lm', dtype=jnp.bfloat16,
                                 rngs=nnx.Rngs(0))
  ids, mask = _batch()
  got = _logits(bf16, ids, mask)
  assert got.dtype == jnp.float32  # logits stay fp32
  _assert_real_close(got, np.asarray(_logits(fp32, ids, mask)), mask, atol=0.05)


def test_dropout_only_with_rngs(checkpoints):
  hf = registry.read_hf_config(checkpoints['llama3'][0])
  config = llama.LlamaConfig.from_hf({**hf, 'attention_dropout': 0.5})
  model = llama.LlamaForCausalLM(config, rngs=nnx.Rngs(0))
  ids, mask = _batch()
  plain = _logits(model, ids, mask)
  np.testing.assert_array_equal(plain, _logits(model, ids, mask))

  @nnx.jit
  def with_dropout(model, key):
    return model(ids, mask, rngs=nnx.Rngs(dropout=key))

  a, b = with_dropout(model, jax.random.key(1)), with_dropout(
      model, jax.random.key(2))
  assert not np.allclose(a, plain) and not np.allclose(a, b)


def test_config_round_trip():
  for cls, extra in VARIANTS.values():
    config = llama.LlamaConfig.from_hf(cls(**{**TINY, **extra}).to_dict())
    assert llama.LlamaConfig.from_hf(config.to_hf()) == config
    hash(config)  # a static in jit graphdefs


def test_legacy_rope_keys():
  rope = rope_lib.RopeConfig.from_hf(
      {'rope_theta': 500.0, 'rope_scaling': {'type': 'linear', 'factor': 2},
       'max_position_embeddings': 64}, 'config')
  assert rope == rope_lib.RopeConfig('linear', 500.0, factor=2.0)


@pytest.mark.parametrize('rope_type', ['linear', 'llama3'])
def test_inverse_frequencies_match_transformers(rope_type):
  from transformers import modeling_rope_utils  # pylint: disable=g-import-not-at-top
  params = {'rope_type': rope_type, 'factor': 8.0, 'rope_theta': 5e5,
            'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
            'original_max_position_embeddings': 32}
  hf = transformers.LlamaConfig(**{**TINY, 'hidden_size': 256},
                                rope_parameters=params)
  want, scaling = modeling_rope_utils.ROPE_INIT_FUNCTIONS[rope_type](hf)
  assert scaling == 1.0
  rope = rope_lib.RopeConfig.from_hf(hf.to_dict(), 'config')
  np.testing.assert_allclose(rope_lib.inverse_frequencies(rope, 64),
                             want.numpy(), rtol=1e-6)


def test_mistral_and_qwen_windows():
  mistral = llama.LlamaConfig.from_hf(
      transformers.MistralConfig(**TINY, sliding_window=3).to_dict())
  assert mistral.layer_windows == (3, 3)
  qwen = llama.LlamaConfig.from_hf(transformers.Qwen2Config(
      **TINY, use_sliding_window=True, sliding_window=3,
      max_window_layers=1).to_dict())
  assert qwen.layer_windows == (None, 3)
  off = llama.LlamaConfig.from_hf(transformers.Qwen2Config(**TINY).to_dict())
  assert off.layer_windows == ()


def _write(tmp_path, hf):
  (tmp_path / 'config.json').write_text(json.dumps(hf))


def test_unsupported_model_type_lists_supported(tmp_path):
  _write(tmp_path, {'model_type': 'falcon'})
  with pytest.raises(UserError, match=r"unsupported model_type 'falcon' .*"
                     'supported: .*gpt2.*llama.*mistral.*qwen2.*qwen3'):
    registry.build_model(tmp_path, task='causal_lm', rngs=nnx.Rngs(0))


def test_unsupported_rope_type(tmp_path):
  hf = transformers.LlamaConfig(**TINY).to_dict()
  hf['rope_parameters'] = {'rope_type': 'proportional', 'factor': 2.0, 'rope_theta': 1e4}
  _write(tmp_path, hf)
  with pytest.raises(UserError, match="unsupported rope_type 'proportional'.*supported: .*yarn"):
    registry.build_model(tmp_path, task='causal_lm', rngs=nnx.Rngs(0))


def test_longrope_needs_its_factors(tmp_path):
  hf = transformers.LlamaConfig(**TINY).to_dict()
  hf['rope_parameters'] = {'rope_type': 'longrope', 'rope_theta': 1e4,
                           'original_max_position_embeddings': 16, 'short_factor': [1.0] * 4}
  with pytest.raises(UserError, match="rope_type 'longrope' in llama config needs 'long_factor'"):
    llama.LlamaConfig.from_hf(hf)


def test_wrong_tensor_shape(checkpoints, tmp_path):
  path, _ = checkpoints['llama3']
  tensors = safetensors_io.read_safetensors_dir(path)
  name = 'model.layers.1.self_attn.k_proj.weight'
  tensors[name] = tensors[name][:8]
  safetensors_io.write_safetensors(tensors, tmp_path / 'model.safetensors')
  (tmp_path / 'config.json').write_text((path / 'config.json').read_text())
  with pytest.raises(UserError, match=f"tensor '{name}' .* shape"):
    registry.build_model(tmp_path, task='causal_lm', rngs=nnx.Rngs(0))


def test_missing_lm_head_when_untied(checkpoints):
  path, _ = checkpoints['llama3']
  tensors = safetensors_io.read_safetensors_dir(path)
  del tensors['lm_head.weight']
  with pytest.raises(UserError, match="missing tensor 'lm_head.weight'"):
    registry.build_from_tensors(registry.read_hf_config(path), tensors,
                                task='causal_lm', rngs=nnx.Rngs(0))


def test_task_not_supported_by_family(checkpoints):
  with pytest.raises(UserError, match="task 'base' is not supported "
                     "for model_type 'llama'; supported: causal_lm, classification"):
    registry.build_model(checkpoints['llama3'][0], task='base',
                         rngs=nnx.Rngs(0))


def test_gradients_through_packed_batch(checkpoints):
  """A pure jitted loss over split params: finite, non-zero gradients."""
  model, _ = registry.build_model(checkpoints['qwen2'][0], task='causal_lm',
                                  rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  ids = np.arange(1, 11)[None] % VOCAB
  segments = np.array([[1] * 6 + [2] * 3 + [0]])

  @jax.jit
  def grads(params):
    def loss(params):
      logits = nnx.merge(graphdef, params)(ids, segment_ids=segments)
      return -jax.nn.log_softmax(logits)[..., 0].mean()
    return jax.grad(loss)(params)

  leaves = jax.tree.leaves(grads(params))
  assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
  assert sum(float(jnp.abs(g).sum()) > 0 for g in leaves) == len(leaves)


# --- Phi-3: fused projections, LongRoPE, partial rotary, sliding window ------------------------

PHI3 = dict(TINY, hidden_size=64, intermediate_size=48, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=24, pad_token_id=0)
PHI3_VARIANTS = {
    # Phi-3-mini-128k-like: LongRoPE (per-frequency factors past the original 8 positions).
    'longrope': dict(original_max_position_embeddings=8, rope_parameters=dict(
        rope_type='longrope', rope_theta=1e4, short_factor=[1.0 + i / 16 for i in range(8)],
        long_factor=[1.0 + i for i in range(8)])),
    # Phi-4-mini-like partial rotary (12 of 16 dims) with a sliding window of 5.
    'partial_window': dict(sliding_window=5, rope_parameters=dict(
        rope_type='default', rope_theta=1e4, partial_rotary_factor=0.75)),
}


@pytest.fixture(scope='module')
def phi3_checkpoints(tmp_path_factory):
  out = {}
  for name, extra in PHI3_VARIANTS.items():
    config = transformers.Phi3Config(**{**PHI3, **extra})
    config._attn_implementation = 'eager'  # pylint: disable=protected-access
    torch.manual_seed(0)
    model = transformers.Phi3ForCausalLM(config).eval()
    with torch.no_grad():
      for pname, p in model.named_parameters():
        if 'norm' in pname:
          p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path_factory.mktemp(f'phi3_{name}')
    model.save_pretrained(path)
    out[name] = (path, model)
  return out


@pytest.mark.parametrize('name', list(PHI3_VARIANTS))
def test_phi3_logits_and_export_match_transformers(phi3_checkpoints, name, tmp_path):
  path, ref = phi3_checkpoints[name]
  model, fresh = registry.build_model(path, task='causal_lm', rngs=nnx.Rngs(0))
  assert fresh == [] and model.config.fused_projections
  assert model.model.layers[0].self_attn.qkv_proj.kernel.shape == (64, (4 + 2 * 2) * 16)
  assert model.model.layers[0].mlp.gate_up_proj.kernel.shape == (64, 2 * 48)
  ids, mask = _batch(seq=14)  # past the original 8 positions: LongRoPE's long factors
  _assert_real_close(_logits(model, ids, mask), _torch_logits(ref, ids, mask), mask)
  registry.save_hf(model, tmp_path)
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['architectures'] == ['Phi3ForCausalLM']
  config = transformers.AutoConfig.from_pretrained(tmp_path)
  config._attn_implementation = 'eager'  # pylint: disable=protected-access
  again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, config=config).eval()
  _assert_real_close(_logits(model, ids, mask), _torch_logits(again, ids, mask), mask)
  assert llama.LlamaConfig.from_hf(saved) == model.config


def test_phi3_classifier_matches_transformers(phi3_checkpoints, tmp_path):
  model, fresh = registry.build_model(phi3_checkpoints['partial_window'][0],
                                      task='classification', num_labels=3, rngs=nnx.Rngs(0))
  assert fresh == ['score.kernel']
  registry.save_hf(model, tmp_path)
  ref = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
  assert type(ref).__name__ == 'Phi3ForSequenceClassification'
  ids, mask = _batch(seq=9)
  ids, mask = ids[:, ::-1].copy(), mask[:, ::-1].copy()  # right padding with pad id 0
  with torch.no_grad():
    want = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
  np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, i, a: m(i, a))(model, ids, mask)),
                             want.numpy(), atol=1e-4)
