"""Tests for ftjax.models.layer_stack: scanned (stacked) layers and remat policies.

The oracle is the same model unscanned: stacking is a change of layout, so forward passes,
gradients, training steps, generation and checkpoints must agree with the layer list's.
Tiny random models (2-3 layers) keep every compile short.
"""

import pathlib
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftjax import checkpoint as ckpt_lib
from ftjax import generate as generate_lib
from ftjax import methods, sharding, train
from ftjax.config import base_config
from ftjax.errors import UserError
from ftjax.methods import base as methods_base
from ftjax.models import bert, gemma, gpt2, layer_stack, llama
from ftjax.models import rope as rope_lib

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / 'methods'))
import method_harness  # pylint: disable=g-import-not-at-top,wrong-import-position
from tiny_assets import make_conversations, make_tiny_llama, write_jsonl  # pylint: disable=g-import-not-at-top,wrong-import-position

VOCAB = 61
LLAMA = dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=4,
             max_position_embeddings=64)


def _perturbed(model, seed=1):
  """Every variable moved off its init (zero biases and unit norms would hide a mixed-up layer)."""
  state = nnx.state(model)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  moved = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  nnx.update(model, jax.tree.unflatten(treedef, moved))
  return model


def _build(name, remat='none'):
  rngs = nnx.Rngs(0)
  if name == 'bert':
    cfg = bert.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=24,
                          max_position_embeddings=32)
    return _perturbed(bert.BertForSequenceClassification(cfg, 3, rngs=rngs, remat=remat))
  if name == 'gpt2':
    cfg = gpt2.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=2, n_head=4,
                          scale_attn_by_inverse_layer_idx=True)
    return _perturbed(gpt2.GPT2LMHeadModel(cfg, rngs=rngs, remat=remat))
  if name == 'llama':
    return _perturbed(llama.LlamaForCausalLM(llama.LlamaConfig(**LLAMA), rngs=rngs, remat=remat))
  if name == 'gemma3':  # per-layer windows and RoPE (sliding, sliding, global), linear global
    cfg = gemma.GemmaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=4, sliding_window=3,
        layer_types=('sliding_attention', 'sliding_attention', 'full_attention'),
        rope=rope_lib.RopeConfig('linear', 1e6, factor=2.0), local_rope=rope_lib.RopeConfig())
    return _perturbed(gemma.GemmaForCausalLM(cfg, rngs=rngs, remat=remat))
  # Qwen3-style q/k norms and per-layer sliding windows (full, sliding, full).
  cfg = llama.LlamaConfig(model_type='qwen3', qk_norm=True, qkv_bias=True,
                          layer_windows=(None, 3, None), **{**LLAMA, 'num_hidden_layers': 3})
  return _perturbed(llama.LlamaForCausalLM(cfg, rngs=rngs, remat=remat))


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, VOCAB, (2, 9)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, :4] = 0  # left padding
  return ids, mask


def _loss(model, ids, mask, rngs=None):
  out = model(ids, mask, rngs=rngs)
  return jnp.mean(out.astype(jnp.float32) ** 2), out


@nnx.jit
def _loss_and_grads(model, ids, mask, key):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def f(params):
    rngs = None if key is None else nnx.Rngs(dropout=key)
    return _loss(nnx.merge(graphdef, params, rest), ids, mask, rngs)

  (loss, out), grads = jax.value_and_grad(f, has_aux=True)(params)
  return loss, out, grads


