"""Tests for ftjax.generate: greedy equals `transformers` generate token for
token on tiny random Llama (GQA) and GPT-2 models; sampling settings, stop
tokens and compile reuse."""

import json
import types

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from ftjax import generate as generate_lib
from ftjax import samples
from ftjax.data import tokenization
from ftjax.errors import UserError
from ftjax.models import registry
from tiny_assets import make_tiny_llama

PROMPTS = [[5, 9, 3], [17, 2, 8, 40, 11, 6, 30], [7, 7, 21, 60, 2]]
PAD = 0


def _hf(name):
  torch.manual_seed(0)
  if name == 'llama':
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=48,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, bos_token_id=None, eos_token_id=None)
  else:
    config = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=32,
                                     n_layer=2, n_head=4, bos_token_id=None,
                                     eos_token_id=None)
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():  # sharper logits so greedy is not decided by noise
    for pname, p in model.named_parameters():
      if 'embed' in pname or 'wte' in pname:
        p.mul_(20.0)
  return model


@pytest.fixture(scope='module')
def models(tmp_path_factory):
  out = {}
  for name in ('llama', 'gpt2'):
    ref = _hf(name)
    path = tmp_path_factory.mktemp(name)
    ref.save_pretrained(path)
    model, _ = registry.build_model(path, task='causal_lm', rngs=nnx.Rngs(0))
    out[name] = (model, ref)
  return out


def _hf_generate(ref, prompts, max_new_tokens, eos=None):
  width = max(map(len, prompts))
  ids = np.full((len(prompts), width), PAD, np.int64)
  mask = np.zeros_like(ids)
  for i, p in enumerate(prompts):
    ids[i, width - len(p):] = p
    mask[i, width - len(p):] = 1
  config = transformers.GenerationConfig(
      do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=PAD,
      eos_token_id=eos, bos_token_id=None)
  with torch.no_grad():
    out = ref.generate(input_ids=torch.from_numpy(ids),
                       attention_mask=torch.from_numpy(mask),
                       generation_config=config)
  rows = out[:, width:].tolist()
  if eos is None:
    return rows
  return [r[:r.index(eos) + 1] if eos in r else r for r in rows]


@pytest.mark.parametrize('name', ['llama', 'gpt2'])
def test_greedy_matches_transformers(models, name):
  model, ref = models[name]
  got = generate_lib.generate(model, PROMPTS, max_new_tokens=8,
                              pad_token_id=PAD)
  assert got == _hf_generate(ref, PROMPTS, 8)


def test_stop_token_cuts_like_transformers_eos(models):
  model, ref = models['llama']
  free = generate_lib.generate(model, PROMPTS, max_new_tokens=8)
  stop = free[1][2]  # row 1 stops at its third token
  got = generate_lib.generate(model, PROMPTS, max_new_tokens=8,
                              stop_token_ids=[stop])
  assert got[1] == free[1][:3]
  assert got == _hf_generate(ref, PROMPTS, 8, eos=stop)
  # Every row stopping at once ends the loop early; outputs still cut.
  firsts = {row[0] for row in free}
  got = generate_lib.generate(model, PROMPTS, max_new_tokens=8,
                              stop_token_ids=sorted(firsts))
  assert got == [row[:1] for row in free]


def test_sampling_settings(models):
  model, _ = models['llama']
  greedy = generate_lib.generate(model, PROMPTS, max_new_tokens=6)
  assert generate_lib.generate(model, PROMPTS, max_new_tokens=6,
                               temperature=0.7, top_k=1, seed=3) == greedy
  assert generate_lib.generate(model, PROMPTS, max_new_tokens=6,
                               temperature=1.0, top_p=1e-6, seed=3) == greedy
  hot = [generate_lib.generate(model, PROMPTS, max_new_tokens=6,
                               temperature=5.0, top_k=50, top_p=0.95, seed=s)
         for s in (1, 2)]
  for rows in hot:
    assert [len(r) for r in rows] == [6, 6, 6]
    assert all(0 <= t < 97 for r in rows for t in r)
  assert hot[0] != hot[1]  # seeds matter
  assert hot[0] == generate_lib.generate(  # and reproduce
      model, PROMPTS, max_new_tokens=6, temperature=5.0, top_k=50,
      top_p=0.95, seed=1)


@pytest.mark.parametrize('name', ['llama', 'gpt2'])
def test_stream_yields_what_generate_returns(models, name):
  # Token by token (the chat command's path): greedy and sampled alike, with a stop token.
  model, _ = models[name]
  free = generate_lib.generate(model, PROMPTS, max_new_tokens=8)
  settings = [dict(), dict(temperature=5.0, top_k=50, top_p=0.95, seed=4),
              dict(stop_token_ids=[free[1][2]])]
  for kw in settings:
    want = generate_lib.generate(model, PROMPTS, max_new_tokens=8, **kw)
    for prompt, row in zip(PROMPTS, want):
      got = list(generate_lib.stream(model, prompt, max_new_tokens=8, **kw))
      if kw.get('seed') is None:  # sampling draws per batch: compare one-row batches
        assert got == row, kw
      else:
        assert got == generate_lib.generate(model, [prompt], max_new_tokens=8,
                                            **kw)[0]


