"""ModernBERT (ftjax.models.modernbert + weights/modernbert_table).

Oracle: transformers on tiny random checkpoints (fp32, eval mode, its eager and sdpa attention on
padded batches): the base encoder's hidden states and every head's outputs, for two configs
('cls' pooling without biases, 'mean' pooling with every bias), sequences longer than the local
window so the sliding-window layers matter; and the exports loading back in transformers.
"""

import dataclasses
import json

from flax import nnx
import jax
import numpy as np
import pytest
import torch
import transformers

from ftjax.errors import UserError
from ftjax.models import modernbert
from ftjax.models import registry
from ftjax.weights import safetensors_io

VOCAB, SEQ = 70, 12
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
              intermediate_size=48, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
              eos_token_id=2, cls_token_id=1, sep_token_id=2)
CONFIGS = {
    # layers: global, local, global; window 2 each side; a global base unlike the local one
    'cls': dict(COMMON, global_attn_every_n_layers=2, local_attention=4, global_rope_theta=1000.0,
                classifier_pooling='cls', attn_implementation='eager'),
    # two layers, local then global (`layer_types` spelt out); every bias; dropouts (inactive in
    # eval)
    'mean': dict(COMMON, num_hidden_layers=2, layer_types=['sliding_attention', 'full_attention'],
                 local_attention=6, classifier_pooling='mean', attention_bias=True,
                 mlp_bias=True, norm_bias=True, classifier_bias=True, classifier_activation='silu',
                 hidden_activation='gelu_pytorch_tanh', embedding_dropout=0.1, mlp_dropout=0.1,
                 attention_dropout=0.1, classifier_dropout=0.1, attn_implementation='sdpa'),
}
HF_CLASSES = {'base': 'ModernBertModel', 'classification': 'ModernBertForSequenceClassification',
              'token_classification': 'ModernBertForTokenClassification',
              'multiple_choice': 'ModernBertForMultipleChoice',
              'question_answering': 'ModernBertForQuestionAnswering'}
AUTO = {'base': 'AutoModel', 'classification': 'AutoModelForSequenceClassification',
        'token_classification': 'AutoModelForTokenClassification',
        'multiple_choice': 'AutoModelForMultipleChoice',
        'question_answering': 'AutoModelForQuestionAnswering'}


def _hf_config(name, **extra):
  return transformers.ModernBertConfig(**CONFIGS[name], num_labels=3, **extra)


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
  """{(config name, task): (checkpoint dir, transformers model in eval mode)}."""
  out = {}
  for name in CONFIGS:
    for k, (task, cls) in enumerate(HF_CLASSES.items()):
      torch.manual_seed(k)
      extra = {'num_labels': 2} if task == 'question_answering' else {}
      config = _hf_config(name) if not extra else transformers.ModernBertConfig(
          **CONFIGS[name], **extra)
      model = getattr(transformers, cls)(config).eval()
      path = tmp_path_factory.mktemp(f'modernbert_{name}_{task}')
      model.save_pretrained(path)
      out[name, task] = path, model
  return out


@pytest.fixture(scope='module')
def built(checkpoints):
  """(config name, task) -> our model loaded from that checkpoint, built once."""
  cache = {}

  def get(name, task):
    if (name, task) not in cache:
      model, fresh = registry.build_model(checkpoints[name, task][0], task=task,
                                          rngs=nnx.Rngs(0))
      assert fresh == []
      cache[name, task] = model
    return cache[name, task]
  return get


def _fresh(path, task, **kw):
  """The params a checkpoint lacks for `task`, from shapes alone (no model is built)."""
  spec = registry.model_spec(path, task=task, **kw)
  params = safetensors_io.param_vars(nnx.eval_shape(lambda: spec.build(nnx.Rngs(0))))
  tensors = safetensors_io.read_safetensors_dir(path)
  return safetensors_io.match_tensors({p: tuple(v.shape) for p, v in params.items()},
                                      {n: t.shape for n, t in tensors.items()}, spec.table)[1]


_FORWARD = nnx.jit(lambda m, i, a: m(i, a))


