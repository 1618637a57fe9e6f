"""Extractive QA: `*ForQuestionAnswering` heads equal to transformers' (BERT, RoBERTa,
DistilBERT) with exports it loads; document-stride windows and their answer targets; SQuAD's
normalisation, exact match and F1; the best span across windows; a tiny BERT that learns to
answer over long contexts, whose export answers as ftjax's eval did."""

import json
import random

import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from ftjax import train
from ftjax.config import base_config
from ftjax.data import qa as qa_lib
from ftjax.data import qa_files
from ftjax.data.tokenization import load_tokenizer
from ftjax.errors import UserError
from ftjax.export import export
from ftjax.models import registry
from ftjax.tasks import question_answering as qa_task
import tiny_assets

FAMILIES = {"bert": (tiny_assets.make_tiny_bert, transformers.BertForQuestionAnswering),
            "roberta": (tiny_assets.make_tiny_roberta, transformers.RobertaForQuestionAnswering),
            "distilbert": (tiny_assets.make_tiny_distilbert,
                           transformers.DistilBertForQuestionAnswering),
            "modernbert": (tiny_assets.make_tiny_modernbert,
                           transformers.ModernBertForQuestionAnswering)}


@pytest.mark.parametrize("family", FAMILIES)
def test_heads_equal_transformers_and_export_back(family, tmp_path):
  make, cls = FAMILIES[family]
  base = make(tmp_path / "base")
  torch.manual_seed(1)
  cls.from_pretrained(str(base)).save_pretrained(str(tmp_path / "qa"))
  hf = cls.from_pretrained(str(tmp_path / "qa")).eval()
  model, fresh = registry.build_model(tmp_path / "qa", task="question_answering",
                                      rngs=nnx.Rngs(0))
  assert fresh == []
  ids = np.random.default_rng(0).integers(5, 20, (2, 9))
  mask = np.ones_like(ids)
  mask[1, 6:] = 0
  with torch.no_grad():
    want = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
  start, end = model(ids, mask)
  np.testing.assert_allclose(np.asarray(start), want.start_logits.numpy(), atol=1e-5)
  np.testing.assert_allclose(np.asarray(end), want.end_logits.numpy(), atol=1e-5)
  again = transformers.AutoModelForQuestionAnswering.from_pretrained(
      str(registry.save_hf(model, tmp_path / "out"))).eval()
  assert type(again) is cls
  with torch.no_grad():
    got = again(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
  np.testing.assert_allclose(got.start_logits.numpy(), want.start_logits.numpy(), atol=1e-6)


def test_squad_normalisation_exact_match_and_f1():
  assert qa_task.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
  assert qa_task.exact_match("the Eiffel Tower", "Eiffel Tower.") == 1.0
  # 2 common tokens of 3 predicted and 4 referenced: P 2/3, R 1/2, F1 4/7
  assert qa_task.f1("cat sat down", "a cat sat on mats") == pytest.approx(
      2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))
  assert qa_task.f1("", "") == 1.0 and qa_task.f1("cat", "") == 0.0
  offsets = [(-1, -1), (0, 3), (4, 7), (8, 11), (-1, -1)]
  start = np.array([9.0, 0.0, 5.0, 1.0, 8.0])
  end = np.array([9.0, 0.0, 1.0, 4.0, 8.0])  # best in-context span: tokens 2..3 (5 + 4)
  assert qa_task.best_span(start, end, offsets, qa_task.Options()) == (9.0, 4, 11)
  assert qa_task.best_span(start, end, offsets, qa_task.Options(max_answer_length=1)) == (
      6.0, 4, 7)


def _context(r, answer_at):
  words = [r.choice(["the", "movie", "film", "was", "a", "plot", "acting", "really", "quite"])
           for _ in range(r.randint(18, 30))]
  pos = min(answer_at, len(words) - 1)
  words[pos] = r.choice(tiny_assets.POSITIVE)
  context = " ".join(words)
  start = len(" ".join(words[:pos])) + (1 if pos else 0)
  return context, words[pos], start


def _questions(n, seed):
  r = random.Random(seed)
  out = []
  for i in range(n):
    context, answer, start = _context(r, r.randint(0, 28))
    out.append({"id": f"q{seed}-{i}", "question": "what was good ?", "context": context,
                "answers": {"text": [answer], "answer_start": [start]}})
  return out


def test_stride_windows_hold_the_answer_where_it_is_whole(tmp_path):
  tokenizer = load_tokenizer(tiny_assets.make_tiny_bert(tmp_path / "bert"))
  context, answer, start = _context(random.Random(3), 25)
  got = qa_lib.windows(tokenizer, "what was good ?", context, [[answer, start]], max_length=20,
                       stride=6, name="x")
  assert len(got) >= 2
  holding = [w for w in got if w["start"] > 0]
  assert holding and all(w["end"] == w["start"] for w in holding)  # a one-word answer
  for w in holding:  # the targets' offsets are the answer's characters
    assert context[w["offsets"][w["start"]][0]:w["offsets"][w["end"]][1]] == answer
  assert any(w["start"] == 0 for w in got[:-1])  # an early window without it points at token 0
  first_ctx = [o for o in got[1]["offsets"] if o[0] >= 0]
  last_prev = [o for o in got[0]["offsets"] if o[0] >= 0]
  assert first_ctx[0][0] < last_prev[-1][1]  # consecutive windows overlap (the stride)


