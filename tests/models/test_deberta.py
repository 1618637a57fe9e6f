"""DeBERTa-v2/v3 (ftjax.models.deberta + weights/deberta_table).

Oracle: transformers on tiny random checkpoints (fp32, eval mode), for two configs: a v3-like
one (log-bucketed relative positions shorter than the sequence, shared position keys, p2c and
c2p, LayerNorm'd relative table, no absolute positions) and a v2-like one (unbucketed relative
positions clipped at 6, own position projections, absolute positions, token types, a
factorised embedding and the ConvLayer). Every task class on a padded batch: the base
encoder's hidden states and each head's logits, and its `save_hf` export loading back in
transformers' `AutoModelFor*` with the same logits.
"""

import json

from flax import nnx
import numpy as np
import pytest
import torch
import transformers
from transformers.models.deberta_v2 import modeling_deberta_v2 as hf_deberta

from ftjax.errors import UserError
from ftjax.models import deberta
from ftjax.models import layer_stack
from ftjax.models import registry
from ftjax.weights import safetensors_io

SEQ = 20
COMMON = dict(vocab_size=70, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=48, max_position_embeddings=64, relative_attention=True,
              num_labels=3)
CONFIGS = {
    'v3': dict(COMMON, position_buckets=8, share_att_key=True, pos_att_type='p2c|c2p',
               norm_rel_ebd='layer_norm', position_biased_input=False, type_vocab_size=0),
    'v2': dict(COMMON, position_buckets=-1, max_relative_positions=6, share_att_key=False,
               pos_att_type=['c2p', 'p2c'], position_biased_input=True, type_vocab_size=2,
               embedding_size=24, conv_kernel_size=3, conv_groups=2, conv_act='gelu',
               pooler_hidden_act='tanh'),
}
# task -> (HF class, Auto class it exports for)
TASKS = {
    'base': (transformers.DebertaV2Model, transformers.AutoModel),
    'classification': (transformers.DebertaV2ForSequenceClassification,
                       transformers.AutoModelForSequenceClassification),
    'token_classification': (transformers.DebertaV2ForTokenClassification,
                             transformers.AutoModelForTokenClassification),
    'multiple_choice': (transformers.DebertaV2ForMultipleChoice,
                        transformers.AutoModelForMultipleChoice),
    'question_answering': (transformers.DebertaV2ForQuestionAnswering,
                           transformers.AutoModelForQuestionAnswering),
}


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
  """(config name, task) -> (directory, the eval-mode transformers model saved there)."""
  out = {}
  for name, kwargs in CONFIGS.items():
    for task, (cls, _) in TASKS.items():
      torch.manual_seed(0)
      labels = 2 if task == 'question_answering' else kwargs['num_labels']  # start, end
      model = cls(transformers.DebertaV2Config(**dict(kwargs, num_labels=labels))).eval()
      path = tmp_path_factory.mktemp(f'deberta_{name}_{task}')
      model.save_pretrained(path)
      out[name, task] = path, model
  return out


def _batch(choices: int = 0):
  rng = np.random.default_rng(0)
  shape = (3, SEQ) if not choices else (2, choices, SEQ)
  ids = rng.integers(1, 70, shape)
  types = rng.integers(0, 2, shape)
  mask = np.ones_like(ids)
  flat = mask.reshape(-1, SEQ)
  flat[1, 13:] = 0
  flat[2, 3:] = 0
  ids[mask == 0] = 0
  return ids, mask, types


def _torch_out(model, task, ids, mask, types):
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                token_type_ids=torch.from_numpy(types))
  if task == 'base':
    return [out.last_hidden_state.numpy()]
  if task == 'question_answering':
    return [out.start_logits.numpy(), out.end_logits.numpy()]
  return [out.logits.numpy()]


def _ours(model, task, ids, mask, types):
  got = nnx.jit(lambda m, i, a, t: m(i, a, t))(model, ids, mask, types)
  if task == 'base':
    return [np.asarray(got[0])]
  if task == 'question_answering':
    return [np.asarray(x) for x in got]
  return [np.asarray(got)]


