"""BitFit and LayerNorm tuning: only biases / norm parameters (and the head) train."""

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