def test_tiny_bert_learns_to_answer_and_its_export_answers_alike(tmp_path):
  model_dir = tiny_assets.make_tiny_bert(tmp_path / "bert")
  dev = _questions(24, 1)
  files = {"train": tiny_assets.write_jsonl(tmp_path / "train.jsonl", _questions(160, 0)),
           "validation": tiny_assets.write_jsonl(tmp_path / "dev.jsonl", dev)}
  c = base_config()
  c.model.checkpoint, c.model.task = str(model_dir), "question_answering"
  c.data.name = "qa_files"
  c.data.files.train, c.data.files.validation = str(files["train"]), str(files["validation"])
  c.data.test_split = ""
  c.data.max_length, c.data.doc_stride, c.data.bucket_boundaries = 24, 8, (24,)
  c.train.steps, c.train.batch_size, c.train.log_every_steps = 80, 32, 20
  c.optimizer.lr = 3e-3
  c.eval.every_steps, c.eval.batch_size, c.eval.metric = 40, 32, "exact_match"
  c.checkpoint.every_steps = 40
  summary = train.train_and_evaluate(c, str(tmp_path / "run"))
  first, best = summary["initial_eval"], summary["best_eval"]
  assert best["exact_match"] >= 0.9 > first["exact_match"], best
  assert best["num_windows"] > best["num_examples"] == len(dev)  # contexts span windows
  report = json.loads((tmp_path / "run" / "data_report.json").read_text())
  assert report["splits"]["validation"]["windows"] == best["num_windows"]
  assert report["splits"]["validation"]["answer_in_no_window"] == 0

  out = export(str(tmp_path / "run"), str(tmp_path / "hf"), "hf", checkpoint="best")
  model = transformers.AutoModelForQuestionAnswering.from_pretrained(str(out)).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
  right = 0
  objective = qa_task.QuestionAnswering(qa_task.Options())
  for q in dev:
    best_score, answer = None, ""
    for w in qa_lib.windows(tokenizer, q["question"], q["context"], [], max_length=24, stride=8,
                            name=q["id"]):
      with torch.no_grad():
        o = model(input_ids=torch.tensor([w["input_ids"]]),
                  token_type_ids=torch.tensor([w["token_type_ids"]]))
      span = qa_task.best_span(o.start_logits[0].numpy(), o.end_logits[0].numpy(), w["offsets"],
                               objective.options)
      if span and (best_score is None or span[0] > best_score):
        best_score, answer = span[0], q["context"][span[1]:span[2]]
    right += qa_task.exact_match(answer, q["answers"]["text"][0])
  assert right / len(dev) == pytest.approx(best["exact_match"])


def test_an_answer_not_in_its_context_names_the_example(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"id": "q7", "question": "who?", "context": "Ada wrote it.",
                             "answers": {"text": ["Ada"], "answer_start": [4]}}) + "\n")
  with pytest.raises(UserError, match=r"bad.jsonl:1 \(example 'q7'\): answer 'Ada' is not in its "
                                      r"context at answer_start 4"):
    qa_files.read_questions(bad)
  tokenizer = load_tokenizer(tiny_assets.make_tiny_bert(tmp_path / "bert"))
  with pytest.raises(UserError, match=r"example 'q8': cannot fit its question"):
    qa_lib.windows(tokenizer, " ".join(["good"] * 40), "a film", [], max_length=16, stride=4,
                   name="q8")


def test_unanswerable_questions_get_an_empty_answer_where_the_null_score_wins():
  """SQuAD 2.0: with unanswerable questions in the split, a question's answer is "" when its
  null score (token 0, smallest over its windows) beats its best span across windows."""
  offsets = [(-1, -1), (0, 3), (4, 7)]
  windows = [{"example": 0, "offsets": offsets}, {"example": 0, "offsets": offsets},
             {"example": 1, "offsets": offsets}]
  rows = [{"context": "Ada Bob", "answers": [["Bob", 4]]}, {"context": "Ada Bob", "answers": []}]
  dataset = type("D", (), {"windows": lambda self, s: windows, "rows": lambda self, s: rows})()
  start = np.array([[1.0, 0.0, 2.0], [5.0, 0.0, 1.0], [3.0, 2.0, 0.0]])
  end = np.array([[1.0, 0.0, 2.0], [5.0, 0.0, 1.0], [3.0, 1.0, 0.0]])
  outputs = [{"start": start, "end": end, "window": np.array([0, 1, 2]),
              "loss": np.zeros(3)}]
  objective = qa_task.QuestionAnswering(qa_task.Options())
  # question 0: best span "Bob" (4.0, window 0) beats its null score min(2, 10) = 2
  # question 1: null 6.0 beats its best span "Ada" (3.0)
  assert objective.predictions(outputs, dataset, "x") == ["Bob", ""]
  m = objective.metrics_from_rows(outputs, dataset, "x")
  assert m["exact_match"] == m["f1"] == 1.0 and m["num_unanswerable"] == 1
