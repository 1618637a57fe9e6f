"""Methods on a tiny Gemma 3 (`tiny_assets.make_tiny_gemma3`: sandwich norms, q/k norms,
scaled embeddings, sliding and global layers).

Through the trainer (`method_harness.run_method` on tiny chat data): full, LoRA and prompt
tuning pass the common checks. Outside it: the wrapping methods are the identity at init and
merge exactly (LoRA, QLoRA; DoRA and IA3 share their wrapping), and PEFT parity holds for
LoRA, prompt and prefix tuning loaded onto the
transformers Gemma 3 (prompt tuning's virtual tokens skip the sqrt(hidden) embedding scale, as
PEFT feeds them).
"""

import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx

from ftjax.methods import lora_layers
from ftjax.models import gemma, registry
from method_harness import check_common, run_method, tiny_llama_config
from test_llama_methods import build, perturb
from test_llama_prompt_prefix import peft_logits, randomize
from tiny_assets import make_conversations, make_tiny_gemma3, write_jsonl

IDS = np.array([[4, 5, 9, 14, 3, 7, 30], [8, 7, 6, 11, 20, 8, 41]])  # past the window (4)
MASK = np.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])  # right padding


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
  return make_tiny_gemma3(tmp_path_factory.mktemp("tiny_gemma3"))


@pytest.fixture(scope="module")
def chat_files(tmp_path_factory):
  root = tmp_path_factory.mktemp("chat")
  return {"train": write_jsonl(root / "train.jsonl", make_conversations(32, 0)),
          "validation": write_jsonl(root / "dev.jsonl", make_conversations(8, 1))}


def _full_count(config: gemma.GemmaConfig) -> int:
  h, m, d = config.hidden_size, config.intermediate_size, config.head_dim
  n, kv = config.num_attention_heads, config.num_key_value_heads
  layer = 2 * h * n * d + 2 * h * kv * d + 3 * h * m + 2 * d + 4 * h
  return config.vocab_size * h + config.num_hidden_layers * layer + h


@pytest.mark.parametrize("name,options", [
    ("full", {}), ("lora", dict(rank=2)), ("prompt_tuning", dict(num_virtual_tokens=3))])
def test_harness_checks(gemma_dir, chat_files, name, options):
  run = run_method(tiny_llama_config(gemma_dir, chat_files, method=name, **options))
  config = gemma.GemmaConfig.from_hf(registry.read_hf_config(gemma_dir))
  count, own = {
      # q 32 -> 32 and v 32 -> 16 in 3 layers, rank 2: rank * (in + out) each.
      "lora": (3 * 2 * ((32 + 32) + (32 + 16)), r"\.(q|v)_proj\.lora_(a|b)$"),
      "prompt_tuning": (3 * 32, r"^model\.embed_tokens\.prompt_embeddings$"),
      "full": (_full_count(config), r"."),
  }[name]
  check_common(run, expected_trainable=count, own=own, identity_atol=None)


@pytest.mark.parametrize("name,options", [
    ("lora", dict(rank=2)), ("qlora", dict(rank=2, block_size=16))])
def test_wrapping_methods_identity_and_merge(gemma_dir, tmp_path, name, options):
  base, _ = registry.build_model(gemma_dir, task="causal_lm", rngs=nnx.Rngs(0))
  method, model = build(gemma_dir, name, **options)
  assert any(isinstance(m, lora_layers.WrappedLinear) for _, m in nnx.iter_modules(model))
  if name != "qlora":  # qlora's base is the dequantized one
    np.testing.assert_allclose(np.asarray(model(IDS)), np.asarray(base(IDS)), atol=1e-5, rtol=0)
  perturb(model, method)
  expected = np.asarray(model(IDS))
  merged = method.merge(model)
  np.testing.assert_allclose(np.asarray(merged(IDS)), expected, atol=1e-4, rtol=0)
  reloaded, _ = registry.build_model(registry.save_hf(merged, tmp_path / "merged"),
                                     task="causal_lm", rngs=nnx.Rngs(0))
  np.testing.assert_allclose(np.asarray(reloaded(IDS)), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name,options", [
    ("lora", dict(rank=2, alpha=4.0, targets=r"(q_proj|v_proj|down_proj)$")),
    ("prompt_tuning", dict(num_virtual_tokens=3)), ("prefix_tuning", dict(num_virtual_tokens=3))])
def test_peft_export_loads_in_peft(gemma_dir, tmp_path, name, options):
  method, model = build(gemma_dir, name, **options)
  (randomize if "tuning" in name else perturb)(model, method)
  ours = np.asarray(model(IDS, MASK))
  base, _ = registry.build_model(gemma_dir, task="causal_lm", rngs=nnx.Rngs(0))
  assert np.abs(ours - np.asarray(base(IDS, MASK)))[MASK > 0].max() > 0.1  # it does something
  out = method.export_peft(model, tmp_path / "peft", base_path=str(gemma_dir))
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(gemma_dir), attn_implementation="eager")
  peft_model = peft.PeftModel.from_pretrained(hf, str(out)).eval()
  np.testing.assert_allclose(peft_logits(peft_model, IDS, MASK)[MASK > 0], ours[MASK > 0],
                             atol=1e-4, rtol=0)
