"""The module-wrapping methods on a tiny Llama (HF-named `nnx.Linear` projections).

Identity at init, merge equality after perturbing the method's parameters, `save_hf` of the
merged model, a PEFT LoRA export that `peft` loads onto the transformers Llama, and a run
started from a PEFT LoRA adapter made by `peft` (`method.lora.init_from`).
"""

import re

import jax
import numpy as np
import peft
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx

from ftjax import methods
from ftjax.errors import UserError
from ftjax.methods import lora_layers, qlora
from ftjax.models import registry

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
            attention_bias=True, mlp_bias=True)
IDS = np.array([[1, 5, 9, 14, 3, 7], [2, 7, 6, 11, 20, 8]])


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  torch.manual_seed(0)
  path = tmp_path_factory.mktemp("tiny_llama")
  transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).save_pretrained(str(path))
  return path


def build(path, name, **options):
  model, _ = registry.build_model(path, task="causal_lm", rngs=nnx.Rngs(0))
  method = methods.registry._METHODS[name](dict(methods.get(name).defaults, **options))
  return method, method.apply(model, rngs=nnx.Rngs(1))


def forward(model):
  return np.asarray(model(IDS))


def perturb(model, method):
  """Moves every trainable variable off its init (LoRA's B = 0 would hide bugs)."""
  _, params, _ = nnx.split(model, method.trainable(), ...)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  moved = [x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  nnx.update(model, jax.tree.unflatten(treedef, moved))


@pytest.mark.parametrize("name,options,wrapped,count", [
    # q_proj 32 -> 32, v_proj 32 -> 16 (2 kv heads of 8): rank * (in + out) each.
    ("lora", dict(rank=2), r"self_attn\.(q|v)_proj$", 2 * 2 * (64 + 48)),
    ("dora", dict(rank=2), r"self_attn\.(q|v)_proj$", 2 * (2 * (64 + 48) + 32 + 16)),
    ("ia3", {}, r"(k_proj|v_proj|down_proj)$", 2 * (16 + 16 + 48)),
    ("adapters", dict(bottleneck=4), r"(o_proj|down_proj)$", 2 * 2 * (2 * 32 * 4 + 4 + 32)),
    ("qlora", dict(rank=2, block_size=16), r"self_attn\.(q|v)_proj$", 2 * 2 * (64 + 48)),
])
def test_wrapping_methods_on_llama(llama_dir, tmp_path, name, options, wrapped, count):
  base, _ = registry.build_model(llama_dir, task="causal_lm", rngs=nnx.Rngs(0))
  method, model = build(llama_dir, name, **options)
  paths = [".".join(map(str, p)) for p, m in nnx.iter_modules(model)
           if isinstance(m, lora_layers.WrappedLinear)]
  assert paths and all(__import__("re").search(wrapped, p) for p in paths), paths
  _, params, _ = nnx.split(model, method.trainable(), ...)
  assert sum(x.size for x in jax.tree.leaves(params)) == count
  if name != "qlora":  # qlora's base is the dequantized one
    np.testing.assert_allclose(forward(model), forward(base), atol=1e-6, rtol=0)
  perturb(model, method)
  expected = forward(model)
  merged = method.merge(model)
  if name == "adapters":
    assert merged is None
    return
  np.testing.assert_allclose(forward(merged), expected, atol=1e-5, rtol=0)
  out = registry.save_hf(merged, tmp_path / "merged")
  reloaded, _ = registry.build_model(out, task="causal_lm", rngs=nnx.Rngs(0))
  np.testing.assert_allclose(forward(reloaded), expected, atol=1e-5, rtol=0)
  if name == "qlora":
    stored, full = qlora.storage_bytes(model)
    assert stored < full / 5  # 4-bit codes + a 4-byte scale per 16 values: 6 bits a value


@pytest.mark.parametrize("name", ["bitfit", "layernorm"])
def test_selection_methods_on_llama(llama_dir, name):
  method, model = build(llama_dir, name)
  _, params, _ = nnx.split(model, method.trainable(), ...)
  names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(params)}
  if name == "bitfit":
    assert names and all(n.endswith(".bias") for n in names)
    assert "model.layers.0.self_attn.q_proj.bias" in names
  else:
    assert names == {f"model.layers.{i}.{n}.scale" for i in range(2)
                     for n in ("input_layernorm", "post_attention_layernorm")} | {"model.norm.scale"}


