"""Top-layers fine-tuning (README's worked example): only the last layers and the head train."""

from method_harness import HEAD, HIDDEN, INTERMEDIATE, check_common, check_merge, run_method, tiny_config


def test_top_layers_trains_the_last_layer_and_head(tiny_bert_dir, tiny_sentiment_files, tmp_path):
  run = run_method(tiny_config(tiny_bert_dir, tiny_sentiment_files, method="top_layers", num_layers=1))
  # One BERT layer: q, k, v, attention output (H x H + H each), FFN in and out, two LayerNorms.
  layer = 4 * (HIDDEN * HIDDEN + HIDDEN) + 2 * HIDDEN * INTERMEDIATE + INTERMEDIATE + HIDDEN + 4 * HIDDEN
  check_common(run, expected_trainable=layer + HEAD, own=r"^bert\.encoder\.layer\.1\.", identity_atol=0.0)
  check_merge(run, run.exp.method, tmp_path)
