"""Multi-label (sigmoid / BCE) and regression (MSE) on the sequence classifier: losses equal to
transformers' for those problem types, tiny BERTs that learn both, exports whose `problem_type`
transformers reads and whose predictions give the run's metrics (sklearn's F1, scipy's
correlations)."""

import json
import random

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
import torch
import transformers

from ftjax import train
from ftjax.config import base_config
from ftjax.data import target_files
from ftjax.errors import UserError
from ftjax.export import export
from ftjax.tasks import multi_label
import tiny_assets


def test_bce_equals_transformers_multi_label_loss():
  rng = np.random.default_rng(0)
  logits, targets = rng.normal(size=(6, 4)), rng.integers(0, 2, (6, 4)).astype(np.float32)
  batch = {"input_ids": np.zeros((6, 2), np.int32), "attention_mask": np.ones((6, 2), np.int32),
           "token_type_ids": np.zeros((6, 2), np.int32), "targets": targets,
           "weights": np.ones(6, np.float32)}
  model = lambda *a, **k: logits
  loss, _ = multi_label.train_loss(model, batch, None)
  want = torch.nn.BCEWithLogitsLoss()(torch.tensor(logits), torch.tensor(targets))
  assert float(loss) == pytest.approx(float(want), abs=1e-6)


def _rows(n, seed, kind):
  r = random.Random(seed)
  out = []
  for _ in range(n):
    words = r.sample(["the", "movie", "film", "was", "a", "really", "quite", "acting"], 4)
    good = r.randint(0, 2)
    words += r.sample(tiny_assets.POSITIVE, good)
    has_plot = r.random() < 0.5
    words += ["plot"] * has_plot
    r.shuffle(words)
    label = ([n for n, on in (("praise", good > 0), ("plot", has_plot)) if on]
             if kind == "multi_label" else float(good))
    out.append({"text": " ".join(words), "label": label})
  return out


def _config(model_dir, files, objective):
  c = base_config()
  c.model.checkpoint = str(model_dir)
  c.objective.name = objective
  c.data.name = "target_files"
  c.data.files.train, c.data.files.validation = str(files["train"]), str(files["validation"])
  c.data.test_split = ""
  c.data.max_length, c.data.bucket_boundaries = 16, (16,)
  c.train.steps, c.train.batch_size, c.train.log_every_steps = 80, 16, 20
  c.optimizer.lr = 3e-3
  c.eval.every_steps, c.eval.batch_size = 40, 16
  c.eval.metric, c.eval.mode = ("micro_f1", "max") if objective == "multi_label" else ("rmse",
                                                                                     "min")
  c.checkpoint.every_steps = 40
  return c


@pytest.mark.parametrize("objective", ["multi_label", "regression"])
def test_tiny_bert_learns_and_its_export_predicts_alike(objective, tmp_path):
  model_dir = tiny_assets.make_tiny_bert(tmp_path / "bert")
  dev = _rows(48, 1, objective)
  files = {"train": tiny_assets.write_jsonl(tmp_path / "train.jsonl", _rows(192, 0, objective)),
           "validation": tiny_assets.write_jsonl(tmp_path / "dev.jsonl", dev)}
  summary = train.train_and_evaluate(_config(model_dir, files, objective), str(tmp_path / "run"))
  first, best = summary["initial_eval"], summary["best_eval"]
  report = json.loads((tmp_path / "run" / "data_report.json").read_text())["splits"]["validation"]
  assert ("label_counts" if objective == "multi_label" else "target") in report
  out = export(str(tmp_path / "run"), str(tmp_path / "hf"), "hf", checkpoint="best")
  config = json.loads((out / "config.json").read_text())
  model = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
  enc = tokenizer([r["text"] for r in dev], padding=True, return_tensors="pt")
  if objective == "multi_label":
    assert best["micro_f1"] > 0.9 > first["micro_f1"], best
    assert config["problem_type"] == "multi_label_classification"
    assert config["id2label"] == {"0": "plot", "1": "praise"}
    gold = np.array([[n in r["label"] for n in ("plot", "praise")] for r in dev])
    with torch.no_grad():
      o = model(**enc, labels=torch.tensor(gold, dtype=torch.float32))  # BCE: the problem type
    predicted = (o.logits.numpy() > 0)
    assert best["micro_f1"] == pytest.approx(sklearn.metrics.f1_score(gold, predicted,
                                                                       average="micro"))
    assert best["macro_f1"] == pytest.approx(sklearn.metrics.f1_score(gold, predicted,
                                                                       average="macro"))
  else:
    assert best["pearson"] > 0.8 and best["rmse"] < first["rmse"], best
    assert config["problem_type"] == "regression" and config["num_labels"] == 1
    with torch.no_grad():
      predicted = model(**enc).logits[:, 0].numpy()
    targets = [r["label"] for r in dev]
    assert best["spearman"] == pytest.approx(scipy.stats.spearmanr(predicted, targets).statistic,
                                             abs=1e-4)
    assert best["rmse"] == pytest.approx(float(np.sqrt(np.mean((predicted - targets) ** 2))),
                                         rel=1e-4)


def test_mixed_targets_and_the_wrong_objective_are_one_line_errors(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"text": "a", "label": 1.5}) + "\n"
                 + json.dumps({"text": "b", "label": ["x"]}) + "\n")
  with pytest.raises(UserError, match=r"bad.jsonl:2: field 'label' is \['x'\], but the data's "
                                      r"first row holds a regression target"):
    target_files.read_rows(bad, text_field="text", text_pair_field="", label_field="label")
  model_dir = tiny_assets.make_tiny_bert(tmp_path / "bert")
  files = {"train": tiny_assets.write_jsonl(tmp_path / "t.jsonl", _rows(8, 0, "regression")),
           "validation": tiny_assets.write_jsonl(tmp_path / "d.jsonl", _rows(4, 1, "regression"))}
  cfg = _config(model_dir, files, "multi_label")
  with pytest.raises(UserError, match=r"holds regression targets; objective 'multi_label' needs "
                                      r"multi-label ones"):
    train.train_and_evaluate(cfg, str(tmp_path / "run"))
