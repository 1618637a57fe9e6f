"""Tests for ftjax.models.gemma (+ gemma_table, attention soft-capping).

The oracle is `transformers` (PyTorch, eval mode, eager attention) on tiny random checkpoints
saved with `save_pretrained`: Gemma 2 (attention and final soft-caps, alternating sliding
layers), Gemma 3 (q/k norms, five-to-one local/global pattern shortened to 2:1, per-layer-type
RoPE with linear scaling on the global layers), and an untied Gemma 3 with a bias and legacy
RoPE keys.
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
from ftjax.models import gemma
from ftjax.models import registry
from ftjax.weights import safetensors_io
import decoder_oracle

VOCAB = 97
TINY = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            max_position_embeddings=64, sliding_window=3, query_pre_attn_scalar=12,
            pad_token_id=0, bos_token_id=2, eos_token_id=1)
VARIANTS = {
    'gemma2': (transformers.Gemma2Config, dict(
        attn_logit_softcapping=2.0, final_logit_softcapping=3.0, rope_theta=500.0)),
    'gemma3': (transformers.Gemma3TextConfig, dict(
        layer_types=['sliding_attention', 'sliding_attention', 'full_attention'],
        rope_parameters={'full_attention': {'rope_type': 'linear', 'factor': 2.0,
                                            'rope_theta': 1e6},
                         'sliding_attention': {'rope_type': 'default', 'rope_theta': 100.0}})),
    'gemma3_untied': (transformers.Gemma3TextConfig, dict(
        tie_word_embeddings=False, attention_bias=True, sliding_window_pattern=2,
        rope_theta=3000.0, rope_local_base_freq=50.0, final_logit_softcapping=4.0)),
}


def _hf_model(name, seed=0):
  cls, extra = VARIANTS[name]
  torch.manual_seed(seed)
  config = cls(**{**TINY, **extra})
  config._attn_implementation = 'eager'  # pylint: disable=protected-access
  model = transformers.AutoModelForCausalLM.from_config(config)
  with torch.no_grad():  # random (not zero) biases and norm weights, so a dropped one shows
    for pname, p in model.named_parameters():
      if pname.endswith('bias') or 'norm' in pname:
        p.add_(torch.randn_like(p) * 0.3)
      # Logits and attention scores of several units, so the soft-caps bind.
      if 'embed_tokens' in pname or 'lm_head' in pname:
        p.mul_(12.0)
      if 'q_proj.weight' in pname or 'k_proj.weight' in pname:
        p.mul_(15.0)
  return model.eval()


def _batch(seed=0, batch=3, seq=8):
  return decoder_oracle.left_padded_batch(VOCAB, seed, batch, seq, low=3)


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
  model, fresh = registry.build_model(path, task='causal_lm', rngs=nnx.Rngs(0))
  assert fresh == [] and isinstance(model, gemma.GemmaForCausalLM)
  ids, mask = _batch()
  got = _logits(model, ids, mask)
  assert got.dtype == jnp.float32 and got.shape == (3, 8, VOCAB)
  _assert_real_close(got, _torch_logits(ref, ids, mask), mask)


def test_the_variants_exercise_what_they_claim(checkpoints):
  """Soft-caps bind, windows and RoPE differ per layer: else the parity above proves less."""
  configs = {n: gemma.GemmaConfig.from_hf(registry.read_hf_config(p))
             for n, (p, _) in checkpoints.items()}
  g2, g3, untied = configs['gemma2'], configs['gemma3'], configs['gemma3_untied']
  assert g2.attention_softcap == 2.0 and g2.final_logit_softcapping == 3.0
  assert g2.layer_windows == (3, None, 3) and not g2.qk_norm
  assert g3.layer_windows == (3, 3, None) and g3.qk_norm and g3.attention_softcap is None
  assert (g3.rope.rope_type, g3.rope.factor, g3.local_rope.theta) == ('linear', 2.0, 100.0)
  assert (untied.rope.theta, untied.local_rope.theta) == (3000.0, 50.0)
  assert untied.layer_windows == (3, None, 3) and not untied.tie_word_embeddings
  path = checkpoints['gemma2'][0]
  hf, tensors = registry.read_hf_config(path), safetensors_io.read_safetensors_dir(path)
  ids, mask = _batch()

  def logits(**changes):
    model, _ = registry.build_from_tensors({**hf, **changes}, tensors, task='causal_lm',
                                           rngs=nnx.Rngs(0))
    return np.asarray(_logits(model, ids, mask))[mask.astype(bool)]

  capped = logits()
  assert 0.8 * 3.0 < np.abs(capped).max() <= 3.0
  assert np.abs(logits(final_logit_softcapping=None)).max() > 3.5
  assert np.abs(logits(attn_logit_softcapping=None) - capped).max() > 0.05


@pytest.mark.parametrize('name', list(VARIANTS))
def test_save_hf_round_trip(checkpoints, name, tmp_path):
  path, _ = checkpoints[name]
  model, _ = registry.build_model(path, task='causal_lm', rngs=nnx.Rngs(0))
  registry.save_hf(model, tmp_path)
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['model_type'] == json.loads((path / 'config.json').read_text())['model_type']
  assert ('lm_head.weight' in safetensors_io.read_safetensors_dir(tmp_path)) == (
      not model.config.tie_word_embeddings)
  config = transformers.AutoConfig.from_pretrained(tmp_path)
  config._attn_implementation = 'eager'  # pylint: disable=protected-access
  ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, config=config).eval()
  assert type(ref).__name__ == saved['architectures'][0]
  ids, mask = _batch(seed=1)
  got = _logits(model, ids, mask)
  _assert_real_close(got, _torch_logits(ref, ids, mask), mask)
  again, fresh = registry.build_model(tmp_path, task='causal_lm', rngs=nnx.Rngs(1))
  assert fresh == [] and again.config == model.config
  np.testing.assert_array_equal(_logits(again, ids, mask), got)


def test_kv_cache_prefill_and_decode_match_full_forward(checkpoints):
  """Past the window (3), so the cached sliding layers must mask by position too."""
  model, _ = registry.build_model(checkpoints['gemma3'][0], task='causal_lm', rngs=nnx.Rngs(0))
  ids, mask = _batch(seq=9)
  full = np.asarray(_logits(model, ids, mask))
  graphdef, state = nnx.split(model)

  @jax.jit
  def step(state, ids, mask, cache):
    return nnx.merge(graphdef, state)(ids, mask, cache=cache)

  cache = model.init_cache(3, 12)
  logits, cache = step(state, ids[:, :5], mask[:, :5], cache)
  _assert_real_close(logits, full[:, :5], mask[:, :5], atol=1e-5)
  for t in range(5, 9):
    logits, cache = step(state, ids[:, t:t + 1], mask[:, t:t + 1], cache)
    _assert_real_close(logits, full[:, t:t + 1], mask[:, t:t + 1], atol=1e-5)


@pytest.mark.parametrize('name', ['gemma2', 'gemma3'])
def test_sequence_classifier_matches_transformers(checkpoints, name, tmp_path):
  """A causal-LM checkpoint loads into the classifier with a new `score`; its export loads as
  HF's `*ForSequenceClassification` and scores alike (last real token, right padding)."""
  model, fresh = registry.build_model(checkpoints[name][0], task='classification',
                                      num_labels=3, rngs=nnx.Rngs(0))
  assert fresh == ['score.kernel']
  registry.save_hf(model, tmp_path)
  config = transformers.AutoConfig.from_pretrained(tmp_path)
  config._attn_implementation = 'eager'  # pylint: disable=protected-access
  ref = transformers.AutoModelForSequenceClassification.from_pretrained(
      tmp_path, config=config).eval()
  assert type(ref).__name__ == json.loads((tmp_path / 'config.json').read_text())[
      'architectures'][0]
  ids, mask = _batch(seed=2)
  ids, mask = ids[:, ::-1].copy(), mask[:, ::-1].copy()  # right padding, pad id 0
  got = nnx.jit(lambda m, i, a: m(i, a))(model, ids, mask)
  with torch.no_grad():
    want = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
  np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-4)