def _flat(state):
  return {methods_base.keypath_string(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def _unstacked_grads(stacked_model, grads):
  """Grads of a stacked model in the unscanned layout (via the model's own unstacking)."""
  model = nnx.clone(stacked_model)
  nnx.update(model, grads)
  return nnx.state(layer_stack.unstack_layers(model), nnx.Param)


@pytest.mark.parametrize('name', ['qwen3_windows', 'gpt2', 'gemma3'])
def test_scanned_forward_and_grads_equal_unscanned(name):
  model = _build(name)
  stacked = layer_stack.stack_layers(model)
  assert layer_stack.is_stacked(stacked) and not layer_stack.is_stacked(model)
  ids, mask = _batch()
  key = None  # dropout: see the trainer tests (BERT)
  loss_a, out_a, grads_a = _loss_and_grads(model, ids, mask, key)
  loss_b, out_b, grads_b = _loss_and_grads(stacked, ids, mask, key)
  np.testing.assert_allclose(np.asarray(out_b), np.asarray(out_a), atol=1e-5, rtol=0)
  np.testing.assert_allclose(float(loss_b), float(loss_a), rtol=1e-5)
  want, got = _flat(grads_a), _flat(_unstacked_grads(stacked, grads_b))
  assert want.keys() == got.keys()
  for k, v in want.items():
    np.testing.assert_allclose(got[k], v, atol=1e-5, rtol=0, err_msg=k)


def test_stack_unstack_round_trip_and_metadata():
  model = _build('qwen3_windows')
  stacked = layer_stack.stack_layers(model)
  kernel = stacked.model.layers.self_attn.q_proj.kernel
  assert kernel.shape == (3, 16, 16)  # 3 layers
  assert kernel.get_metadata()['out_sharding'] == (layer_stack.LAYER_AXIS, 'embed', 'heads')
  assert layer_stack.per_layer_ndim(stacked.model.layers.input_layernorm.scale) == 1
  assert isinstance(model.model.layers, nnx.List)  # the input is left as it was
  back = layer_stack.unstack_layers(stacked)
  assert nnx.graphdef(back) == nnx.graphdef(model)
  want, got = _flat(nnx.state(model)), _flat(nnx.state(back))
  assert want.keys() == got.keys()
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  assert layer_stack.unstack_layers(model) is model


def test_remat_policies_give_the_same_loss_and_grads():
  """The policy is a constructor argument; it holds after stacking (the list's owner keeps it)."""
  ids, mask = _batch(1)
  policies = sorted(set(layer_stack.REMAT_POLICIES) - {'none', 'nothing_saveable'})  # alias
  want = _loss_and_grads(_build('llama'), ids, mask, None)
  for scanned, names in ((False, ['full']), (True, policies)):
    for policy in names:
      model = _build('llama', remat=policy)
      if scanned:
        model = layer_stack.stack_layers(model)
        assert layer_stack.is_stacked(model)
      assert model.model.remat == policy
      got = _loss_and_grads(model, ids, mask, None)
      np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
      grads = _flat(_unstacked_grads(model, got[2]) if scanned else got[2])
      for k, v in _flat(want[2]).items():
        np.testing.assert_allclose(grads[k], v, atol=1e-5, rtol=0, err_msg=(policy, k))


@pytest.mark.parametrize('name', ['bert', 'gpt2', 'llama'])
def test_remat_policy_is_validated(name):
  with pytest.raises(UserError, match=r"'model.remat' must be one of none, full"):
    _build(name, remat='everything')
  c = base_config()
  c.model.checkpoint = 'x'
  c.model.remat = 'dots'
  from ftjax import config as config_lib  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match="model.remat"):
    config_lib.validate(c)


def test_cached_forward_and_generation_with_stacked_layers():
  model = _build('qwen3_windows')
  stacked = layer_stack.stack_layers(model)
  ids, mask = _batch(2)
  outs = []
  for m in (model, stacked):
    cache = m.init_cache(2, 12)
    logits, cache = m(ids, mask, cache=cache)
    step, _ = m(ids[:, -1:], np.ones((2, 1), np.int32), cache=cache)
    outs.append((np.asarray(logits), np.asarray(step)))
  for a, b in zip(*outs):
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
  prompts = [[5, 9, 3], [17, 2, 8, 40, 11]]
  assert (generate_lib.generate(stacked, prompts, max_new_tokens=5)
          == generate_lib.generate(model, prompts, max_new_tokens=5))


# --- through the trainer -------------------------------------------------------------------------


def _steps(exp, batches, state=None):
  """Jitted `train.make_train_step` steps over `batches`; returns (state, [loss])."""
  if not hasattr(exp, 'test_step'):  # one compilation per experiment
    exp.test_step = jax.jit(train.make_train_step(exp.graphdef, exp.tx, exp.schedule, exp.task))
  step = exp.test_step
  state = exp.state if state is None else state
  losses = []
  for batch in batches:
    state, metrics = step(state, sharding.put_batch(batch, sharding.batch_sharding(exp.mesh)))
    losses.append(float(metrics['loss']))
  return state, losses


def _batches(exp, n, size):
  it = exp.dataset.train_iterator(size, seed=0, shard_index=0, shard_count=1)
  return [next(it) for _ in range(n)]


def _assert_same_run(runs, atol=1e-5):
  """(exp, state, losses) of an unscanned and a scanned run: equal losses and parameters."""
  (exp_a, state_a, losses_a), (exp_b, state_b, losses_b) = runs
  np.testing.assert_allclose(losses_b, losses_a, rtol=atol)
  want = _flat(nnx.state(train.model_from_state(exp_a, state_a)))
  got = _flat(nnx.state(train.model_from_state(exp_b, state_b)))
  assert want.keys() == got.keys()
  for k, v in want.items():
    np.testing.assert_allclose(got[k], v, atol=atol, rtol=0, err_msg=k)


def test_trainer_lora_steps_scanned_equal_unscanned(tiny_bert_dir, tiny_sentiment_files):
  """BERT (dropout on, LoRA dropout too) through the real train step; the scanned run also
  rematerialises. Method `full`: see `test_resume_converts_the_checkpoint_layout`."""
  runs = []
  for scan in (False, True):
    cfg = method_harness.tiny_config(tiny_bert_dir, tiny_sentiment_files, method='lora', rank=2,
                                     dropout=0.1)
    cfg.model.scan_layers = scan
    cfg.model.remat = 'full' if scan else 'none'
    exp = train.build_experiment(cfg)
    runs.append((exp, *_steps(exp, _batches(exp, 3, 8))))
  (plain, _, _), (scanned, state, _) = runs
  assert scanned.param_counts == plain.param_counts
  assert 'bert.encoder.layer.attention.self_attn.query.kernel' in method_harness.names(
      state.frozen)
  _assert_same_run(runs)


@pytest.mark.parametrize('scan', [False, True])
def test_config_remat_reaches_the_train_step_after_the_method(tiny_bert_dir, tiny_sentiment_files,
                                                              scan):
  """`model.remat` is given to the model at construction; after LoRA wraps the layers (and
  `stack_with_filter` stacks them) the train step still checkpoints every layer with it."""
  counts = {}
  for remat in ('none', 'full'):
    cfg = method_harness.tiny_config(tiny_bert_dir, tiny_sentiment_files, method='lora', rank=2)
    cfg.model.scan_layers = scan
    cfg.model.remat = remat
    exp = train.build_experiment(cfg)
    assert layer_stack.is_stacked(nnx.merge(exp.graphdef, exp.state.params,
                                            exp.state.frozen)) == scan
    step = train.make_train_step(exp.graphdef, exp.tx, exp.schedule, exp.task)
    jaxpr = str(jax.make_jaxpr(step)(exp.state, _batches(exp, 1, 8)[0]))
    counts[remat] = jaxpr.count('policy=<function nothing_saveable')
  assert counts['none'] == 0 and counts['full'] >= (1 if scan else 2), counts  # 2 layers


def _chat_config(tmp_path, scan: bool, method='lora'):
  model_dir = tmp_path / 'llama'
  if not model_dir.exists():
    make_tiny_llama(model_dir)
    write_jsonl(tmp_path / 'train.jsonl', make_conversations(16, 0))
    write_jsonl(tmp_path / 'dev.jsonl', make_conversations(4, 1))
  c = base_config()
  c.model.checkpoint = str(model_dir)
  c.model.task = 'causal_lm'
  c.model.scan_layers = scan
  c.method.name = method
  c.data.name = 'chat_files'
  c.data.files.train = str(tmp_path / 'train.jsonl')
  c.data.files.validation = str(tmp_path / 'dev.jsonl')
  c.data.test_split = ''
  c.data.max_length = 32
  c.data.bucket_boundaries = (32,)
  c.data.padding = 'max_length'
  c.optimizer.lr = 1e-2
  c.optimizer.schedule = 'constant'
  c.eval.metric = 'loss'
  c.eval.mode = 'min'
  return c


def test_causal_lm_lora_scanned_trains_and_generates_like_unscanned(tmp_path):
  runs = []
  for scan in (False, True):
    exp = train.build_experiment(_chat_config(tmp_path, scan))
    runs.append((exp, *_steps(exp, _batches(exp, 2, 4))))
  _assert_same_run(runs)
  exp, state, _ = runs[1]
  assert layer_stack.is_stacked(nnx.merge(exp.graphdef, state.params, state.frozen))
  models = [train.model_from_state(e, s) for e, s, _ in runs]
  assert not layer_stack.is_stacked(models[1])
  prompts = [[1, 9, 12, 13], [1, 20, 2]]
  assert (generate_lib.generate(models[1], prompts, max_new_tokens=3)
          == generate_lib.generate(models[0], prompts, max_new_tokens=3))


@pytest.mark.parametrize('method,freeze,match', [
    ('top_layers', '', 'train the same variables'),
    ('prefix_tuning', '', 'identical layers'),
    ('full', r'layer\.0\.', 'train the same variables'),
    ('lora', '', 'identical layers'),  # targets that match layer 1 only
])
def test_refused_combinations(tiny_bert_dir, tiny_sentiment_files, method, freeze, match):
  cfg = method_harness.tiny_config(tiny_bert_dir, tiny_sentiment_files, method=method)
  cfg.model.scan_layers = True
  cfg.method.freeze = freeze
  if method == 'lora':
    cfg.method.lora.targets = r'layer\.1\.attention\.self_attn\.query$'
  if method == 'top_layers':
    cfg.method.top_layers.num_layers = 1  # of 2: the top layer only
  with pytest.raises(UserError, match=match) as e:
    train.build_experiment(cfg)
  assert '\n' not in str(e.value) and 'model.scan_layers=False' in str(e.value)


@pytest.mark.parametrize('name,options', [
    ('lora', {}), ('dora', {}), ('qlora', dict(block_size=16)), ('ia3', {}),
    ('adapters', dict(bottleneck=4)), ('bitfit', {}), ('layernorm', {}), ('linear_probe', {}),
    ('prompt_tuning', dict(num_virtual_tokens=2)), ('full', {})])
def test_method_filters_select_the_same_variables_on_the_stacked_model(tiny_bert_dir, name,
                                                                      options):
  from ftjax.models import registry  # pylint: disable=g-import-not-at-top
  model, _ = registry.build_model(tiny_bert_dir, task='classification', num_labels=2,
                                  rngs=nnx.Rngs(0))
  method = methods.registry._METHODS[name](dict(methods.get(name).defaults, **options))  # pylint: disable=protected-access
  model = method.apply(model, rngs=nnx.Rngs(1))
  stacked, by_paths = layer_stack.stack_with_filter(model, method.trainable(), why='test')
  # The method's own filter (by variable type / head path) picks the same on the stacked model.
  direct = set(_flat(nnx.state(stacked, method.trainable())))
  assert direct == set(_flat(nnx.state(stacked, by_paths)))
  unscanned = sum(x.size for x in jax.tree.leaves(nnx.state(model, method.trainable())))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(stacked, by_paths))) == unscanned


