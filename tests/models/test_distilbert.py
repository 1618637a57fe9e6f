"""DistilBERT (ftjax.models.distilbert + weights/distilbert_table).

Oracle: transformers on a tiny random checkpoint (eval mode): the base encoder's hidden states
and the classifier's logits with padding, and the exports loading back in transformers.
"""

import json

from flax import nnx
import numpy as np
import pytest
import torch
import transformers

from ftjax.errors import UserError
from ftjax.models import distilbert
from ftjax.models import registry

TINY = dict(vocab_size=70, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
            max_position_embeddings=24, num_labels=3)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  torch.manual_seed(0)
  model = transformers.DistilBertForSequenceClassification(
      transformers.DistilBertConfig(**TINY)).eval()
  path = tmp_path_factory.mktemp('distilbert')
  model.save_pretrained(path)
  return path, model


def _batch():
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 70, (3, 9))
  mask = np.ones_like(ids)
  mask[1, 6:] = 0
  mask[2, 2:] = 0
  ids[mask == 0] = 0
  return ids, mask


def test_classifier_base_and_export_match_transformers(checkpoint, tmp_path):
  path, ref = checkpoint
  model, fresh = registry.build_model(path, task='classification', rngs=nnx.Rngs(0))
  assert fresh == [] and isinstance(model, distilbert.DistilBertForSequenceClassification)
  ids, mask = _batch()
  with torch.no_grad():
    want = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
  got = nnx.jit(lambda m, i, a: m(i, a))(model, ids, mask)
  np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-5)
  registry.save_hf(model, tmp_path / 'cls')
  assert json.loads((tmp_path / 'cls' / 'config.json').read_text())['architectures'] == [
      'DistilBertForSequenceClassification']
  again = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / 'cls').eval()
  with torch.no_grad():
    np.testing.assert_allclose(again(input_ids=torch.from_numpy(ids),
                                     attention_mask=torch.from_numpy(mask)).logits,
                               want.numpy(), atol=1e-5)
  base, fresh = registry.build_model(path, task='base', rngs=nnx.Rngs(0))
  assert fresh == []
  hidden, _ = nnx.jit(lambda m, i, a: m(i, a))(base, ids, mask)
  with torch.no_grad():
    want_hidden = ref.distilbert(input_ids=torch.from_numpy(ids),
                                 attention_mask=torch.from_numpy(mask)).last_hidden_state
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(hidden)[real], want_hidden.numpy()[real], atol=1e-5)


def test_a_base_checkpoint_gets_a_new_two_layer_head(checkpoint, tmp_path):
  path, ref = checkpoint
  ref.distilbert.save_pretrained(tmp_path)
  model, fresh = registry.build_model(tmp_path, task='classification', num_labels=2,
                                      rngs=nnx.Rngs(0))
  assert sorted(fresh) == ['classifier.bias', 'classifier.kernel', 'pre_classifier.bias',
                           'pre_classifier.kernel']


def test_bad_activation_is_named():
  with pytest.raises(UserError, match="unsupported activation 'swiglu' in distilbert config"):
    distilbert.DistilBertConfig(activation='swiglu')