def test_array_prompts_with_mask_and_compile_reuse(models):
  model, _ = models['gpt2']
  want = generate_lib.generate(model, PROMPTS, max_new_tokens=4)
  ids = np.zeros((3, 7), np.int32)
  mask = np.zeros((3, 7), np.int32)
  for i, p in enumerate(PROMPTS):  # right padded this time
    ids[i, :len(p)] = p
    mask[i, :len(p)] = 1
  size = generate_lib._generate._cache_size()
  assert generate_lib.generate(model, ids, attention_mask=mask,
                               max_new_tokens=4) == want
  # Same batch, prompt bucket and settings: no new compilation.
  assert generate_lib._generate._cache_size() == size


def test_bf16_model_generates(models, tmp_path):
  _, ref = models['llama']
  ref.save_pretrained(tmp_path)
  model, _ = registry.build_model(tmp_path, task='causal_lm',
                                  dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  got = generate_lib.generate(model, PROMPTS, max_new_tokens=4)
  assert [len(r) for r in got] == [4, 4, 4]
  assert all(0 <= t < 97 for r in got for t in r)


def test_gpt2_position_limit(models):
  model, _ = models['gpt2']
  generate_lib.generate(model, [[1] * 30], max_new_tokens=3)  # 32 positions
  with pytest.raises(UserError, match="exceeds the model's 32 positions"):
    generate_lib.generate(model, [[1] * 30], max_new_tokens=4)


@pytest.mark.parametrize('kwargs,match', [
    (dict(prompts=[[1], []]), 'empty prompt'),
    (dict(prompts=[[1, 500]]), 'token id 500'),
    (dict(prompts=[[1]], top_p=0.0), 'top_p=0.0'),
    (dict(prompts=[[1]], max_new_tokens=0), 'max_new_tokens'),
])
def test_bad_input(models, kwargs, match):
  model, _ = models['llama']
  kwargs = {'max_new_tokens': 2, **kwargs}
  with pytest.raises(UserError, match=match):
    generate_lib.generate(model, kwargs.pop('prompts'), **kwargs)


def _chat_checkpoint(path):
  """The tiny ChatML tokenizer (eos `<|im_end|>`) with an untied random Llama whose sharp
  embeddings make greedy decoding wander over many tokens instead of repeating one."""
  make_tiny_llama(path)
  tokenizer = tokenization.load_tokenizer(path)
  config = transformers.LlamaConfig(
      vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
      eos_token_id=tokenizer.eos_token_id)
  torch.manual_seed(0)
  ref = transformers.LlamaForCausalLM(config)
  with torch.no_grad():
    ref.model.embed_tokens.weight.mul_(20.0)
  ref.save_pretrained(str(path))
  return tokenizer


def test_samples_stop_on_every_eos_the_checkpoint_declares(tmp_path):
  # Llama 3 Instruct lists <|eot_id|> beside <|end_of_text|> only in generation_config.json: the
  # samples must stop at the first of them, not run on to max_new_tokens past the reply.
  path = tmp_path / 'chat'
  tokenizer = _chat_checkpoint(path)
  model, _ = registry.build_model(path, task='causal_lm', rngs=nnx.Rngs(0))
  prompt = tokenizer.apply_chat_template([{'role': 'user', 'content': 'hello how are you ?'}],
                                         add_generation_prompt=True, tokenize=False)
  ids = tokenizer(prompt, add_special_tokens=False)['input_ids']
  free = generate_lib.generate(model, [ids], max_new_tokens=12)[0]
  first_seen = {t: free.index(t) for t in free}
  # Two tokens that the free run produces first at steps i < j (after step 1), neither the eos.
  (i, a), (j, b) = sorted((k, t) for t, k in first_seen.items()
                          if k >= 2 and t != tokenizer.eos_token_id)[:2]
  (path / 'generation_config.json').write_text(json.dumps({'eos_token_id': [b, a]}))
  assert tokenization.stop_token_ids(path, tokenizer) == sorted({a, b, tokenizer.eos_token_id})
  cfg = types.SimpleNamespace(
      eval=types.SimpleNamespace(num_samples=1, sample_max_new_tokens=12),
      data=types.SimpleNamespace(eval_split='validation'))
  dataset = types.SimpleNamespace(
      tokenizer=tokenizer, pad_id=0, template=None,
      prompts=lambda split, limit: [{'input_ids': ids, 'text': prompt, 'reference': 'i am fine'}])
  exp = types.SimpleNamespace(cfg=cfg, dataset=dataset, model_path=path)
  [record] = samples.write(tmp_path, exp, model, 'base', 0)
  assert i < j and record['generation'] == tokenizer.decode(free[:i + 1], skip_special_tokens=True)
