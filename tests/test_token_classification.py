"""Token classification (NER): `*ForTokenClassification` heads equal to transformers' (BERT,
RoBERTa, DistilBERT, Llama, Gemma 2, GPT-2) with exports it loads; IOB2 checks and strict entity scores equal to
seqeval's; word-to-token alignment for WordPiece and byte-level BPE; a tiny BERT that learns to
tag, whose export tags the validation sentences as ftjax's eval did."""

import json
import random

import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from ftjax import train
from ftjax.config import base_config
from ftjax.data import iob2, token_files
from ftjax.data import token_labels
from ftjax.data.tokenization import load_tokenizer
from ftjax.errors import UserError
from ftjax.export import export
from ftjax.models import registry
from ftjax.tasks import token_classification
import tiny_assets

def _tiny_decoder(config_cls, lm_cls, **kw):
  def make(path):
    torch.manual_seed(0)
    lm_cls(config_cls(**kw)).save_pretrained(str(path))
    return path
  return make


_GEMMA2 = dict(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
               sliding_window=4, pad_token_id=0)
FAMILIES = {"bert": (tiny_assets.make_tiny_bert, transformers.BertForTokenClassification),
            "gemma2": (_tiny_decoder(transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
                                     **_GEMMA2), transformers.Gemma2ForTokenClassification),
            "gpt2": (_tiny_decoder(transformers.GPT2Config, transformers.GPT2LMHeadModel,
                                   vocab_size=40, n_embd=32, n_layer=2, n_head=4, n_positions=32),
                     transformers.GPT2ForTokenClassification),
            "roberta": (tiny_assets.make_tiny_roberta, transformers.RobertaForTokenClassification),
            "distilbert": (tiny_assets.make_tiny_distilbert,
                           transformers.DistilBertForTokenClassification),
            "modernbert": (tiny_assets.make_tiny_modernbert,
                           transformers.ModernBertForTokenClassification),
            "llama": (tiny_assets.make_tiny_llama, transformers.LlamaForTokenClassification)}


@pytest.mark.parametrize("family", FAMILIES)
def test_heads_equal_transformers_and_export_back(family, tmp_path):
  make, cls = FAMILIES[family]
  base = make(tmp_path / "base")
  torch.manual_seed(1)
  hf = cls.from_pretrained(str(base), num_labels=5).eval()
  hf.save_pretrained(str(tmp_path / "tc"))
  model, fresh = registry.build_model(tmp_path / "tc", task="token_classification",
                                      rngs=nnx.Rngs(0))
  assert fresh == [] and model.num_labels == 5
  ids = np.random.default_rng(0).integers(5, 20, (2, 7))
  mask = np.ones_like(ids)
  mask[1, 5:] = 0  # right padding
  with torch.no_grad():
    want = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(model(ids, mask))[real], want[real], atol=1e-5)
  out = registry.save_hf(model, tmp_path / "out", id2label={i: f"T{i}" for i in range(5)})
  again = transformers.AutoModelForTokenClassification.from_pretrained(str(out)).eval()
  assert type(again) is cls and again.config.id2label[3] == "T3"
  with torch.no_grad():
    got = again(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
  np.testing.assert_allclose(got.numpy()[real], want[real], atol=1e-6)
  _, fresh = registry.build_model(base, task="token_classification", num_labels=3,
                                  rngs=nnx.Rngs(0))
  new_head = {"llama": {"score"}, "gemma2": {"score"},
              "modernbert": {"head.dense", "head.norm", "classifier"}}  # HF's head too
  assert {p.rsplit(".", 1)[0] for p in fresh} == new_head.get(family, {"classifier"})


def test_a_family_without_the_head_names_the_heads_it_has(tmp_path):
  # transformers has no Gemma 3 token classifier, so neither has ftjax (nothing would load it)
  transformers.Gemma3TextConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=32,
                                num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                vocab_size=50).save_pretrained(str(tmp_path))
  with pytest.raises(UserError, match=r"task 'token_classification' is not supported for "
                                      r"model_type 'gemma3_text'; supported: causal_lm, "
                                      r"classification"):
    registry.model_spec(tmp_path, task="token_classification")


