"""BitFit and LayerNorm tuning: only biases / norm parameters (and the head) train."""

import torch
import transformers
from flax import nnx

from ftjax import methods
from ftjax.models import registry
from method_harness import (HEAD, HIDDEN, INTERMEDIATE, LAYERS, check_common, check_merge,
                            run_method, tiny_config)


def test_bitfit_trains_only_biases_and_head(tiny_bert_dir, tiny_sentiment_files, tmp_path):
  run = run_method(tiny_config(tiny_bert_dir, tiny_sentiment_files, method="bitfit"))
  # Per layer: q, k, v, attention output, FFN in (intermediate), FFN out biases + 2 LayerNorm
  # biases; embeddings LayerNorm and pooler biases; the head (kernel + bias).
  per_layer = 3 * HIDDEN + HIDDEN + INTERMEDIATE + HIDDEN + 2 * HIDDEN
  check_common(run, expected_trainable=LAYERS * per_layer + 2 * HIDDEN + HEAD,
               own=r"\.bias$", identity_atol=0.0)
  check_merge(run, run.exp.method, tmp_path)


def test_layernorm_trains_only_norms_and_head(tiny_bert_dir, tiny_sentiment_files, tmp_path):
  run = run_method(tiny_config(tiny_bert_dir, tiny_sentiment_files, method="layernorm"))
  # Two LayerNorms (scale + bias) per layer and one after the embeddings; the head.
  check_common(run, expected_trainable=LAYERS * 2 * 2 * HIDDEN + 2 * HIDDEN + HEAD,
               own=r"LayerNorm\.(scale|bias)$", identity_atol=0.0)
  check_merge(run, run.exp.method, tmp_path)


def test_layernorm_finds_gpt2_s_norms(tmp_path):
  torch.manual_seed(0)
  transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)).save_pretrained(str(tmp_path))
  model, _ = registry.build_model(tmp_path, task="causal_lm", rngs=nnx.Rngs(0))
  trainable = nnx.state(model, methods.get("layernorm").trainable())
  names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(trainable)}
  assert names == {f"transformer.{m}.{v}" for m in ("h.0.ln_1", "h.0.ln_2", "h.1.ln_1", "h.1.ln_2",
                                                    "ln_f") for v in ("scale", "bias")}
