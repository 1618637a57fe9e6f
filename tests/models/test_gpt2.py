"""Tests for ftjax.models.gpt2 and ftjax.weights.gpt2_table.

The oracle is `transformers.GPT2LMHeadModel` on tiny random checkpoints.
"""

import json

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from ftjax.errors import UserError
from ftjax.models import gpt2
from ftjax.models import registry
from ftjax.weights import safetensors_io

VOCAB = 97
TINY = dict(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4,
            n_inner=40)
VARIANTS = {
    'tied': {},
    'untied_scaled': dict(tie_word_embeddings=False,
                          scale_attn_by_inverse_layer_idx=True,
                          activation_function='gelu'),
}


def _hf_model(name, seed=0):
  torch.manual_seed(seed)
  config = transformers.GPT2Config(**{**TINY, **VARIANTS[name]})
  model = transformers.GPT2LMHeadModel(config)
  with torch.no_grad():  # random biases/LayerNorms so a dropped one shows
    for pname, p in model.named_parameters():
      if pname.endswith('bias') or '.ln_' in pname:
        p.add_(torch.randn_like(p) * 0.1)
  return model.eval()


def _batch(seed=0, batch=3, seq=8):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, VOCAB, (batch, seq))
  mask = np.ones((batch, seq), np.int64)
  mask[1, :2] = 0
  mask[2, :5] = 0
  ids[mask == 0] = 0
  return ids, mask


def _torch_logits(model, ids, mask):
  pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(ids),
                 attention_mask=torch.from_numpy(mask),
                 position_ids=torch.from_numpy(pos)).logits.numpy()


@nnx.jit
def _logits(model, ids, mask=None, segment_ids=None):
  return model(ids, mask, segment_ids=segment_ids)


def _assert_real_close(got, want, mask, atol=1e-4):
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got)[real], want[real], atol=atol)


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
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
  assert fresh == [] and isinstance(model, gpt2.GPT2LMHeadModel)
  assert (model.lm_head is None) == (name == 'tied')
  ids, mask = _batch()
  got = _logits(model, ids, mask)
  assert got.dtype == jnp.float32
  _assert_real_close(got, _torch_logits(ref, ids, mask), mask)


@pytest.mark.parametrize('name', list(VARIANTS))
def test_save_hf_round_trip(checkpoints, name, tmp_path):
  model, _ = registry.build_model(checkpoints[name][0], task='causal_lm',
                                  rngs=nnx.Rngs(0))
  registry.save_hf(model, tmp_path)
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['architectures'] == ['GPT2LMHeadModel']
  names = safetensors_io.read_safetensors_dir(tmp_path)
  assert ('lm_head.weight' in names) == (name != 'tied')
  ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
  ids, mask = _batch(seed=1)
  got = _logits(model, ids, mask)
  _assert_real_close(got, _torch_logits(ref, ids, mask), mask)


def test_bare_gpt2model_checkpoint_loads(tmp_path):
  """The original `gpt2` files are a GPT2Model: no `transformer.` prefix."""
  ref = _hf_model('tied')
  ref.transformer.save_pretrained(tmp_path)
  config = json.loads((tmp_path / 'config.json').read_text())
  assert not any(k.startswith('transformer.')
                 for k in safetensors_io.read_safetensors_dir(tmp_path))
  assert config['model_type'] == 'gpt2'
  model, fresh = registry.build_model(tmp_path, task='causal_lm',
                                      rngs=nnx.Rngs(0))
  assert fresh == []
  ids, mask = _batch()
  _assert_real_close(_logits(model, ids, mask), _torch_logits(ref, ids, mask),
                     mask)


def test_sharded_checkpoint(tmp_path):
  ref = _hf_model('untied_scaled')
  ref.save_pretrained(tmp_path, max_shard_size='20KB')
  assert (tmp_path / 'model.safetensors.index.json').is_file()
  model, _ = registry.build_model(tmp_path, task='causal_lm', rngs=nnx.Rngs(0))
  ids, mask = _batch()
  _assert_real_close(_logits(model, ids, mask), _torch_logits(ref, ids, mask),
                     mask)