def _batch(shape=(3, SEQ), seed=0):
  """Right-padded ids and mask; one row shorter than a local window, one full."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, VOCAB, shape)
  mask = np.ones_like(ids)
  flat, fmask = ids.reshape(-1, shape[-1]), mask.reshape(-1, shape[-1])
  for row, length in enumerate([shape[-1], 9, 3, 7, 11, 5][:flat.shape[0]]):
    fmask[row, length:] = 0
  flat[fmask == 0] = 0
  return ids, mask


def _torch_outputs(model, task, ids, mask):
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
  if task == 'base':
    return out.last_hidden_state.numpy()
  if task == 'question_answering':
    return np.stack([out.start_logits.numpy(), out.end_logits.numpy()])
  return out.logits.numpy()


def _ours(model, task, ids, mask):
  out = _FORWARD(model, ids, mask)
  if task == 'base':
    return np.asarray(out[0])
  if task == 'question_answering':
    return np.stack([np.asarray(out[0]), np.asarray(out[1])])
  return np.asarray(out)


def _inputs(task):
  if task != 'multiple_choice':
    return _batch()
  ids, mask = _batch((2, 3, SEQ), seed=1)
  # A left-padded choice: 'cls' pooling reads its first real token (HF: mask.argmax).
  ids[1, 2], mask[1, 2] = np.roll(ids[1, 2], 4), np.roll(mask[1, 2], 4)
  return ids, mask


@pytest.mark.parametrize('name', list(CONFIGS))
@pytest.mark.parametrize('task', list(HF_CLASSES))
def test_outputs_and_export_match_transformers(checkpoints, built, tmp_path, name, task):
  _, ref = checkpoints[name, task]
  model = built(name, task)
  ids, mask = _inputs(task)
  want = _torch_outputs(ref, task, ids, mask)
  got = _ours(model, task, ids, mask)
  assert got.shape == want.shape
  if task in ('base', 'token_classification', 'question_answering'):
    # Real tokens only: a padded query beyond every real key's window sees no key at all,
    # which each implementation fills as it likes (eager: uniform, sdpa: zeros); unused.
    real = mask.astype(bool)
    got, want = got[..., real, :] if task != 'question_answering' else got[:, real], (
        want[..., real, :] if task != 'question_answering' else want[:, real])
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  registry.save_hf(model, tmp_path / 'out')
  hf = json.loads((tmp_path / 'out' / 'config.json').read_text())
  assert hf['architectures'] == [HF_CLASSES[task]]
  again = getattr(transformers, AUTO[task]).from_pretrained(
      tmp_path / 'out', attn_implementation='eager').eval()
  assert again.config.layer_types == ref.config.layer_types
  assert again.config.rope_parameters == ref.config.rope_parameters
  again_out = _torch_outputs(again, task, ids, mask)
  if task in ('base', 'token_classification', 'question_answering'):
    again_out = again_out[..., real, :] if task != 'question_answering' else again_out[:, real]
  np.testing.assert_allclose(again_out, want, atol=1e-5, rtol=0)


def test_local_attention_matters(checkpoints, built, tmp_path):
  """Widening the window changes the outputs, in ftjax as in transformers: the sliding
  layers do mask."""
  path, _ = checkpoints['cls', 'base']
  ids, mask = _batch()
  model = built('cls', 'base')
  wide = nnx.clone(model)
  wide.config = dataclasses.replace(wide.config, local_attention=64)
  narrow, widened = _ours(model, 'base', ids, mask), _ours(wide, 'base', ids, mask)
  assert np.abs(narrow - widened)[0].max() > 1e-3  # the full-length row sees past its window
  ref_wide = transformers.ModernBertModel.from_pretrained(
      path, local_attention=64, attn_implementation='eager').eval()
  np.testing.assert_allclose(widened, _torch_outputs(ref_wide, 'base', ids, mask), atol=1e-5)


def test_dropout_runs_only_with_rngs(built):
  model = built('mean', 'classification')
  ids, mask = _batch()
  train = nnx.jit(lambda m, i, a, r: m(i, a, rngs=r))
  a = np.asarray(train(model, ids, mask, nnx.Rngs(dropout=1)))
  b = np.asarray(train(model, ids, mask, nnx.Rngs(dropout=2)))
  assert np.isfinite(a).all() and np.abs(a - b).max() > 1e-4
  assert np.abs(a - _ours(model, 'classification', ids, mask)).max() > 1e-4


def test_an_encoder_checkpoint_gets_a_new_head(checkpoints):
  assert sorted(_fresh(checkpoints['mean', 'base'][0], 'classification', num_labels=2)) == [
      'classifier.bias', 'classifier.kernel', 'head.dense.bias', 'head.dense.kernel',
      'head.norm.bias', 'head.norm.scale']


def test_a_masked_lm_checkpoint_lends_its_head(tmp_path):
  """HF's masked-LM `head` has the task classes' names and loads into them; `decoder` is
  not read."""
  torch.manual_seed(0)
  transformers.ModernBertForMaskedLM(_hf_config('cls')).save_pretrained(tmp_path)
  assert sorted(_fresh(tmp_path, 'classification')) == ['classifier.bias', 'classifier.kernel']
  assert _fresh(tmp_path, 'base') == [] and _fresh(tmp_path, 'question_answering') == [
      'classifier.bias', 'classifier.kernel']


def test_legacy_config_keys():
  """Older config.json spellings: `global_attn_every_n_layers` and the two theta keys."""
  cfg = modernbert.ModernBertConfig.from_hf(dict(
      num_hidden_layers=4, global_attn_every_n_layers=2, global_rope_theta=5.0,
      local_rope_theta=7.0, hidden_size=32, num_attention_heads=4))
  assert cfg.layer_types == ('full_attention', 'sliding_attention') * 2
  assert (cfg.global_rope_theta, cfg.local_rope_theta) == (5.0, 7.0)
  assert modernbert.ModernBertConfig.from_hf(cfg.to_hf()) == cfg
  assert cfg.to_hf()['global_attn_every_n_layers'] == 2
  odd = dataclasses.replace(cfg, layer_types=('sliding_attention',) * 3 + ('full_attention',))
  assert 'global_attn_every_n_layers' not in odd.to_hf()
  assert modernbert.ModernBertConfig.from_hf(odd.to_hf()) == odd
  # `model.num_layers` keeps the first layers: their types too.
  kept = modernbert.ModernBertConfig.from_hf(dict(odd.to_hf(), num_hidden_layers=2))
  assert kept.layer_types == ('sliding_attention',) * 2
  with pytest.raises(UserError, match='model.scan_layers needs identical layers'):
    from ftjax.models import layer_stack  # pylint: disable=g-import-not-at-top
    layer_stack.stack_layers(modernbert.ModernBertModel(cfg, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize('hf, match', [
    (dict(classifier_pooling='max'), "'classifier_pooling'.*unsupported pooling 'max'"),
    (dict(hidden_activation='geglu'), "'hidden_activation'.*unsupported activation 'geglu'"),
    (dict(rope_parameters={'full_attention': {'rope_type': 'yarn', 'factor': 2.0}}),
     "'rope_parameters'.*rope_type 'yarn' for full_attention"),
    (dict(rope_scaling={'rope_type': 'linear', 'factor': 2.0}), "'rope_scaling'"),
    (dict(layer_types=['full_attention', 'chunked_attention']), "'layer_types'.*'chunked"),
    (dict(layer_types=['full_attention']), "'layer_types'.*1 entries for num_hidden_layers 2"),
    (dict(hidden_size=30), "'hidden_size'.*not divisible"),
])
def test_a_bad_config_is_a_one_line_user_error(tmp_path, hf, match):
  (tmp_path / 'config.json').write_text(json.dumps({
      'model_type': 'modernbert', 'num_hidden_layers': 2, 'hidden_size': 32,
      'num_attention_heads': 4, **hf}))
  with pytest.raises(UserError, match=match) as e:
    registry.model_spec(tmp_path, task='classification')
  assert '\n' not in str(e.value)


def test_param_dtype_and_logical_axes():
  cfg = modernbert.ModernBertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=48)
  model = nnx.eval_shape(lambda: modernbert.ModernBertForSequenceClassification(
      cfg, 2, rngs=nnx.Rngs(0), param_dtype=jax.numpy.bfloat16))
  state = nnx.state(model, nnx.Param)
  axes = {'.'.join(map(str, p)): v.get_metadata().get('out_sharding')
          for p, v in nnx.to_flat_state(state)}
  assert axes['model.layers.1.attn.Wqkv.kernel'] == ('embed', 'heads')
  assert axes['model.layers.1.mlp.Wi.kernel'] == ('embed', 'mlp')
  assert axes['model.embeddings.tok_embeddings.embedding'] == ('vocab', 'embed')
  assert 'model.layers.0.attn_norm.scale' not in axes and 'model.final_norm.bias' not in axes
