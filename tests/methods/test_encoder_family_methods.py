"""Methods on the newer encoder families: a tiny RoBERTa (`tiny_assets.make_tiny_roberta`:
fairseq positions, the two-layer head), a tiny DistilBERT (`make_tiny_distilbert`: its own
module names, pre_classifier + classifier), a tiny ModernBERT (`make_tiny_modernbert`: fused
Wqkv, local attention, `head` + classifier, no biases) and a tiny DeBERTa-v3
(`make_tiny_deberta`: query_proj/value_proj, the context pooler + classifier).

The methods harness on the tiny sentiment files: full fine-tuning, LoRA (merged and exported)
and BitFit (LayerNorm tuning for ModernBERT, which has no biases to fit); a LoRA export that
`peft` loads onto transformers' classifier with our logits.
"""

import re

import jax
import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx

from ftjax import train
from ftjax.methods import base
from method_harness import HIDDEN, LABELS, LAYERS, check_common, check_merge, run_method, tiny_config
from ftjax.methods import layernorm
from tiny_assets import make_tiny_deberta, make_tiny_distilbert, make_tiny_modernbert, make_tiny_roberta

# Every head: a dense H -> H (RoBERTa's classifier.dense, DistilBERT's pre_classifier, ModernBERT's
# head.dense, DeBERTa's context_pooler.dense) and the H -> labels projection with its bias, plus
# H: the dense's bias, or ModernBERT's (bias-free) head.norm scale.
HEAD = HIDDEN * HIDDEN + HIDDEN + HIDDEN * LABELS + LABELS
MAKERS = {"roberta": make_tiny_roberta, "distilbert": make_tiny_distilbert,
          "modernbert": make_tiny_modernbert, "deberta": make_tiny_deberta}
# LoRA's targets (rank 4: 4 * (in + out) each): q and v (query/value, q_lin/v_lin,
# query_proj/value_proj), or ModernBERT's fused Wqkv (32 -> 96).
LORA_PER_LAYER = {"roberta": 2 * 4 * (HIDDEN + HIDDEN), "distilbert": 2 * 4 * (HIDDEN + HIDDEN),
                  "deberta": 2 * 4 * (HIDDEN + HIDDEN), "modernbert": 4 * (HIDDEN + 3 * HIDDEN)}
LORA_OWN = r"\.(query|value|q_lin|v_lin|query_proj|value_proj|Wqkv)\.lora_[ab]$"
# The third method: BitFit, or LayerNorm tuning where there are no biases.
THIRD = {"roberta": "bitfit", "distilbert": "bitfit", "deberta": "bitfit",
         "modernbert": "layernorm"}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return {name: make(tmp_path_factory.mktemp(f"tiny_{name}")) for name, make in MAKERS.items()}


def _matching(run, pattern: str) -> int:
  """Size of the params outside the head whose path matches `pattern`."""
  state = nnx.state(train.model_from_state(run.exp, run.initial), nnx.Param)
  return sum(int(np.prod(x.shape)) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]
             if re.search(pattern, base.keypath_string(p))
             and not re.search(base.HEAD_PATTERN, base.keypath_string(p)))


@pytest.mark.parametrize("family", list(MAKERS))
@pytest.mark.parametrize("name", ["full", "lora", "third"])
def test_harness_checks(dirs, tiny_sentiment_files, tmp_path, family, name):
  name = THIRD[family] if name == "third" else name
  run = run_method(tiny_config(dirs[family], tiny_sentiment_files, method=name,
                               **(dict(rank=4, alpha=8.0) if name == "lora" else {})))
  count, own = {
      "lora": (LAYERS * LORA_PER_LAYER[family] + HEAD, LORA_OWN),
      "bitfit": (_matching(run, r"\.bias$") + HEAD, r"\.bias$"),
      "layernorm": (_matching(run, layernorm.NORM_PATTERN) + HEAD, layernorm.NORM_PATTERN),
      "full": (run.exp.param_counts["total"], r"."),
  }[name]
  check_common(run, expected_trainable=count, own=own, identity_atol=0.0)
  if name == "lora":
    check_merge(run, run.exp.method, tmp_path)


@pytest.mark.parametrize("family", list(MAKERS))
def test_lora_export_loads_in_peft(dirs, tiny_sentiment_files, tmp_path, family):
  run = run_method(tiny_config(dirs[family], tiny_sentiment_files, method="lora", rank=4,
                               alpha=8.0))
  model = train.model_from_state(run.exp, run.final)
  out = run.exp.method.export_peft(model, tmp_path / "peft", base_path=str(dirs[family]))
  hf = transformers.AutoModelForSequenceClassification.from_pretrained(
      str(dirs[family]), num_labels=LABELS)
  peft_model = peft.PeftModel.from_pretrained(hf, str(out)).eval()
  batch = run.batch
  with torch.no_grad():
    got = peft_model(input_ids=torch.tensor(np.asarray(batch["input_ids"])),
                     attention_mask=torch.tensor(np.asarray(batch["attention_mask"]))).logits
  want = np.asarray(model(batch["input_ids"], batch["attention_mask"]))
  np.testing.assert_allclose(got.numpy(), want, atol=1e-4, rtol=0)