def test_packed_segments_equal_separate_sequences(checkpoints):
  model, _ = registry.build_model(checkpoints['tied'][0], task='causal_lm',
                                  rngs=nnx.Rngs(0))
  rng = np.random.default_rng(3)
  a, b = rng.integers(0, VOCAB, 5), rng.integers(0, VOCAB, 4)
  packed = np.concatenate([a, b, [0]])[None]
  segments = np.array([[1] * 5 + [2] * 4 + [0]])
  got = np.asarray(_logits(model, packed, segment_ids=segments))[0]
  np.testing.assert_allclose(got[:5], np.asarray(_logits(model, a[None]))[0],
                             atol=1e-5)
  np.testing.assert_allclose(got[5:9], np.asarray(_logits(model, b[None]))[0],
                             atol=1e-5)


def test_kv_cache_prefill_and_decode_match_full_forward(checkpoints):
  model, _ = registry.build_model(checkpoints['tied'][0], task='causal_lm',
                                  rngs=nnx.Rngs(0))
  ids, mask = _batch(seq=8)
  full = np.asarray(_logits(model, ids, mask))

  @nnx.jit
  def step(model, ids, mask, cache):
    return model(ids, mask, cache=cache)

  cache = model.init_cache(3, 10)
  logits, cache = step(model, ids[:, :6], mask[:, :6], cache)
  _assert_real_close(logits, full[:, :6], mask[:, :6], atol=1e-5)
  for t in range(6, 8):
    logits, cache = step(model, ids[:, t:t + 1], mask[:, t:t + 1], cache)
    _assert_real_close(logits, full[:, t:t + 1], mask[:, t:t + 1], atol=1e-5)


def test_param_paths_mirror_hf_names():
  model = gpt2.GPT2LMHeadModel(gpt2.GPT2Config(**TINY), rngs=nnx.Rngs(0))
  paths = set(safetensors_io.param_vars(model))
  assert 'transformer.h.1.attn.c_attn.kernel' in paths
  assert 'transformer.h.0.mlp.c_fc.bias' in paths
  assert 'transformer.ln_f.scale' in paths
  assert not any(p.startswith('lm_head') for p in paths)
  assert model.transformer.h[0].mlp.c_fc.kernel.get_metadata()[
      'out_sharding'] == ('embed', 'mlp')


def test_config_round_trip():
  config = gpt2.GPT2Config.from_hf(transformers.GPT2Config(**TINY).to_dict())
  assert config.n_inner == 40 and config.tie_word_embeddings
  assert gpt2.GPT2Config.from_hf(config.to_hf()) == config
  hash(config)


def test_wrong_tensor_shape(checkpoints):
  path, _ = checkpoints['tied']
  tensors = safetensors_io.read_safetensors_dir(path)
  name = 'transformer.h.0.attn.c_attn.weight'
  tensors[name] = tensors[name].T  # an nn.Linear layout, not Conv1D
  with pytest.raises(UserError, match=f"tensor '{name}' .* shape"):
    registry.build_from_tensors(registry.read_hf_config(path), tensors,
                                task='causal_lm', rngs=nnx.Rngs(0))


def test_unexpected_tensor(checkpoints):
  path, _ = checkpoints['tied']
  tensors = safetensors_io.read_safetensors_dir(path)
  tensors['transformer.h.0.attn.q_attn.weight'] = np.zeros((2, 2), np.float32)
  with pytest.raises(UserError, match="unexpected tensor 'transformer.h.0"):
    registry.build_from_tensors(registry.read_hf_config(path), tensors,
                                task='causal_lm', rngs=nnx.Rngs(0))


def test_rejects_cross_attention():
  with pytest.raises(UserError, match='add_cross_attention'):
    gpt2.GPT2Config.from_hf({**TINY, 'add_cross_attention': True})
