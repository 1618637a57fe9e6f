"""Decoder sequence classifiers (`LlamaForSequenceClassification`, `GPT2ForSequenceClassification`
and the Mistral / Qwen classes): logits equal transformers' on tiny random checkpoints, with
left and right padding; export loads back into transformers; a causal-LM checkpoint starts one.
"""

import json

from flax import nnx
import numpy as np
import pytest
import torch
import transformers

from ftjax.models import gpt2
from ftjax.models import llama
from ftjax.models import registry
from ftjax.weights import safetensors_io

VOCAB, PAD, LABELS = 61, 0, 3
LLAMA = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
             pad_token_id=PAD)
VARIANTS = {
    'llama': (transformers.LlamaConfig, dict(LLAMA, tie_word_embeddings=True)),
    'qwen2': (transformers.Qwen2Config, dict(LLAMA)),
    'qwen3': (transformers.Qwen3Config, dict(LLAMA, head_dim=16)),
    'mistral': (transformers.MistralConfig, dict(LLAMA, sliding_window=4)),
    'gpt2': (transformers.GPT2Config, dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                           n_positions=64, pad_token_id=PAD)),
}


def _hf_classifier(name, seed=0):
  cls, kw = VARIANTS[name]
  torch.manual_seed(seed)
  model = transformers.AutoModelForSequenceClassification.from_config(cls(**kw, num_labels=LABELS))
  with torch.no_grad():  # random biases / norm scales, so a dropped one would show
    for pname, p in model.named_parameters():
      if pname.endswith('bias') or 'norm' in pname or 'ln_' in pname:
        p.add_(torch.randn_like(p) * 0.1)
  return model.eval()


def _batch(seed, side, pad_ends_row0=False):
  """Ids with the pad id only in padding, two rows padded on `side` ('left' or 'right');
  `pad_ends_row0`: row 0's last real token is the pad id too (a pad id that is also the
  end-of-turn token, as SmolLM2's)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, VOCAB, (3, 9))
  mask = np.ones_like(ids)
  for row, n in ((1, 3), (2, 6)):
    if side == 'left':
      mask[row, :n] = 0
    else:
      mask[row, -n:] = 0
  ids[mask == 0] = PAD
  if pad_ends_row0:
    ids[0, -1] = PAD
  return ids, mask


def _torch_logits(model, ids, mask):
  pos = np.maximum(np.cumsum(mask, 1) - 1, 0)  # HF's positions for left padding, as generate makes
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 position_ids=torch.from_numpy(pos)).logits.float().numpy()


@nnx.jit
def _logits(model, ids, mask):
  return model(ids, mask)


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
  out = {}
  for name in VARIANTS:
    path = tmp_path_factory.mktemp(f'{name}_cls')
    model = _hf_classifier(name)
    model.save_pretrained(path)
    out[name] = (path, model)
  return out


@pytest.mark.parametrize('name', list(VARIANTS))
def test_logits_match_transformers(checkpoints, name):
  path, ref = checkpoints[name]
  model, fresh = registry.build_model(path, task='classification', rngs=nnx.Rngs(0))
  assert fresh == [] and model.num_labels == LABELS
  assert isinstance(model, gpt2.GPT2ForSequenceClassification if name == 'gpt2'
                    else llama.LlamaForSequenceClassification)
  for side, pad_end in (('left', False), ('right', False), ('right', True)):
    ids, mask = _batch(1, side, pad_end)
    got = np.asarray(_logits(model, ids, mask))
    assert got.shape == (3, LABELS)
    np.testing.assert_allclose(got, _torch_logits(ref, ids, mask), atol=2e-5,
                               err_msg=f'{side} padding, pad id ends row 0: {pad_end}')


@pytest.mark.parametrize('name', ['qwen2', 'gpt2'])
def test_export_loads_in_transformers(checkpoints, name, tmp_path):
  path, _ = checkpoints[name]
  model, _ = registry.build_model(path, task='classification', rngs=nnx.Rngs(0))
  registry.save_hf(model, tmp_path, id2label={0: 'neg', 1: 'neu', 2: 'pos'})
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['architectures'] == [type(_hf_classifier(name)).__name__]
  assert saved['id2label'] == {'0': 'neg', '1': 'neu', '2': 'pos'}
  assert 'lm_head.weight' not in safetensors_io.read_safetensors_dir(tmp_path)
  ref = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
  ids, mask = _batch(2, 'right')
  np.testing.assert_allclose(np.asarray(_logits(model, ids, mask)), _torch_logits(ref, ids, mask),
                             atol=2e-5)


@pytest.mark.parametrize('name,cls', [('llama', llama.LlamaForSequenceClassification),
                                      ('gpt2', gpt2.GPT2ForSequenceClassification)])
def test_causal_lm_checkpoint_starts_a_classifier(name, cls, tmp_path):
  """A pretrained LM (untied head here) becomes a classifier: its decoder loads, `lm_head` is
  not read, `score` is new; the decoder's hidden states are the LM's."""
  config_cls, kw = VARIANTS[name]
  torch.manual_seed(3)
  lm = transformers.AutoModelForCausalLM.from_config(config_cls(**{**kw,
                                                                  'tie_word_embeddings': False}))
  lm.save_pretrained(tmp_path)
  model, fresh = registry.build_model(tmp_path, task='classification', num_labels=1,
                                      rngs=nnx.Rngs(0))
  assert isinstance(model, cls) and fresh == ['score.kernel']
  ids, mask = _batch(4, 'right')
  decoder, _ = registry.build_model(tmp_path, task='causal_lm', rngs=nnx.Rngs(0))
  hidden = np.asarray(decoder(ids, mask, return_hidden=True))
  last = mask.sum(1) - 1
  pooled = hidden[np.arange(3), last]
  want = pooled @ np.asarray(model.score.kernel[...])
  np.testing.assert_allclose(np.asarray(_logits(model, ids, mask)), want, atol=1e-5)
