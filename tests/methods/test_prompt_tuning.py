"""Prompt tuning and prefix tuning: what trains, and parity with PEFT / transformers."""

import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx

from ftjax import methods, train
from ftjax.methods import prefix_tuning, prompt_tuning
from ftjax.models import registry
from method_harness import HEAD, HIDDEN, LAYERS, check_common, run_method, tiny_config

IDS = np.array([[2, 5, 9, 14, 3, 0, 0], [2, 7, 6, 11, 20, 8, 3]])
MASK = (IDS != 0).astype(np.int64)
TYPES = np.zeros_like(IDS)


def torch_logits(model, **kwargs):
  model.eval()
  with torch.no_grad():
    return model(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(kwargs.pop("mask", MASK)),
                 token_type_ids=torch.tensor(TYPES), **kwargs).logits.numpy()


def test_prompt_tuning_trains_and_loads_in_peft(tiny_bert_dir, tiny_sentiment_files, tmp_path):
  run = run_method(tiny_config(tiny_bert_dir, tiny_sentiment_files, method="prompt_tuning",
                               num_virtual_tokens=4))
  check_common(run, expected_trainable=4 * HIDDEN + HEAD, own=r"embeddings\.prompt_embeddings$",
               identity_atol=None)
  assert run.exp.method.merge(None) is None
  model = train.model_from_state(run.exp, run.final)
  out = run.exp.method.export_peft(model, tmp_path / "peft", base_path=str(tiny_bert_dir))
  base = transformers.AutoModelForSequenceClassification.from_pretrained(str(tiny_bert_dir),
                                                                         num_labels=2)
  expected = np.asarray(model(IDS, MASK, TYPES))
  np.testing.assert_allclose(torch_logits(peft.PeftModel.from_pretrained(base, str(out))),
                             expected, atol=1e-4, rtol=0)


def test_prompt_init_from_text(tiny_bert_dir):
  model, _ = registry.build_model(tiny_bert_dir, task="classification", num_labels=2,
                                  rngs=nnx.Rngs(0))
  words = np.asarray(model.bert.embeddings.word_embeddings.embedding[...])
  options = dict(methods.get("prompt_tuning").defaults, num_virtual_tokens=5,
                 init_text="good movie", tokenizer=str(tiny_bert_dir))
  model = methods.registry._METHODS["prompt_tuning"](options).apply(model, rngs=nnx.Rngs(0))
  assert isinstance(model.bert.embeddings, prompt_tuning.PromptEmbeddings)
  # [CLS] good movie [SEP], repeated to 5 tokens, as PEFT's TEXT init does.
  text_ids = transformers.AutoTokenizer.from_pretrained(str(tiny_bert_dir))("good movie")["input_ids"]
  assert len(text_ids) == 4 and text_ids[0] == 2
  ids = text_ids + text_ids[:1]
  np.testing.assert_array_equal(np.asarray(model.bert.embeddings.prompt_embeddings[...]), words[ids])


@pytest.mark.parametrize("projection", [False, True])
def test_prefix_tuning_trains(tiny_bert_dir, tiny_sentiment_files, projection):
  run = run_method(tiny_config(tiny_bert_dir, tiny_sentiment_files, method="prefix_tuning",
                               num_virtual_tokens=3, prefix_projection=projection,
                               encoder_hidden_size=8))
  table = LAYERS * 2 * HIDDEN
  count = 3 * (HIDDEN if projection else table)
  if projection:
    count += HIDDEN * 8 + 8 + 8 * table + table
  check_common(run, expected_trainable=count + HEAD,
               own=r"self_attn\.prefix\.(embedding|mlp_(in|out)(_bias)?)$", identity_atol=None)


def test_prefix_tuning_matches_transformers_with_a_kv_cache(tiny_bert_dir):
  """PEFT feeds the prefix to HF models as a KV cache (its BERT path is broken in
  transformers 5), so the oracle is transformers' own BERT given that cache."""
  model, _ = registry.build_model(tiny_bert_dir, task="classification", num_labels=2,
                                  rngs=nnx.Rngs(0))
  options = dict(methods.get("prefix_tuning").defaults, num_virtual_tokens=3)
  model = methods.registry._METHODS["prefix_tuning"](options).apply(model, rngs=nnx.Rngs(1))
  attention = model.bert.encoder.layer[0].attention.self_attn
  assert isinstance(attention, prefix_tuning.PrefixSelfAttention)
  table = np.asarray(attention.prefix())
  expected = np.asarray(model(IDS, MASK, TYPES))

  hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(tiny_bert_dir),
                                                                       num_labels=2)
  hf.classifier.weight.data = torch.tensor(np.asarray(model.classifier.kernel[...]).T.copy())
  hf.classifier.bias.data = torch.tensor(np.asarray(model.classifier.bias[...]))
  # PEFT's layout: [n, layers * 2, heads, head_dim]; layer i's key 2i, value 2i + 1.
  kv = torch.tensor(table).view(3, LAYERS * 2, 4, HIDDEN // 4).permute(1, 2, 0, 3)
  cache = transformers.DynamicCache(config=hf.config)
  for i in range(LAYERS):
    cache.update(kv[2 * i][None].expand(2, -1, -1, -1).contiguous(),
                 kv[2 * i + 1][None].expand(2, -1, -1, -1).contiguous(), i)
  mask = np.concatenate([np.ones((2, 3), np.int64), MASK], axis=1)
  np.testing.assert_allclose(torch_logits(hf, mask=mask, cache=cache), expected, atol=1e-5,
                             rtol=0)


def test_prefix_tuning_peft_export_holds_the_projected_table(tiny_bert_dir, tmp_path):
  """PEFT cannot run prefix tuning on transformers 5's BERT; check the files' contents."""
  import json  # pylint: disable=g-import-not-at-top
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  model, _ = registry.build_model(tiny_bert_dir, task="classification", num_labels=2,
                                  rngs=nnx.Rngs(0))
  options = dict(methods.get("prefix_tuning").defaults, num_virtual_tokens=3,
                 prefix_projection=True, encoder_hidden_size=8)
  method = methods.registry._METHODS["prefix_tuning"](options)
  model = method.apply(model, rngs=nnx.Rngs(1))
  out = method.export_peft(model, tmp_path / "peft", base_path=str(tiny_bert_dir))
  tensors = safetensors.numpy.load_file(str(out / "adapter_model.safetensors"))
  table = np.asarray(model.bert.encoder.layer[1].attention.self_attn.prefix())
  np.testing.assert_allclose(tensors["prompt_embeddings"], table, rtol=1e-6)
  assert tensors["prompt_embeddings"].shape == (3, LAYERS * 2 * HIDDEN)
  assert set(tensors) == {"prompt_embeddings", "base_model.classifier.weight",
                          "base_model.classifier.bias"}
  config = json.loads((out / "adapter_config.json").read_text())
  assert config["peft_type"] == "PREFIX_TUNING" and config["prefix_projection"] is False
  assert (config["num_virtual_tokens"], config["num_layers"], config["token_dim"]) == (3, LAYERS, HIDDEN)
  assert peft.PeftConfig.from_pretrained(str(out)).peft_type == peft.PeftType.PREFIX_TUNING
