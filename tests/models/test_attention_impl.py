"""`model.attention`: the fused path (`jax.nn.dot_product_attention`) against ftjax's own.

cuDNN's kernel needs an NVIDIA GPU. Here the same wrapper runs with implementation="xla",
which checks what the cuDNN call receives: the mask, the GQA head mapping, the scale and the
reshapes. experiments/bench/cudnn_attention_check.py runs the cuDNN kernel itself on a GPU.
"""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from ftjax import generate, train
from ftjax.config import validate
from ftjax.errors import UserError
from ftjax.models import attention
from ftjax.models import layer_stack
from ftjax.models import registry
from tiny_assets import files_config


def _bert_config(model_dir, files):
  cfg = files_config(model_dir, files)
  cfg.model.attention = "cudnn"
  return cfg


def _qkv(seed, b=2, t=7, n=6, kv=2, d=8):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(keys[0], (b, t, n, d)), jax.random.normal(keys[1], (b, t, kv, d)),
          jax.random.normal(keys[2], (b, t, kv, d)))


@pytest.mark.parametrize("window", [None, 3])
def test_fused_matches_einsum_attention(window):
  q, k, v = _qkv(0)
  # Left padding in row 0, two packed segments in row 1: every kind of masked key.
  ids = jnp.ones((2, 7), jnp.int32)
  mask = jnp.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
  segments = jnp.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 2, 2, 2, 2]])
  layout, _, _ = attention.make_layout(ids, mask, segment_ids=segments)
  m = layout.mask(window)
  k, v = attention.update_kv(None, k, v)  # the heads-major keys/values both paths take
  ours = attention.attend(q, k, v, m, scale=0.3)
  fused = attention.fused(q, k, v, m, scale=0.3, implementation="xla")
  np.testing.assert_allclose(np.asarray(fused), np.asarray(ours), atol=1e-5)


def _tiny(path, family, attention_impl="xla"):
  if (path / "config.json").exists():
    return registry.build_model(path, task="causal_lm", rngs=nnx.Rngs(0),
                                attention=attention_impl)[0]
  torch.manual_seed(0)
  if family == "llama":
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(path))
  else:
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(path))
  return _tiny(path, family, attention_impl)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_decoder_routes_full_passes_to_fused_and_decoding_to_einsum(family, tmp_path, monkeypatch):
  model = _tiny(tmp_path, family)
  ids = jnp.array(np.random.default_rng(0).integers(1, 64, (2, 9)), jnp.int32)
  mask = jnp.array([[0, 0] + [1] * 7, [1] * 9])
  reference = np.asarray(model(ids, mask))
  model = _tiny(tmp_path, family, "cudnn")  # the same weights, built with model.attention=cudnn

  calls, original = [], attention.fused

  def fused_on_cpu(q, k, v, m, *, scale, implementation):
    calls.append(implementation)
    return original(q, k, v, m, scale=scale, implementation="xla")

  monkeypatch.setattr(attention, "fused", fused_on_cpu)
  np.testing.assert_allclose(np.asarray(model(ids, mask)), reference, atol=1e-5)
  assert calls == ["cudnn", "cudnn"]  # one per layer
  calls.clear()  # stacked layers (model.scan_layers) keep it: the scan body traces once
  np.testing.assert_allclose(np.asarray(layer_stack.stack_layers(model)(ids, mask)), reference,
                             atol=1e-5)
  assert calls == ["cudnn"]

  calls.clear()  # prefill and decode steps carry a KV cache: the einsum path
  out = generate.generate(model, [[5, 6, 7]], max_new_tokens=2, temperature=0.0)
  assert len(out[0]) == 2 and calls == []


def test_config_refuses_cudnn_outside_bfloat16_and_unknown_names(tiny_bert_dir, tiny_sentiment_files):
  cfg = _bert_config(tiny_bert_dir, tiny_sentiment_files)
  with pytest.raises(UserError, match=r"model\.attention.*bfloat16"):
    validate(cfg)
  cfg.model.attention = "flash"
  with pytest.raises(UserError, match=r"model\.attention.*must be one of"):
    validate(cfg)


def test_cudnn_on_a_model_without_decoder_attention_is_refused(tiny_bert_dir, tiny_sentiment_files):
  cfg = _bert_config(tiny_bert_dir, tiny_sentiment_files)
  cfg.model.dtype = "bfloat16"
  with pytest.raises(UserError, match=r"model\.attention.*no decoder attention"):
    train.build_experiment(cfg)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_unknown_implementation_is_refused_at_construction(family, tmp_path):
  _tiny(tmp_path, family)
  with pytest.raises(ValueError, match="attention implementation 'flash'; known: xla, cudnn"):
    _tiny(tmp_path, family, "flash")
