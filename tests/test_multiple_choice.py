"""Multiple choice: `*ForMultipleChoice` heads equal to transformers' (BERT, RoBERTa, DistilBERT)
with exports it loads, and a tiny BERT that learns to pick the right choice, with questions of
different choice counts in one batch."""

import json
import random

import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from ftjax import train
from ftjax.config import base_config
from ftjax.data import choice_files
from ftjax.errors import UserError
from ftjax.export import export
from ftjax.models import registry
import tiny_assets

FAMILIES = {"bert": (tiny_assets.make_tiny_bert, transformers.BertForMultipleChoice),
            "roberta": (tiny_assets.make_tiny_roberta, transformers.RobertaForMultipleChoice),
            "distilbert": (tiny_assets.make_tiny_distilbert,
                           transformers.DistilBertForMultipleChoice),
            "modernbert": (tiny_assets.make_tiny_modernbert,
                           transformers.ModernBertForMultipleChoice)}


@pytest.mark.parametrize("family", FAMILIES)
def test_heads_equal_transformers_and_export_back(family, tmp_path):
  make, cls = FAMILIES[family]
  base = make(tmp_path / "base")
  torch.manual_seed(1)
  cls.from_pretrained(str(base)).save_pretrained(str(tmp_path / "mc"))
  hf = cls.from_pretrained(str(tmp_path / "mc")).eval()
  model, fresh = registry.build_model(tmp_path / "mc", task="multiple_choice", rngs=nnx.Rngs(0))
  assert fresh == []
  ids = np.random.default_rng(0).integers(5, 20, (2, 3, 7))
  mask = np.ones_like(ids)
  mask[1, :, 5:] = 0
  with torch.no_grad():
    want = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
  np.testing.assert_allclose(np.asarray(model(ids, mask)), want, atol=1e-5)
  out = registry.save_hf(model, tmp_path / "out")
  again = transformers.AutoModelForMultipleChoice.from_pretrained(str(out)).eval()
  assert type(again) is cls
  with torch.no_grad():
    got = again(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
  np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def _questions(n, seed):
  """Which review is positive? Two to four choices, one with a positive word."""
  r = random.Random(seed)
  out = []
  for _ in range(n):
    k = r.randint(2, 4)
    fill = lambda: " ".join(r.sample(["the", "movie", "film", "was", "a", "plot", "acting"], 3))
    choices = [f"{fill()} {r.choice(tiny_assets.NEGATIVE)}" for _ in range(k)]
    label = r.randrange(k)
    choices[label] = f"{fill()} {r.choice(tiny_assets.POSITIVE)}"
    if len(set(choices)) == k:
      out.append({"question": "which review is good ?", "choices": choices, "label": label})
  return out


def test_tiny_bert_learns_to_choose_and_its_export_chooses_alike(tmp_path):
  model_dir = tiny_assets.make_tiny_bert(tmp_path / "bert")
  dev = _questions(40, 1)
  dev[0]["label"] = dev[0]["choices"][dev[0]["label"]]  # a label given as the choice's text
  files = {"train": tiny_assets.write_jsonl(tmp_path / "train.jsonl", _questions(160, 0)),
           "validation": tiny_assets.write_jsonl(tmp_path / "dev.jsonl", dev)}
  c = base_config()
  c.model.checkpoint, c.model.task = str(model_dir), "multiple_choice"
  c.data.name = "choice_files"
  c.data.files.train, c.data.files.validation = str(files["train"]), str(files["validation"])
  c.data.test_split = ""
  c.data.max_length, c.data.bucket_boundaries = 24, (24,)
  c.train.steps, c.train.batch_size, c.train.log_every_steps = 60, 16, 20
  c.optimizer.lr = 3e-3
  c.eval.every_steps, c.eval.batch_size = 30, 16
  c.checkpoint.every_steps = 30
  summary = train.train_and_evaluate(c, str(tmp_path / "run"))
  first, best = summary["initial_eval"], summary["best_eval"]
  assert best["accuracy"] >= 0.9 > first["accuracy"] and best["num_examples"] == len(dev), best
  report = json.loads((tmp_path / "run" / "data_report.json").read_text())
  assert report["splits"]["validation"]["choices_per_question"] == {"min": 2, "max": 4}

  out = export(str(tmp_path / "run"), str(tmp_path / "hf"), "hf", checkpoint="best")
  model = transformers.AutoModelForMultipleChoice.from_pretrained(str(out)).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
  right = 0
  for q in dev:
    enc = tokenizer([q["question"]] * len(q["choices"]), q["choices"], padding=True,
                    return_tensors="pt")
    with torch.no_grad():
      pick = int(model(**{k: v[None] for k, v in enc.items()}).logits[0].argmax())
    label = q["label"] if isinstance(q["label"], int) else q["choices"].index(q["label"])
    right += pick == label
  assert right / len(dev) == pytest.approx(best["accuracy"])


def test_bad_questions_are_one_line_errors(tmp_path):
  bad = tmp_path / "bad.jsonl"
  for row, why in (({"question": "q", "choices": ["a"], "label": 0}, r"bad.jsonl:1: field "
                    r"'choices' must be a list of 2 or more"),
                   ({"question": "q", "choices": ["a", "b"], "label": 2}, r"bad.jsonl:1: label "
                    r"must be a choice's index in \[0, 2\)"),
                   ({"question": "q", "choices": ["a", "b"], "label": "c"}, r"label 'c' is not "
                    r"one of the choices"),
                   ({"choices": ["a", "b"], "label": 0}, r"missing field 'question'")):
    bad.write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match=why):
      choice_files.read_questions(bad)
