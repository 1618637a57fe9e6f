"""Tests for ftjax.weights.safetensors_io and the BERT weight tables."""

import dataclasses
import json
import re

from flax import nnx
import ml_dtypes
import numpy as np
import pytest

from ftjax.errors import UserError
from ftjax.models import bert
from ftjax.weights import bert_table
from ftjax.weights import safetensors_io as sio

TINY = bert.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=37,
                       max_position_embeddings=64)


def _base(seed=0, config=TINY):
  return bert.BertModel(config, rngs=nnx.Rngs(seed))


def _hf_tensors(seed=0):
  """HF-named tensors of a random tiny base model."""
  return sio.export_params(_base(seed), bert_table.BASE)


def test_write_read_round_trip(tmp_path):
  tensors = {'a.weight': np.arange(6, dtype=np.float32).reshape(2, 3),
             'b': np.ones((4,), ml_dtypes.bfloat16),
             'c': np.arange(3, dtype=np.int64)}
  file = tmp_path / 'sub' / 'model.safetensors'
  sio.write_safetensors(tensors, file)
  assert [p.name for p in file.parent.iterdir()] == ['model.safetensors']
  for got in (sio.read_safetensors_dir(file.parent),
              sio.read_safetensors_dir(file)):
    assert set(got) == set(tensors)
    for k, v in tensors.items():
      assert got[k].dtype == v.dtype
      np.testing.assert_array_equal(got[k], v)


def test_read_sharded(tmp_path):
  tensors = _hf_tensors()
  names = sorted(tensors)
  half = len(names) // 2
  shards = {'model-00001-of-00002.safetensors': names[:half],
            'model-00002-of-00002.safetensors': names[half:]}
  for shard, keys in shards.items():
    sio.write_safetensors({k: tensors[k] for k in keys}, tmp_path / shard)
  weight_map = {k: shard for shard, keys in shards.items() for k in keys}
  (tmp_path / sio.INDEX_FILE).write_text(json.dumps({'weight_map': weight_map}))
  got = sio.read_safetensors_dir(tmp_path)
  assert set(got) == set(tensors)


def test_read_missing_dir_and_file(tmp_path):
  with pytest.raises(UserError, match='nowhere does not exist'):
    sio.read_safetensors_dir(tmp_path / 'nowhere')
  with pytest.raises(UserError, match='no model.safetensors'):
    sio.read_safetensors_dir(tmp_path)
  (tmp_path / sio.INDEX_FILE).write_text(
      json.dumps({'weight_map': {'x': 'shard-1.safetensors'}}))
  with pytest.raises(UserError, match='shard-1.safetensors does not exist'):
    sio.read_safetensors_dir(tmp_path)


def test_read_truncated_file(tmp_path):
  file = tmp_path / 'model.safetensors'
  sio.write_safetensors(_hf_tensors(), file)
  file.write_bytes(file.read_bytes()[:-100])
  with pytest.raises(UserError,
                     match=f'cannot read safetensors file {re.escape(str(file))}'):
    sio.read_safetensors_dir(tmp_path)


def test_read_garbage_index(tmp_path):
  (tmp_path / sio.INDEX_FILE).write_text('not json')
  with pytest.raises(UserError, match='invalid safetensors index'):
    sio.read_safetensors_dir(tmp_path)


def test_export_transposes_linear_weights():
  model = _base()
  tensors = sio.export_params(model, bert_table.BASE)
  q = model.encoder.layer[1].intermediate.dense.kernel[...]
  np.testing.assert_array_equal(
      tensors['encoder.layer.1.intermediate.dense.weight'], np.asarray(q).T)
  assert tensors['encoder.layer.1.intermediate.dense.weight'].shape == (37, 32)
  assert 'embeddings.LayerNorm.weight' in tensors
  assert len(tensors) == 5 + 16 * 2 + 2


def test_load_is_exact_and_tolerates_buffers():
  tensors = _hf_tensors(seed=1)
  tensors['embeddings.position_ids'] = np.arange(64)[None]
  model = _base(seed=2)
  assert sio.load_params(model, tensors, bert_table.BASE) == []
  back = sio.export_params(model, bert_table.BASE)
  for k, v in back.items():
    np.testing.assert_array_equal(v, tensors[k])


