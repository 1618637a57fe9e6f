"""Tests for the mixtures of experts (ftjax.models.moe, Mixtral and Qwen3-MoE in llama.py).

The oracle is `transformers` on tiny random checkpoints (`tiny_assets.make_tiny_moe`, routers
scaled up so routing is uneven): logits, the load-balancing loss, the classifier heads and
export; the capacity path against a NumPy reference of GShard's dropping.
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
from ftjax.methods import lora_layers
from ftjax.models import layer_stack
from ftjax.models import llama
from ftjax.models import moe
from ftjax.models import registry
from ftjax import generate as generate_lib
from ftjax import sharding
import decoder_oracle
from tiny_assets import make_tiny_moe

VARIANTS = {
    'mixtral': dict(model_type='mixtral', sliding_window=5),
    'qwen3_moe': dict(model_type='qwen3_moe'),  # layer 1 dense, top-k weights not renormalised
    'qwen3_moe_norm': dict(model_type='qwen3_moe', norm_topk_prob=True, mlp_only_layers=[]),
}


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
  """name -> (directory, transformers model)."""
  out = {}
  for name, kw in VARIANTS.items():
    path = make_tiny_moe(tmp_path_factory.mktemp(name), **kw)
    ref = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    out[name] = (path, ref)
  return out


def _batch(vocab, seq=9):
  return decoder_oracle.left_padded_batch(vocab, seed=1, seq=seq)


@pytest.mark.parametrize('name', list(VARIANTS))
def test_logits_and_export_match_transformers(checkpoints, name, tmp_path):
  path, ref = checkpoints[name]
  model, fresh = registry.build_model(path, task='causal_lm', rngs=nnx.Rngs(0))
  assert fresh == []
  cfg = model.config
  ids, mask = _batch(cfg.vocab_size)
  want = decoder_oracle.torch_logits(ref, ids, mask)
  decoder_oracle.assert_real_close(decoder_oracle.jit_logits(model, ids, mask), want, mask,
                                   atol=1e-5)
  registry.save_hf(model, tmp_path)
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert llama.LlamaConfig.from_hf(saved) == cfg
  again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
  assert type(again).__name__ == type(ref).__name__
  decoder_oracle.assert_real_close(decoder_oracle.torch_logits(again, ids, mask), want, mask,
                                   atol=1e-5)


def test_layouts(checkpoints):
  mixtral, _ = registry.build_model(checkpoints['mixtral'][0], task='causal_lm',
                                    rngs=nnx.Rngs(0))
  block = mixtral.model.layers[0].block_sparse_moe
  assert mixtral.model.layers[0].mlp is None
  assert block.experts.w1.shape == (4, 32, 24) and block.experts.w2.shape == (4, 24, 32)
  assert block.gate.kernel.shape == (32, 4)
  qwen, _ = registry.build_model(checkpoints['qwen3_moe'][0], task='causal_lm', rngs=nnx.Rngs(0))
  assert isinstance(qwen.model.layers[0].mlp, moe.SparseMoeBlock)
  assert isinstance(qwen.model.layers[1].mlp, llama.LlamaMLP)  # mlp_only_layers=[1]
  assert qwen.config.sparse_layers == (True, False) and not qwen.config.norm_topk_prob
  # The experts' logical axes: the expert axis first, for the mesh rules.
  specs = nnx.get_partition_spec(nnx.state(block.experts, nnx.Param))
  assert tuple(specs['w1'].get_value()) == ('expert', 'embed', 'mlp')
  assert tuple(specs['w2'].get_value()) == ('expert', 'mlp', 'embed')


def _recorded(model, ids, mask):
  """The load-balancing terms a training forward (with rngs) records."""
  @nnx.jit
  def run(model, ids, mask):
    _, recorded = nnx.capture(lambda m: m(ids, mask, rngs=nnx.Rngs(dropout=0)),
                              nnx.Intermediate)(model)
    return moe.recorded_terms(recorded)
  return jax.device_get(run(model, ids, mask))


@pytest.mark.parametrize('name', ['mixtral', 'qwen3_moe'])
def test_load_balancing_loss_matches_transformers(checkpoints, name):
  path, ref = checkpoints[name]
  model, _ = registry.build_model(path, task='causal_lm', rngs=nnx.Rngs(0),
                                  moe=moe.MoeOptions(router_aux_loss_coef=0.5))
  ids, mask = _batch(model.config.vocab_size)
  with torch.no_grad():
    out = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
              output_router_logits=True)
  got = _recorded(model, ids, mask)
  np.testing.assert_allclose(got['load_balancing_loss'], out.aux_loss.item(), rtol=1e-5)
  np.testing.assert_allclose(got['aux_loss'], 0.5 * out.aux_loss.item(), rtol=1e-5)
  assert got['dropped_fraction'] == 0.0
  # No rngs (eval, generation): nothing recorded.
  _, recorded = nnx.capture(lambda m: m(ids, mask), nnx.Intermediate)(model)
  assert moe.recorded_terms(recorded) == {}


def test_checkpoint_aux_loss_weight_is_the_default(checkpoints):
  model, _ = registry.build_model(checkpoints['mixtral'][0], task='causal_lm', rngs=nnx.Rngs(0))
  assert model.model.router_aux_loss_coef == 0.001  # MixtralConfig's default, from config.json


def _reference_capacity(x, real, block, capacity):
  """GShard dropping in NumPy: assignments by expert in token order, real tokens only, the
  first `capacity` of each expert kept; returns (outputs [N, H], dropped count)."""
  x = np.asarray(x, np.float64)
  kernel = np.asarray(block.gate.kernel[...], np.float64)
  logits = x @ kernel
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  k = block.top_k
  chosen = np.argsort(-probs, axis=-1, kind='stable')[:, :k]
  weights = np.take_along_axis(probs, chosen, -1)
  if block.normalize_top_k:
    weights /= weights.sum(-1, keepdims=True)
  gate, up, down = (np.asarray(w, np.float64) for w in block.experts.kernels())
  silu = lambda v: v / (1 + np.exp(-v))
  y = np.zeros_like(x)
  taken = np.zeros(block.num_experts, int)
  dropped = 0
  for e in range(block.num_experts):
    for n in range(x.shape[0]):
      for j in range(k):
        if chosen[n, j] != e or not real[n]:
          continue
        if taken[e] >= capacity:
          dropped += 1
          continue
        taken[e] += 1
        y[n] += weights[n, j] * (silu(x[n] @ gate[e]) * (x[n] @ up[e])) @ down[e]
  return y, dropped


@pytest.mark.parametrize('factor', [0.5, 1.0])
def test_capacity_drops_like_gshard(checkpoints, factor):
  path, _ = checkpoints['mixtral']
  model, _ = registry.build_model(path, task='causal_lm', rngs=nnx.Rngs(0),
                                  moe=moe.MoeOptions(capacity_factor=factor))
  block = model.model.layers[0].block_sparse_moe
  x = jax.random.normal(jax.random.key(0), (20, 32))
  real = np.ones(20, bool)
  real[[3, 11]] = False  # padding never takes a slot and is not counted
  y, stats = block(x, jnp.asarray(real))
  capacity = int(np.ceil(factor * 20 * 2 / 4))
  want, dropped = _reference_capacity(x, real, block, capacity)
  np.testing.assert_allclose(np.asarray(y)[real], want[real], atol=1e-5)
  assert float(stats.dropped) == dropped
  assert dropped > 0 if factor == 0.5 else True
  assert float(stats.tokens) == 18 and float(stats.assigned.sum()) == 36


def test_ample_capacity_equals_dropless(checkpoints):
  path, _ = checkpoints['qwen3_moe']
  ids, mask = _batch(100)
  dropless, _ = registry.build_model(path, task='causal_lm', rngs=nnx.Rngs(0))
  # capacity_factor = experts / k: every expert could take every token.
  ample, _ = registry.build_model(path, task='causal_lm', rngs=nnx.Rngs(0),
                                  moe=moe.MoeOptions(capacity_factor=2.0))
  np.testing.assert_allclose(np.asarray(decoder_oracle.jit_logits(ample, ids, mask))[mask > 0],
                             np.asarray(decoder_oracle.jit_logits(dropless, ids, mask))[mask > 0],
                             atol=1e-5)
  assert _recorded(ample, ids, mask)['dropped_fraction'] == 0.0


def test_scanned_layers_equal_unscanned(checkpoints):
  path, _ = checkpoints['qwen3_moe_norm']  # every layer sparse: the layers stack
  model, _ = registry.build_model(path, task='causal_lm', rngs=nnx.Rngs(0))
  ids, mask = _batch(model.config.vocab_size)
  want = np.asarray(decoder_oracle.jit_logits(model, ids, mask))
  loss = _recorded(model, ids, mask)['load_balancing_loss']
  stacked = layer_stack.stack_layers(model)
  np.testing.assert_allclose(np.asarray(decoder_oracle.jit_logits(stacked, ids, mask))[mask > 0],
                             want[mask > 0], atol=1e-5)
  np.testing.assert_allclose(_recorded(stacked, ids, mask)['load_balancing_loss'], loss,
                             rtol=1e-6)


@pytest.mark.parametrize('name,task', [('mixtral', 'classification'),
                                       ('qwen3_moe', 'token_classification')])
def test_heads_match_transformers(checkpoints, name, task, tmp_path):
  model, fresh = registry.build_model(checkpoints[name][0], task=task, num_labels=3,
                                      rngs=nnx.Rngs(0))
  assert fresh == ['score.bias', 'score.kernel'] if task == 'token_classification' else (
      fresh == ['score.kernel'])
  registry.save_hf(model, tmp_path)
  auto = (transformers.AutoModelForSequenceClassification if task == 'classification'
          else transformers.AutoModelForTokenClassification)
  ref = auto.from_pretrained(tmp_path).eval()
  ids, mask = _batch(model.config.vocab_size)
  ids, mask = ids[:, ::-1].copy(), mask[:, ::-1].copy()  # right padding (pad id 0)
  with torch.no_grad():
    want = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
  got = np.asarray(nnx.jit(lambda m, i, a: m(i, a))(model, ids, mask))
  if task == 'classification':
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
  else:
    np.testing.assert_allclose(got[mask > 0], want.numpy()[mask > 0], atol=1e-5)


def test_expert_axis_shards_over_fsdp(checkpoints):
  model, _ = registry.build_model(checkpoints['mixtral'][0], task='causal_lm', rngs=nnx.Rngs(0))
  mesh = jax.sharding.AbstractMesh((2, 2, 2), sharding.MESH_AXES)
  experts = model.model.layers[0].block_sparse_moe.experts
  spec = lambda var: sharding.mesh_spec(
      tuple(nnx.get_partition_spec(var).get_value()), var.get_value().shape, mesh,
      sharding.DEFAULT_RULES)
  # Experts over fsdp (so not embed), their width over tensor.
  assert tuple(spec(experts.w1)) == ('fsdp', None, 'tensor')
  assert tuple(spec(experts.w2)) == ('fsdp', 'tensor', None)


def test_lora_refuses_the_experts_and_wraps_the_router(checkpoints):
  model, _ = registry.build_model(checkpoints['qwen3_moe'][0], task='causal_lm',
                                  rngs=nnx.Rngs(0))
  with pytest.raises(UserError, match=r"'model\.layers\.0\.mlp\.experts\.down_proj'.*stacked"):
    lora_layers.find_linears(model, r'(v_proj|down_proj)$', option='method.lora.targets')
  found = lora_layers.find_linears(model, r'mlp\.gate$', option='method.lora.targets')
  assert [path for path, _ in found] == [('model', 'layers', 0, 'mlp', 'gate')]


def test_bad_configs(checkpoints, tmp_path):
  hf = json.loads((checkpoints['mixtral'][0] / 'config.json').read_text())
  with pytest.raises(UserError, match='num_experts_per_tok 5 must be in'):
    llama.LlamaConfig.from_hf({**hf, 'num_experts_per_tok': 5})
  with pytest.raises(UserError, match="'model.moe.capacity_factor' must be >= 0"):
    moe.MoeOptions(capacity_factor=-1.0)
  dense = {k: v for k, v in hf.items() if 'expert' not in k and 'router' not in k}
  dense['model_type'] = 'mistral'
  (tmp_path / 'config.json').write_text(json.dumps(dense))
  with pytest.raises(UserError, match="'model.moe' routes experts.*'mistral' model without"):
    registry.model_spec(tmp_path, task='causal_lm', moe=moe.MoeOptions(capacity_factor=1.0))


def test_missing_expert_tensor_is_named(checkpoints):
  path, _ = checkpoints['mixtral']
  hf = json.loads((path / 'config.json').read_text())
  tensors = registry.safetensors_io.read_safetensors_dir(path)
  del tensors['model.layers.1.block_sparse_moe.experts.2.w3.weight']
  with pytest.raises(UserError, match=r"missing tensor 'model\.layers\.1\.block_sparse_moe"
                                      r"\.experts\.2\.w3\.weight'"):
    registry.build_from_tensors(hf, tensors, task='causal_lm', rngs=nnx.Rngs(0))
  tensors = registry.safetensors_io.read_safetensors_dir(path)
  tensors['model.layers.0.block_sparse_moe.experts.4.w1.weight'] = tensors[
      'model.layers.0.block_sparse_moe.experts.0.w1.weight']
  with pytest.raises(UserError, match=r"unexpected tensor .*experts\.4\.w1\.weight.*stacks 4"):
    registry.build_from_tensors(hf, tensors, task='causal_lm', rngs=nnx.Rngs(0))


@pytest.mark.parametrize('name', ['mixtral', 'qwen3_moe'])
def test_greedy_generation_equals_transformers(checkpoints, name):
  """The KV-cached decode routes each new token as the full forward does."""
  path, ref = checkpoints[name]
  model, _ = registry.build_model(path, task='causal_lm', rngs=nnx.Rngs(0))
  prompts = [[5, 9, 14, 3, 7, 30, 2], [8, 7, 6]]
  want = []
  for ids in prompts:
    with torch.no_grad():
      out = ref.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)),
                         max_new_tokens=6, do_sample=False, pad_token_id=0)
    want.append(out[0, len(ids):].tolist())
  assert generate_lib.generate(model, prompts, max_new_tokens=6) == want