def test_iob2_checks_and_entities_equal_seqeval_strict():
  from seqeval.metrics import f1_score, precision_score, recall_score  # pylint: disable=g-import-not-at-top
  from seqeval.scheme import IOB2  # pylint: disable=g-import-not-at-top
  iob2.check(["B-PER", "I-PER", "O", "B-LOC"], "x")
  for bad, why in ((["O", "I-PER"], r"x: tag 1 'I-PER' follows 'O'"),
                   (["B-PER", "I-LOC"], r"follows 'B-PER'"), (["PER"], r"is not IOB2")):
    with pytest.raises(ValueError, match=why):
      iob2.check(bad, "x")
  rng = random.Random(0)
  tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
  gold = []
  for _ in range(300):  # valid IOB2: an I- tag only continues its own type
    seq = []
    for _ in range(rng.randint(1, 12)):
      t = rng.choice(tags)
      seq.append(t if not t.startswith("I-") or (seq and seq[-1][2:] == t[2:]) else "O")
    gold.append(seq)
  for g in gold:
    iob2.check(g, "gold")
  pred = [[t if rng.random() < 0.7 else rng.choice(tags) for t in g] for g in gold]  # not valid
  got = token_classification.entity_scores(gold, pred)
  kw = dict(mode="strict", scheme=IOB2)
  assert got["entity_f1"] == pytest.approx(f1_score(gold, pred, **kw))
  assert got["entity_precision"] == pytest.approx(precision_score(gold, pred, **kw))
  assert got["entity_recall"] == pytest.approx(recall_score(gold, pred, **kw))
  assert got["macro_entity_f1"] == pytest.approx(f1_score(gold, pred, average="macro", **kw))


@pytest.mark.parametrize("make", [tiny_assets.make_tiny_bert, tiny_assets.make_tiny_llama])
def test_each_word_first_token_carries_its_label(make, tmp_path):
  tokenizer = load_tokenizer(make(tmp_path / "m"))
  words = ["the", "movie", "good,", "was", "fine."]  # "good,": two tokens in each vocabulary
  ids, _, first = token_labels.align(tokenizer, words, max_length=32)
  assert sorted(first[first >= 0]) == list(range(len(words)))
  # The tokens from one word's first token to the next word's cover exactly that word's text.
  offsets = tokenizer(" ".join(words), return_offsets_mapping=True)["offset_mapping"]
  starts = list(np.flatnonzero(first >= 0))
  text_start = 0
  for w, (a, b) in enumerate(zip(starts, starts[1:] + [len(ids)])):
    real = [offsets[t] for t in range(a, b) if offsets[t][1] > offsets[t][0]]
    assert real[0][0] in (text_start, text_start - 1) and real[-1][1] == text_start + len(words[w])
    assert b - a >= (2 if words[w] == "good," else 1)
    text_start += len(words[w]) + 1
  _, _, cut = token_labels.align(tokenizer, words, max_length=4)  # words past the cut: no token
  assert set(cut[cut >= 0]) < set(range(len(words)))


TYPES = {("movie", "film"): "MOV", ("plot",): "PLOT"}
FILLER = ["the", "was", "a", "really", "quite", "very", "good", "bad", "not", "fine"]


def _sentences(n, seed):
  r = random.Random(seed)
  out = []
  for _ in range(n):
    tokens, tags = [], []
    for _ in range(r.randint(3, 8)):
      u = r.random()
      if u < 0.3:
        words, kind = next((w, k) for w, k in TYPES.items() if (k == "MOV") == (u < 0.18))
        tokens += list(words)
        tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
      else:
        tokens.append(r.choice(FILLER))
        tags.append("O")
    out.append({"tokens": tokens, "tags": tags})
  return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("ner")
  dev = _sentences(24, 1)
  dev[0] = {"tokens": ["the"] * 14 + ["movie", "film"], "tags": ["O"] * 14 + ["B-MOV", "I-MOV"]}
  conll = root / "dev.conll"  # the validation split as CoNLL: word, tag per line
  conll.write_text("-DOCSTART- O\n\n" + "\n\n".join(
      "\n".join(f"{w} {t}" for w, t in zip(s["tokens"], s["tags"])) for s in dev) + "\n")
  return {"model": tiny_assets.make_tiny_bert(root / "bert"), "validation": conll, "dev": dev,
          "train": tiny_assets.write_jsonl(root / "train.jsonl", _sentences(96, 0))}