@pytest.mark.parametrize('task', list(TASKS))
@pytest.mark.parametrize('name', list(CONFIGS))
def test_every_head_and_its_export_match_transformers(checkpoints, tmp_path, name, task):
  path, ref = checkpoints[name, task]
  model, fresh = registry.build_model(path, task=task, rngs=nnx.Rngs(0))
  assert fresh == []
  batch = _batch(choices=4 if task == 'multiple_choice' else 0)
  want = _torch_out(ref, task, *batch)
  for got, expected in zip(_ours(model, task, *batch), want, strict=True):
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)  # padding included
  registry.save_hf(model, tmp_path / 'out')
  config = json.loads((tmp_path / 'out' / 'config.json').read_text())
  assert config['architectures'] == [type(ref).__name__]
  again = TASKS[task][1].from_pretrained(tmp_path / 'out').eval()
  for got, expected in zip(_torch_out(again, task, *batch), want, strict=True):
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_scanned_layers_match_the_loop(checkpoints):
  """The ConvLayer after layer 0 also under `jax.lax.scan` (a traced layer index)."""
  path, _ = checkpoints['v2', 'classification']
  model, _ = registry.build_model(path, task='classification', rngs=nnx.Rngs(0))
  batch = _batch()
  want = _ours(model, 'classification', *batch)[0]
  got = _ours(layer_stack.stack_layers(model), 'classification', *batch)[0]
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def _fresh(path, task, **kwargs):
  """The params a checkpoint leaves freshly initialised, from shapes alone (no model built)."""
  spec = registry.model_spec(path, task=task, **kwargs)
  model = nnx.eval_shape(lambda: spec.build(nnx.Rngs(0)))
  shapes = {p: tuple(v.get_value().shape) for p, v in safetensors_io.param_vars(model).items()}
  tensors = safetensors_io.read_safetensors_dir(path)
  _, fresh = safetensors_io.match_tensors(shapes, {n: t.shape for n, t in tensors.items()},
                                          spec.table)
  return model, sorted(fresh)


@pytest.mark.parametrize('buckets, max_position', [(8, 64), (256, 512), (16, 40)])
def test_log_buckets_equal_transformers(buckets, max_position):
  for size in (SEQ, 2 * max_position):
    want = hf_deberta.build_relative_position(torch.zeros(size, 1), torch.zeros(size, 1),
                                              bucket_size=buckets, max_position=max_position)
    np.testing.assert_array_equal(deberta.relative_positions(size, buckets, max_position),
                                  want[0].numpy())


def test_a_base_checkpoint_gets_new_heads(checkpoints):
  path, _ = checkpoints['v3', 'base']
  assert _fresh(path, 'classification', num_labels=2)[1] == [
      'classifier.bias', 'classifier.kernel', 'context_pooler.dense.bias',
      'context_pooler.dense.kernel']
  assert _fresh(path, 'question_answering')[1] == ['qa_outputs.bias', 'qa_outputs.kernel']


def test_a_v3_checkpoint_with_an_unused_position_table_loads(tmp_path):
  """v3 checkpoints carry `position_embeddings` without `position_biased_input`; transformers
  skips it, and so does the table."""
  torch.manual_seed(0)
  transformers.DebertaV2Model(transformers.DebertaV2Config(
      **dict(CONFIGS['v3'], position_biased_input=True))).save_pretrained(tmp_path)
  config = json.loads((tmp_path / 'config.json').read_text())
  config['position_biased_input'] = False
  (tmp_path / 'config.json').write_text(json.dumps(config))
  model, fresh = _fresh(tmp_path, 'base')
  assert fresh == [] and model.embeddings.position_embeddings is None


@pytest.mark.parametrize('key, value, message', [
    ('pos_att_type', 'p2p|c2p', "unsupported pos_att_type 'p2p' in deberta-v2 config"),
    ('norm_rel_ebd', 'batch_norm', "unsupported norm_rel_ebd 'batch_norm' in deberta-v2 config"),
    ('hidden_act', 'swiglu', "unsupported hidden_act 'swiglu' in deberta-v2 config"),
    ('pooler_hidden_size', 16, 'unsupported pooler_hidden_size 16 in deberta-v2 config'),
    ('conv_kernel_size', 2, 'conv_kernel_size 2 must be odd'),
])
def test_a_bad_config_is_named(key, value, message):
  with pytest.raises(UserError, match=message) as e:
    deberta.DebertaV2Config.from_hf({'model_type': 'deberta-v2', 'hidden_size': 32,
                                     'num_attention_heads': 4, key: value})
  assert '\n' not in str(e.value)