# --- checkpoints across layouts ----------------------------------------------------------------


def _resume_config(tiny_bert_dir, tiny_sentiment_files, scan):
  cfg = method_harness.tiny_config(tiny_bert_dir, tiny_sentiment_files, method='full', lr=1e-3)
  cfg.model.scan_layers = scan
  cfg.model.remat = 'full' if scan else 'none'
  return cfg


def test_resume_converts_the_checkpoint_layout(tmp_path, tiny_bert_dir, tiny_sentiment_files):
  """Full fine-tuning of BERT (dropout on) scanned + remat equals unscanned; and 2 steps in one
  layout, saved, restored in the other layout (the trainer's restore path:
  `Checkpointer.restore`), 2 more steps: the same run as an uninterrupted one, both ways.
  Parameters, Adam moments and losses agree within 1e-6."""
  exps = {scan: train.build_experiment(_resume_config(tiny_bert_dir, tiny_sentiment_files, scan))
          for scan in (False, True)}
  assert exps[True].param_counts == exps[False].param_counts
  batches = _batches(exps[False], 4, 8)
  straight, straight_losses = _steps(exps[False], batches)
  _assert_same_run([(exps[False], straight, straight_losses),
                    (exps[True], *_steps(exps[True], batches))], atol=1e-6)
  for first in (False, True):
    state, losses = _steps(exps[first], batches[:2])
    workdir = tmp_path / f'from_{"scanned" if first else "unscanned"}'
    checkpointer = ckpt_lib.Checkpointer(workdir / 'checkpoints', every_steps=1, keep=2)
    checkpointer.save(2, state, {'next': 2})
    checkpointer.close()
    state, step = train.restore_state(exps[not first], workdir, 'latest')
    assert step == 2 and int(state.step) == 2
    state, more = _steps(exps[not first], batches[2:], state)
    np.testing.assert_allclose(losses + more, straight_losses, rtol=0, atol=1e-6)
    if not first:  # ended scanned: save and restore unscanned to compare every leaf
      checkpointer = ckpt_lib.Checkpointer(workdir / 'checkpoints', every_steps=1, keep=2)
      checkpointer.save(4, state, {})
      checkpointer.close()
      state, _ = train.restore_state(exps[False], workdir, 'latest')
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(straight)[0],
                            jax.tree.leaves(state)):
      np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-6, rtol=0,
                                 err_msg=f'{workdir.name} {jax.tree_util.keystr(path)}')