def _config(tiny):
  c = base_config()
  c.model.checkpoint = str(tiny["model"])
  c.model.task = "token_classification"
  c.method.name = "lora"
  c.data.name = "token_files"
  c.data.files.train = str(tiny["train"])
  c.data.files.validation = str(tiny["validation"])
  c.data.test_split = ""
  c.data.max_length = 16
  c.data.bucket_boundaries = (16,)
  c.train.steps = 60
  c.train.batch_size = 16
  c.train.log_every_steps = 20
  c.optimizer.lr = 1e-2
  c.eval.every_steps = 30
  c.eval.batch_size = 16
  c.eval.metric = "entity_f1"
  c.checkpoint.every_steps = 30
  return c


def test_tiny_bert_learns_to_tag_and_its_export_tags_alike(tiny, tmp_path):
  workdir = str(tmp_path / "run")
  summary = train.train_and_evaluate(_config(tiny), workdir)
  first, best = summary["initial_eval"], summary["best_eval"]
  assert best["entity_f1"] > 0.9 > first["entity_f1"] and best["loss"] < first["loss"], best
  report = json.loads((tmp_path / "run" / "data_report.json").read_text())
  # dev[0] has 16 words: [CLS] + 14 + [SEP] tokens fit, the MOV entity is cut off
  assert report["splits"]["validation"]["truncated_words"] == 2
  assert best["entity_recall"] < 1.0  # so its gold entity counts as missed

  out = export(workdir, str(tmp_path / "hf"), "hf", checkpoint="best")
  model = transformers.AutoModelForTokenClassification.from_pretrained(str(out)).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
  gold, predicted = [], []
  for s in tiny["dev"]:
    ids, types, first_token = token_labels.align(tokenizer, s["tokens"], max_length=16)
    with torch.no_grad():
      logits = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types])).logits
    tags = [model.config.id2label[int(i)] for i in logits[0].argmax(-1)[first_token >= 0]]
    gold.append(s["tags"])
    predicted.append(tags + ["O"] * (len(s["tags"]) - len(tags)))
  again = token_classification.entity_scores(gold, predicted)
  assert again["entity_f1"] == pytest.approx(best["entity_f1"])

  # The LoRA run as a PEFT adapter (task type TOKEN_CLS, the head saved whole) on the base
  # checkpoint gives the merged export's logits.
  import peft  # pylint: disable=g-import-not-at-top
  adapter = export(workdir, str(tmp_path / "peft"), "peft", checkpoint="best")
  assert json.loads((adapter / "adapter_config.json").read_text())["task_type"] == "TOKEN_CLS"
  base = transformers.AutoModelForTokenClassification.from_pretrained(
      str(tiny["model"]), num_labels=model.config.num_labels)
  adapted = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
  ids = torch.tensor([token_labels.align(tokenizer, tiny["dev"][1]["tokens"], 16)[0]])
  with torch.no_grad():
    np.testing.assert_allclose(adapted(input_ids=ids).logits.numpy(),
                               model(input_ids=ids).logits.numpy(), atol=1e-5)


def test_bad_tags_and_files_are_one_line_errors(tiny, tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"tokens": ["a", "film"], "tags": ["O", "B-MOV"]}) + "\n"
                 + json.dumps({"tokens": ["a", "film"], "tags": ["O", "I-MOV"]}) + "\n")
  with pytest.raises(UserError, match=r"bad.jsonl:2: tag 1 'I-MOV' follows 'O'"):
    token_files.read_sentences(bad)
  bad.write_text(json.dumps({"tokens": ["a", "film"], "tags": ["O"]}) + "\n")
  with pytest.raises(UserError, match=r"bad.jsonl:1: 2 words but 1 tags"):
    token_files.read_sentences(bad)
  conll = tmp_path / "bad.conll"
  conll.write_text("a O\nfilm\n")
  with pytest.raises(UserError, match=r"bad.conll:2: expected a word and its tag"):
    token_files.read_sentences(conll)
  unseen = tmp_path / "unseen.jsonl"  # a type the training split never shows
  unseen.write_text(json.dumps({"tokens": ["Paris"], "tags": ["B-LOC"]}) + "\n")
  cfg = _config(tiny)
  cfg.data.files.validation = str(unseen)
  with pytest.raises(UserError, match=r"unseen.jsonl:1 \(split 'validation'\): tag 'B-LOC' is "
                                      r"not among the labels"):
    train.train_and_evaluate(cfg, str(tmp_path / "run"))