def test_load_casts_to_param_dtype():
  model = bert.BertModel(TINY, param_dtype=np.dtype(ml_dtypes.bfloat16),
                         rngs=nnx.Rngs(0))
  sio.load_params(model, _hf_tensors(), bert_table.BASE)
  assert model.pooler.dense.kernel[...].dtype == ml_dtypes.bfloat16


def test_load_reads_old_gamma_beta_names():
  tensors = {k.replace('LayerNorm.weight', 'LayerNorm.gamma')
             .replace('LayerNorm.bias', 'LayerNorm.beta'): v
             for k, v in _hf_tensors().items()}
  assert sio.load_params(_base(), tensors, bert_table.BASE) == []


def test_load_prefixes_both_ways():
  # Base weights into the classification model: `bert.` is added.
  cls = bert.BertForSequenceClassification(TINY, 3, rngs=nnx.Rngs(0))
  fresh = sio.load_params(cls, _hf_tensors(),
                          bert_table.SEQUENCE_CLASSIFICATION)
  assert fresh == ['classifier.bias', 'classifier.kernel']
  # Task weights into the base model: `bert.` is dropped, and so is the head.
  task = sio.export_params(cls, bert_table.SEQUENCE_CLASSIFICATION)
  assert 'bert.pooler.dense.weight' in task and 'classifier.weight' in task
  task['bert.embeddings.position_ids'] = np.arange(64)[None]
  assert sio.load_params(_base(), task, bert_table.BASE) == []


def test_load_without_pooler_reports_it():
  tensors = {k: v for k, v in _hf_tensors().items() if 'pooler' not in k}
  fresh = sio.load_params(_base(), tensors, bert_table.BASE)
  assert fresh == ['pooler.dense.bias', 'pooler.dense.kernel']


def test_load_wrong_shape_names_tensor():
  tensors = _hf_tensors()
  name = 'encoder.layer.1.attention.self.query.weight'
  tensors[name] = np.zeros((32, 16), np.float32)
  with pytest.raises(UserError) as e:
    sio.load_params(_base(), tensors, bert_table.BASE, source='ckpt/dir')
  assert str(e.value) == (f"tensor '{name}' in ckpt/dir has shape (32, 16), "
                          'model expects (32, 32)')


def test_load_missing_tensor_names_it():
  tensors = _hf_tensors()
  del tensors['encoder.layer.0.output.dense.bias']
  with pytest.raises(UserError, match=re.escape(
      "missing tensor 'encoder.layer.0.output.dense.bias' in checkpoint")):
    sio.load_params(_base(), tensors, bert_table.BASE)


def test_load_unexpected_tensor_names_it():
  tensors = _hf_tensors()
  tensors['encoder.layer.0.attention.self.rotary.weight'] = np.zeros(3)
  with pytest.raises(UserError, match=re.escape(
      "unexpected tensor 'encoder.layer.0.attention.self.rotary.weight'")):
    sio.load_params(_base(), tensors, bert_table.BASE)


def test_load_extra_layer_is_unexpected():
  # A 2-layer checkpoint into a 1-layer model: layer 1 has no parameter.
  small = bert.BertModel(dataclasses.replace(TINY, num_hidden_layers=1),
                         rngs=nnx.Rngs(0))
  with pytest.raises(UserError, match=r"unexpected tensor 'encoder\.layer\.1\."):
    sio.load_params(small, _hf_tensors(), bert_table.BASE)


def test_load_duplicate_names_refused():
  tensors = _hf_tensors()
  tensors['bert.pooler.dense.bias'] = tensors['pooler.dense.bias']
  with pytest.raises(UserError, match="both map to parameter 'pooler.dense.bias'"):
    sio.load_params(_base(), tensors, bert_table.BASE)


def test_export_refuses_unknown_param():
  model = _base()
  model.pooler.extra = nnx.Param(np.zeros(2, np.float32))
  with pytest.raises(UserError, match="parameter 'pooler.extra'"):
    sio.export_params(model, bert_table.BASE)
