"""Tests for ftjax.models.rope: every supported `rope_type` against transformers.

The oracle is transformers' own RoPE: `ROPE_INIT_FUNCTIONS` for the frequencies and attention
factors, and whole tiny Llamas (eager attention) for 'yarn', 'dynamic' and 'longrope', run past
the lengths where the last two switch (the model's and the original maximum).
"""

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers import modeling_rope_utils

from ftjax.models import registry
from ftjax.models import rope as rope_lib

HEAD_DIM = 16
TINY = dict(vocab_size=61, hidden_size=64, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=HEAD_DIM)
HALF = HEAD_DIM // 2
PARAMS = {
    'yarn': dict(rope_type='yarn', factor=4.0, original_max_position_embeddings=8,
                 rope_theta=1e4),
    'yarn_mscale': dict(rope_type='yarn', factor=8.0, original_max_position_embeddings=8,
                        rope_theta=5e4, mscale=0.7, mscale_all_dim=0.5, beta_fast=16.0,
                        truncate=False),
    'dynamic': dict(rope_type='dynamic', factor=3.0, rope_theta=1e4),
    'longrope': dict(rope_type='longrope', rope_theta=1e4, original_max_position_embeddings=8,
                     short_factor=list(np.linspace(1.0, 1.5, HALF)),
                     long_factor=list(np.linspace(1.0, 6.0, HALF))),
}


def _hf_config(name, max_positions=32):
  return transformers.LlamaConfig(**TINY, max_position_embeddings=max_positions,
                                  rope_parameters=dict(PARAMS[name]))


@pytest.mark.parametrize('name', ['yarn', 'yarn_mscale', 'longrope', 'dynamic'])
def test_frequencies_and_attention_factor_match_transformers(name):
  hf = _hf_config(name)
  rope_type = PARAMS[name]['rope_type']
  rope = rope_lib.RopeConfig.from_hf(hf.to_dict(), 'config')
  assert rope_lib.RopeConfig.from_hf({**hf.to_dict(), 'rope_parameters': rope.to_hf()},
                                     'config') == rope  # export round trip
  init = modeling_rope_utils.ROPE_INIT_FUNCTIONS[rope_type]
  for length in (4, 32, 50):  # within, at and past the model's (and original) maximum
    positions = jnp.arange(length)[None]
    got, scale = rope_lib.rotary(rope, HEAD_DIM, positions)
    if rope_type == 'yarn':
      want, want_scale = init(hf)
    elif rope_type == 'longrope':  # chosen by the pass's length, as HF's update does
      want, want_scale = init(hf, seq_len=length if length > 8 else None)
    else:
      want, want_scale = init(hf, seq_len=torch.tensor(length) if length > 32 else None)
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=2e-6, err_msg=str(length))
    assert scale == pytest.approx(want_scale, rel=1e-6)
  if rope_type != 'yarn':
    assert not np.allclose(np.asarray(rope_lib.rotary(rope, HEAD_DIM, jnp.arange(4)[None])[0]),
                           np.asarray(rope_lib.rotary(rope, HEAD_DIM, jnp.arange(50)[None])[0]))


@pytest.mark.parametrize('name,length', [('yarn_mscale', 12), ('dynamic', 20), ('longrope', 14)])
def test_llama_logits_match_transformers_past_the_switch(tmp_path, name, length):
  """Whole models: 'dynamic' past max_position_embeddings (12), 'longrope' past its original
  8, and yarn's attention factor on cos and sin."""
  config = _hf_config(name, max_positions=12)
  config._attn_implementation = 'eager'  # pylint: disable=protected-access
  torch.manual_seed(0)
  ref = transformers.LlamaForCausalLM(config).eval()
  ref.save_pretrained(tmp_path)
  model, _ = registry.build_model(tmp_path, task='causal_lm', rngs=nnx.Rngs(0))
  ids = np.random.default_rng(0).integers(0, 61, (2, length))
  with torch.no_grad():
    want = ref(torch.from_numpy(ids)).logits.numpy()
  got = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ids)))
  np.testing.assert_allclose(got, want, atol=1e-4)
  short = ids[:, :6]  # within the original length: the other frequencies
  with torch.no_grad():
    want = ref(torch.from_numpy(short)).logits.numpy()
  np.testing.assert_allclose(np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(short))),
                             want, atol=1e-4)