def test_export_of_a_scanned_lora_run(tmp_path, tiny_bert_dir, tiny_sentiment_files):
  """`ftjax.export` of a scanned state: unstacked, merged, loadable, with the same logits."""
  from ftjax import export  # pylint: disable=g-import-not-at-top
  from ftjax.metric_writers import write_json  # pylint: disable=g-import-not-at-top
  from ftjax.models import registry  # pylint: disable=g-import-not-at-top
  cfg = method_harness.tiny_config(tiny_bert_dir, tiny_sentiment_files, method='lora', rank=2)
  cfg.model.scan_layers = True
  exp = train.build_experiment(cfg)
  state = exp.state.replace(params=jax.tree.map(lambda x: x + 0.05, exp.state.params))
  workdir = tmp_path / 'run'
  workdir.mkdir()
  write_json(workdir / 'config.json', cfg.to_dict())
  checkpointer = ckpt_lib.Checkpointer(workdir / 'checkpoints', every_steps=1, keep=2)
  checkpointer.save(1, state, {})
  checkpointer.close()
  out = export.export(str(workdir), str(tmp_path / 'hf'), 'hf')
  reloaded, fresh = registry.build_model(out, task='classification', rngs=nnx.Rngs(0))
  assert not fresh
  batch = _batches(exp, 1, 8)[0]
  want = method_harness.logits(train.model_from_state(exp, state), batch)
  np.testing.assert_allclose(method_harness.logits(reloaded, batch), want, atol=1e-5, rtol=0)
