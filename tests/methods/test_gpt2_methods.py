"""Methods on a tiny GPT-2 (its `Conv1D`s are `nnx.Linear`s at HF paths).

The wrapping methods with their default targets (PEFT's for GPT-2; adapters after attn/mlp
c_proj): identity at init and merge equality after perturbing. PEFT parity both ways: our
LoRA, IA3, prompt- and prefix-tuning exports load in `peft` with our logits, and a LoRA adapter
made by `peft` (`fan_in_fan_out`, as PEFT saves it for `Conv1D`) starts a run
(`method.lora.init_from`) with peft's logits.
"""

import re

import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx

from ftjax.methods import lora_layers
from ftjax.models import registry
from test_llama_methods import build, perturb
from test_llama_prompt_prefix import randomize

IDS = np.array([[1, 5, 9, 14, 3, 7], [2, 7, 6, 11, 20, 8]])


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
  torch.manual_seed(0)
  path = tmp_path_factory.mktemp("tiny_gpt2")
  transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)).save_pretrained(str(path))
  return path


def forward(model):
  return np.asarray(model(IDS))


def peft_logits(model):
  with torch.no_grad():
    return model.eval()(input_ids=torch.tensor(IDS)).logits.numpy()


@pytest.mark.parametrize("name,options,wrapped", [
    ("lora", dict(rank=2), r"attn\.c_attn$"),
    ("dora", dict(rank=2), r"attn\.c_attn$"),
    ("qlora", dict(rank=2, block_size=16), r"attn\.c_attn$"),
    ("ia3", {}, r"(attn\.c_attn|mlp\.c_proj)$"),
    ("adapters", dict(bottleneck=4), r"(attn|mlp)\.c_proj$"),
])
def test_wrapping_methods_on_gpt2(gpt2_dir, name, options, wrapped):
  base, _ = registry.build_model(gpt2_dir, task="causal_lm", rngs=nnx.Rngs(0))
  method, model = build(gpt2_dir, name, **options)
  paths = [".".join(map(str, p)) for p, m in nnx.iter_modules(model)
           if isinstance(m, lora_layers.WrappedLinear)]
  assert len(paths) == 2 * (2 if name in ("ia3", "adapters") else 1), paths
  assert all(re.search(wrapped, p) for p in paths), paths
  if name != "qlora":  # qlora's base is the dequantized one
    np.testing.assert_allclose(forward(model), forward(base), atol=1e-6, rtol=0)
  perturb(model, method)
  merged = method.merge(model)
  if name == "adapters":
    assert merged is None
  else:
    np.testing.assert_allclose(forward(merged), forward(model), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["lora", "ia3"])
def test_gpt2_peft_export_loads_in_peft(gpt2_dir, tmp_path, name):
  method, model = build(gpt2_dir, name, **(dict(rank=2, alpha=4.0) if name == "lora" else {}))
  perturb(model, method)
  out = method.export_peft(model, tmp_path / "peft", base_path=str(gpt2_dir))
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(gpt2_dir))
  got = peft_logits(peft.PeftModel.from_pretrained(hf, str(out)))
  np.testing.assert_allclose(got, forward(model), atol=1e-4, rtol=0)


def test_gpt2_run_starts_from_a_peft_lora_adapter(gpt2_dir, tmp_path):
  torch.manual_seed(1)
  model = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(str(gpt2_dir)),
                              peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=16,
                                              target_modules=["c_attn", "c_fc"]))
  with torch.no_grad():
    for param_name, param in model.named_parameters():
      if "lora_B" in param_name:
        torch.nn.init.normal_(param, std=0.5)
  model.save_pretrained(str(tmp_path / "adapter"))
  expected = peft_logits(model)
  _, ours = build(gpt2_dir, "lora", rank=4, alpha=16.0, targets=r"(c_attn|c_fc)$",
                  init_from=str(tmp_path / "adapter"))
  np.testing.assert_allclose(forward(ours), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["prompt_tuning", "prefix_tuning"])
def test_gpt2_prompt_learning_loads_in_peft(gpt2_dir, tmp_path, name):
  method, model = build(gpt2_dir, name, num_virtual_tokens=3)
  randomize(model, method)
  out = method.export_peft(model, tmp_path / "peft", base_path=str(gpt2_dir))
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(gpt2_dir))
  got = peft_logits(peft.PeftModel.from_pretrained(hf, str(out)))[:, -IDS.shape[1]:]
  base, _ = registry.build_model(gpt2_dir, task="causal_lm", rngs=nnx.Rngs(0))
  assert np.abs(forward(model) - forward(base)).max() > 0.1  # it does something
  np.testing.assert_allclose(got, forward(model), atol=1e-4, rtol=0)