def test_config_round_trip():
  for cls, extra in VARIANTS.values():
    config = gemma.GemmaConfig.from_hf(cls(**{**TINY, **extra}).to_dict())
    assert gemma.GemmaConfig.from_hf(config.to_hf()) == config
    hash(config)


def test_default_layer_pattern_and_ropes():
  g3 = gemma.GemmaConfig.from_hf(transformers.Gemma3TextConfig(
      **{**TINY, 'num_hidden_layers': 12}).to_dict())
  assert [w is None for w in g3.layer_windows] == [i % 6 == 5 for i in range(12)]
  assert (g3.rope.theta, g3.local_rope.theta) == (1e6, 1e4)
  g2 = gemma.GemmaConfig.from_hf(transformers.Gemma2Config(**TINY).to_dict())
  assert g2.layer_windows == (3, None, 3)
  assert g2.rope == g2.local_rope and g2.attn_logit_softcapping == 50.0


def test_bidirectional_is_refused():
  hf = transformers.Gemma3TextConfig(**TINY).to_dict()
  with pytest.raises(UserError, match='use_bidirectional_attention'):
    gemma.GemmaConfig.from_hf({**hf, 'use_bidirectional_attention': True})


def test_unknown_layer_type_is_named():
  hf = transformers.Gemma3TextConfig(**TINY).to_dict()
  with pytest.raises(UserError, match="unknown layer type 'chunked_attention'"):
    gemma.GemmaConfig.from_hf({**hf, 'layer_types': ['chunked_attention'] * 3})


def test_param_paths_mirror_hf_names(checkpoints):
  model, _ = registry.build_model(checkpoints['gemma3'][0], task='causal_lm', rngs=nnx.Rngs(0))
  paths = set(safetensors_io.param_vars(model))
  for name in ('model.layers.0.pre_feedforward_layernorm.scale',
               'model.layers.2.post_feedforward_layernorm.scale',
               'model.layers.1.self_attn.q_norm.scale', 'model.norm.scale'):
    assert name in paths
  assert 'lm_head.kernel' not in paths  # tied
