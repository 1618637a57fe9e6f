"""Methods on the newer decoder families: a tiny Gemma 3 (`tiny_assets.make_tiny_gemma3`:
sandwich norms, q/k norms, scaled embeddings, sliding and global layers), a tiny Phi-3
(`make_tiny_phi3`: fused qkv_proj / gate_up_proj, LongRoPE) and the tiny mixtures of experts
(`make_tiny_moe`: Mixtral, and Qwen3-MoE with a dense layer), whose train steps add and log the
load-balancing loss.

Through the trainer (`method_harness.run_method` on tiny chat data): full and LoRA (and prompt
tuning on Gemma) pass the common checks. Outside it: LoRA (Gemma) and QLoRA (Phi-3) are the
identity at init and merge exactly (DoRA and IA3 share their wrapping), and PEFT parity holds
for LoRA (and prompt tuning on Gemma) loaded onto the transformers model; prompt tuning's
virtual tokens skip Gemma's sqrt(hidden) embedding scale, as PEFT feeds them. (Prefix tuning
only writes the KV cache, which these families share with Llama: tests/methods/
test_llama_prompt_prefix.py.)
"""

import numpy as np
import peft
import pytest
import transformers
from flax import nnx

from ftjax.methods import lora_layers
from ftjax.models import registry
from method_harness import check_common, run_method, tiny_llama_config
from test_llama_methods import build, perturb
from test_llama_prompt_prefix import peft_logits, randomize
from tiny_assets import (make_conversations, make_tiny_gemma3, make_tiny_moe, make_tiny_phi3,
                         write_jsonl)

IDS = np.array([[4, 5, 9, 14, 3, 7, 30], [8, 7, 6, 11, 20, 8, 41]])  # past Gemma's window (4)
MASK = np.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])  # right padding
MAKERS = {"gemma3": make_tiny_gemma3, "phi3": make_tiny_phi3, "mixtral": make_tiny_moe,
          "qwen3_moe": lambda path: make_tiny_moe(path, model_type="qwen3_moe")}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return {name: make(tmp_path_factory.mktemp(f"tiny_{name}")) for name, make in MAKERS.items()}


@pytest.fixture(scope="module")
def chat_files(tmp_path_factory):
  root = tmp_path_factory.mktemp("chat")
  return {"train": write_jsonl(root / "train.jsonl", make_conversations(32, 0)),
          "validation": write_jsonl(root / "dev.jsonl", make_conversations(8, 1))}


def _full_count(config) -> int:
  h, m, d = config.hidden_size, config.intermediate_size, config.head_dim
  n, kv = config.num_attention_heads, config.num_key_value_heads
  norms = 4 * h + 2 * d if config.model_type.startswith("gemma") else 2 * h
  norms += 2 * d if config.model_type == "qwen3_moe" else 0  # q/k norms
  attention = 2 * h * n * d + 2 * h * kv * d + norms
  experts = getattr(config, "num_experts", 0)
  ffns = [h * experts + experts * 3 * h * config.moe_intermediate_size  # router + experts
          if experts and config.sparse_layers[i] else 3 * h * m
          for i in range(config.num_hidden_layers)]
  heads = 1 if config.tie_word_embeddings else 2  # Phi-3's lm_head is its own
  return heads * config.vocab_size * h + config.num_hidden_layers * attention + sum(ffns) + h


@pytest.mark.parametrize("family,name,options", [
    ("gemma3", "full", {}), ("gemma3", "lora", dict(rank=2)),
    ("gemma3", "prompt_tuning", dict(num_virtual_tokens=3)),
    ("phi3", "full", {}), ("phi3", "lora", dict(rank=2)),
    ("mixtral", "full", {}), ("mixtral", "lora", dict(rank=2)), ("mixtral", "ia3", {}),
    ("qwen3_moe", "full", {}), ("qwen3_moe", "lora", dict(rank=2)),
    ("qwen3_moe", "prompt_tuning", dict(num_virtual_tokens=3))])
