"""Generation samples before and after fine-tuning, for tasks whose data offers prompts.

Written to `WORKDIR/samples.jsonl`, one object per prompt and checkpoint (`base`, `final`):
the prompt, the reference reply from the data and the model's greedy continuation, so a
researcher sees what fine-tuning changed, not only the loss.
"""

from __future__ import annotations

import json

import jax

from ftjax import generate
from ftjax.data import tokenization
from ftjax.metric_writers import append_text
from ftjax.paths import as_path

FILE = "samples.jsonl"


def write(workdir, exp, model, label: str, step: int) -> list[dict] | None:
  """Appends greedy generations of `model` on the eval split's first prompts; returns them.
  Every process calls it (a model sharded over several generates as one program on the same
  prompts); process 0 alone writes."""
  cfg = exp.cfg
  dataset = exp.dataset
  # A language model only: a reward model (a decoder classifier) has prompts in its data but
  # no LM head to generate with.
  if (not hasattr(model, "lm_logits") or not hasattr(dataset, "prompts")
      or cfg.eval.num_samples <= 0):
    return None
  tokenizer = dataset.tokenizer
  prompts = dataset.prompts(cfg.data.eval_split, limit=cfg.eval.num_samples)
  # Every end-of-turn token the checkpoint declares, not only the tokenizer's eos.
  stops = tokenization.dataset_stop_token_ids(exp.model_path, dataset)
  outputs = generate.generate(model, [p["input_ids"] for p in prompts],
                              max_new_tokens=cfg.eval.sample_max_new_tokens,
                              stop_token_ids=stops, pad_token_id=dataset.pad_id)
  records = [{"checkpoint": label, "step": step, "prompt": p["text"], "reference": p["reference"],
              "generation": tokenizer.decode(out, skip_special_tokens=True)}
             for p, out in zip(prompts, outputs)]
  if jax.process_index() == 0:
    append_text(as_path(workdir) / FILE, "".join(json.dumps(r) + "\n" for r in records))
  return records