def test_lora_on_llama_exports_to_peft(llama_dir, tmp_path):
  method, model = build(llama_dir, "lora", rank=2, alpha=4.0,
                        targets=r"(q_proj|v_proj|down_proj)$")
  perturb(model, method)
  out = method.export_peft(model, tmp_path / "peft", base_path=str(llama_dir))
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(llama_dir))
  peft_model = peft.PeftModel.from_pretrained(hf, str(out)).eval()
  with torch.no_grad():
    got = peft_model(input_ids=torch.tensor(IDS)).logits.numpy()
  np.testing.assert_allclose(got, forward(model), atol=1e-4, rtol=0)


def test_lm_head_is_refused(llama_dir):
  with pytest.raises(Exception, match="lm_head"):
    build(llama_dir, "lora", targets=r"(q_proj|lm_head)$")


PEFT_TARGETS = ["q_proj", "v_proj", "down_proj"]
OUR_TARGETS = r"(q_proj|v_proj|down_proj)$"


def hf_llama(path):
  return transformers.AutoModelForCausalLM.from_pretrained(str(path))


@pytest.fixture(scope="module")
def peft_adapter(llama_dir, tmp_path_factory):
  """A LoRA adapter made by `peft` (r=4, alpha=16, B moved off zero) and its model's logits."""
  torch.manual_seed(1)
  model = peft.get_peft_model(hf_llama(llama_dir), peft.LoraConfig(
      task_type="CAUSAL_LM", r=4, lora_alpha=16, target_modules=PEFT_TARGETS))
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "lora_B" in name:
        torch.nn.init.normal_(param, std=0.5)
  path = tmp_path_factory.mktemp("peft_lora")
  model.save_pretrained(str(path))
  with torch.no_grad():
    logits = model.eval()(input_ids=torch.tensor(IDS)).logits.numpy()
  return path, logits


@pytest.mark.parametrize("name,options", [("lora", {}), ("qlora", dict(block_size=16))])
def test_init_from_peft_lora_adapter(llama_dir, peft_adapter, name, options):
  path, expected = peft_adapter
  method, model = build(llama_dir, name, rank=4, alpha=16.0, targets=OUR_TARGETS,
                        init_from=str(path), **options)
  _, params, _ = nnx.split(model, method.trainable(), ...)
  trained = {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(params)}
  adapter = safetensors.numpy.load_file(str(path / "adapter_model.safetensors"))
  assert len(trained) == 2 * 2 * len(PEFT_TARGETS)  # A and B of 3 modules in 2 layers
  for module in ("self_attn.q_proj", "mlp.down_proj"):
    for ours, theirs in (("lora_a", "lora_A"), ("lora_b", "lora_B")):
      np.testing.assert_array_equal(  # what trains starts at the adapter's values
          trained[f"model.layers.1.{module}.{ours}"],
          adapter[f"base_model.model.model.layers.1.{module}.{theirs}.weight"].T)
  if name == "lora":  # qlora's base is quantized, so its logits are not peft's
    np.testing.assert_allclose(forward(model), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("options,match", [
    (dict(rank=8), r"'method.lora.rank' is 8, .*has r=4"),
    (dict(alpha=8.0), r"'method.lora.alpha' is 8.0, .*has lora_alpha=16.0"),
    (dict(targets=r"(q_proj|v_proj)$"), r"'method.lora.targets' selects other modules.*down_proj"),
])
def test_init_from_an_adapter_that_disagrees(llama_dir, peft_adapter, options, match):
  path, _ = peft_adapter
  options = dict(dict(rank=4, alpha=16.0, targets=OUR_TARGETS), **options)
  with pytest.raises(UserError, match=match):
    build(llama_dir, "lora", init_from=str(path), **options)
  with pytest.raises(UserError, match=r"'method.name' is 'dora'.*use_dora=False"):
    build(llama_dir, "dora", rank=4, alpha=16.0, targets=OUR_TARGETS, init_from=str(path))


def test_init_from_a_missing_or_non_lora_adapter(llama_dir, tmp_path):
  missing = tmp_path / "nope"
  with pytest.raises(UserError, match=re.escape(f"adapter_config.json in PEFT adapter directory {missing}")):
    build(llama_dir, "lora", init_from=str(missing))
  model = peft.get_peft_model(hf_llama(llama_dir), peft.IA3Config(
      task_type="CAUSAL_LM", target_modules=["k_proj", "down_proj"],
      feedforward_modules=["down_proj"]))
  model.save_pretrained(str(tmp_path / "ia3"))
  where = tmp_path / "ia3" / "adapter_config.json"
  with pytest.raises(UserError, match=re.escape(f"{where}: peft_type 'IA3'")):
    build(llama_dir, "lora", init_from=str(tmp_path / "ia3"))