def test_harness_checks(dirs, chat_files, family, name, options):
  cfg = tiny_llama_config(dirs[family], chat_files, method=name, **options)
  if family == "qwen3_moe":
    cfg.model.moe.capacity_factor = 1.0  # the capacity path trains too
  run = run_method(cfg)
  config = registry.model_spec(dirs[family], task="causal_lm").config
  layers = config.num_hidden_layers
  count, own = {
      # Gemma: q 32 -> 32 and v 32 -> 16, rank 2: rank * (in + out) each.
      ("gemma3", "lora"): (layers * 2 * ((32 + 32) + (32 + 16)), r"\.(q|v)_proj\.lora_(a|b)$"),
      # Phi-3: the default targets the fused qkv_proj, 32 -> 32 + 2 * 16.
      ("phi3", "lora"): (layers * 2 * (32 + 64), r"\.qkv_proj\.lora_(a|b)$"),
      ("gemma3", "prompt_tuning"): (3 * 32, r"^model\.embed_tokens\.prompt_embeddings$"),
      ("mixtral", "lora"): (layers * 2 * ((32 + 32) + (32 + 16)), r"\.(q|v)_proj\.lora_(a|b)$"),
      # IA3's default targets: k_proj and v_proj (16 each) and down_proj, which Mixtral (w2)
      # lacks.
      ("mixtral", "ia3"): (layers * 2 * 16, r"\.(k|v)_proj\.ia3_l$"),
      # Qwen3-MoE: q 32 -> 4 * 8, v 32 -> 2 * 8.
      ("qwen3_moe", "lora"): (layers * 2 * ((32 + 32) + (32 + 16)), r"\.(q|v)_proj\.lora_(a|b)$"),
      ("qwen3_moe", "prompt_tuning"): (3 * 32, r"^model\.embed_tokens\.prompt_embeddings$"),
  }.get((family, name), (_full_count(config), r"."))
  check_common(run, expected_trainable=count, own=own, identity_atol=None)
  if family in ("mixtral", "qwen3_moe"):  # the load-balancing loss is in the loss, and logged
    metrics = run.metrics
    assert metrics["moe_aux_loss"] == pytest.approx(0.001 * metrics["moe_load_balancing_loss"])
    assert metrics["moe_load_balancing_loss"] > 0.0
    assert 0.0 <= metrics["moe_dropped_fraction"] <= (0.5 if family == "qwen3_moe" else 0.0)


@pytest.mark.parametrize("family,name,options", [
    ("gemma3", "lora", dict(rank=2)), ("phi3", "qlora", dict(rank=2, block_size=16)),
    # LoRA on Mixtral's router (a Linear; the stacked experts are refused: tests/models/test_moe)
    ("mixtral", "lora", dict(rank=2, targets=r"(q_proj|block_sparse_moe\.gate)$"))])
def test_wrapping_methods_identity_and_merge(dirs, tmp_path, family, name, options):
  base, _ = registry.build_model(dirs[family], task="causal_lm", rngs=nnx.Rngs(0))
  method, model = build(dirs[family], name, **options)
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


@pytest.mark.parametrize("family,name,options", [
    ("gemma3", "lora", dict(rank=2, alpha=4.0, targets=r"(q_proj|v_proj|down_proj)$")),
    ("phi3", "lora", dict(rank=2, alpha=4.0, targets=r"(qkv_proj|gate_up_proj)$")),
    ("qwen3_moe", "lora", dict(rank=2, alpha=4.0, targets=r"(q_proj|o_proj)$")),
    ("gemma3", "prompt_tuning", dict(num_virtual_tokens=3))])
def test_peft_export_loads_in_peft(dirs, tmp_path, family, name, options):
  method, model = build(dirs[family], name, **options)
  (randomize if "tuning" in name else perturb)(model, method)
  ours = np.asarray(model(IDS, MASK))
  base, _ = registry.build_model(dirs[family], task="causal_lm", rngs=nnx.Rngs(0))
  assert np.abs(ours - np.asarray(base(IDS, MASK)))[MASK > 0].max() > 0.1  # it does something
  out = method.export_peft(model, tmp_path / "peft", base_path=str(dirs[family]))
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(dirs[family]),
                                                        attn_implementation="eager")
  peft_model = peft.PeftModel.from_pretrained(hf, str(out)).eval()
  np.testing.assert_allclose(peft_logits(peft_model, IDS, MASK)[MASK > 0], ours[MASK > 0],
                             atol=1e-4, rtol=0)
