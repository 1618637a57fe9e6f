"""RoBERTa and XLM-RoBERTa (ftjax.models.bert's fairseq positions and classification head).

Oracle: transformers on tiny random checkpoints (eval mode), with right and left padding (the
positions count real tokens from pad_token_id + 1, so padding on either side must give HF's
numbers), for the base encoder and the sequence classifier, and the exports loading back in
transformers.
"""

import json

from flax import nnx
import numpy as np
import pytest
import torch
import transformers

from ftjax.models import bert
from ftjax.models import registry

TINY = dict(vocab_size=90, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=40, type_vocab_size=1,
            pad_token_id=1, layer_norm_eps=1e-5)
CLASSES = {'roberta': (transformers.RobertaConfig, transformers.RobertaForSequenceClassification),
           'xlm-roberta': (transformers.XLMRobertaConfig,
                           transformers.XLMRobertaForSequenceClassification)}


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
  out = {}
  for name, (config_cls, model_cls) in CLASSES.items():
    torch.manual_seed(0)
    model = model_cls(config_cls(**TINY, num_labels=3)).eval()
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    out[name] = (path, model)
  return out


def _batch():
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 90, (3, 10))
  mask = np.ones_like(ids)
  mask[1, 7:] = 0  # right padding
  mask[2, :4] = 0  # left padding
  ids[mask == 0] = 1  # RoBERTa's pad id
  return ids, mask


@pytest.mark.parametrize('name', list(CLASSES))
def test_classifier_and_base_match_transformers(checkpoints, name, tmp_path):
  path, ref = checkpoints[name]
  model, fresh = registry.build_model(path, task='classification', rngs=nnx.Rngs(0))
  assert fresh == [] and isinstance(model, bert.RobertaForSequenceClassification)
  assert model.config.model_type == name and model.roberta.pooler is None
  ids, mask = _batch()
  with torch.no_grad():
    want = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
  got = nnx.jit(lambda m, i, a: m(i, a))(model, ids, mask)
  np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-5)
  # The export loads as HF's class and scores alike.
  registry.save_hf(model, tmp_path / 'cls')
  again = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / 'cls')
  assert type(again).__name__ == type(ref).__name__
  with torch.no_grad():
    np.testing.assert_allclose(again.eval()(input_ids=torch.from_numpy(ids),
                                            attention_mask=torch.from_numpy(mask)).logits,
                               want.numpy(), atol=1e-5)
  # The bare encoder (`task='base'`) gives HF's hidden states at the real tokens.
  base, fresh = registry.build_model(path, task='base', rngs=nnx.Rngs(0))
  assert fresh == ['pooler.dense.bias', 'pooler.dense.kernel']  # a classifier has no pooler
  hidden, _ = nnx.jit(lambda m, i, a: m(i, a))(base, ids, mask)
  with torch.no_grad():
    want_hidden = ref.roberta(input_ids=torch.from_numpy(ids),
                              attention_mask=torch.from_numpy(mask)).last_hidden_state
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(hidden)[real], want_hidden.numpy()[real], atol=1e-5)
  saved = json.loads((tmp_path / 'cls' / 'config.json').read_text())
  assert saved['model_type'] == name and saved['pad_token_id'] == 1


def test_positions_past_the_table_are_refused(checkpoints):
  model, _ = registry.build_model(checkpoints['roberta'][0], task='classification',
                                  rngs=nnx.Rngs(0))
  ids = np.full((1, 39), 5)  # 39 tokens + pad_token_id + 1 = 41 > 40 positions
  with pytest.raises(Exception, match=r'exceeds max_position_embeddings 40 of the roberta model'
                                       r' \(2 positions before the first token\)'):
    model(ids)
