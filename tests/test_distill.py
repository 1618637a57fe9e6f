"""Distillation (objective `distill`): the divergences against TRL's GKD loss, and students that
learn a frozen teacher's distribution on both heads, with exact resume and one-line errors."""

import json
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from ftjax import train
from ftjax.config import base_config
from ftjax.errors import UserError
from ftjax.models import registry
from ftjax.tasks import distill
from resume_runs import straight_and_resumed
from tiny_assets import (make_conversations, make_tiny_bert, make_tiny_llama,
                         save_wordpiece_tokenizer, write_jsonl, WORDS)


# ------------------------------------------------------------------ the divergences, against TRL

@pytest.mark.parametrize("kind,beta", [("forward_kl", 0.0), ("reverse_kl", 1.0), ("jsd", 0.5),
                                       ("jsd", 0.1)])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_divergence_equals_trl_gkd_generalized_jsd(kind, beta, temperature):
  torch = pytest.importorskip("torch")
  from trl.experimental.gkd import GKDTrainer  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  student = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
  teacher = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
  labels = rng.integers(0, 11, size=(3, 5))
  labels[0, :2] = labels[2, 4] = -100  # masked positions (prompt tokens, padding)
  theirs = GKDTrainer.generalized_jsd_loss(
      torch.tensor(student, dtype=torch.float64), torch.tensor(teacher, dtype=torch.float64),
      labels=torch.tensor(labels), beta=beta, temperature=temperature).item()
  per = np.asarray(distill.divergence(student, teacher, kind=kind, beta=beta,
                                      temperature=temperature))
  mask = labels != -100
  assert per.shape == (3, 5) and (per >= -1e-7).all()
  assert per[mask].sum() / mask.sum() == pytest.approx(theirs, abs=1e-6)


def test_divergence_of_a_model_from_itself_is_zero():
  logits = np.random.default_rng(1).normal(size=(4, 7)).astype(np.float32)
  for kind in distill.DIVERGENCES:
    np.testing.assert_allclose(distill.divergence(logits, logits, kind=kind), 0.0, atol=1e-6)


# ----------------------------------------------------------------------------- causal LM head

@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
  """A 2-layer teacher and a 1-layer student with the teacher's ChatML tokenizer."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("distill_llama")
  teacher = make_tiny_llama(root / "teacher", seed=0, layers=2)
  model = transformers.LlamaForCausalLM.from_pretrained(str(teacher))
  with torch.no_grad():  # a confident teacher (tied embeddings): far from uniform next tokens
    model.model.embed_tokens.weight.mul_(30.0)
  model.save_pretrained(str(teacher))
  return {"teacher": teacher,
          "student": make_tiny_llama(root / "student", seed=1, layers=1),
          "train": write_jsonl(root / "train.jsonl", make_conversations(48, 0)),
          "validation": write_jsonl(root / "dev.jsonl", make_conversations(12, 1))}


def _llama_config(llamas, **distill_options):
  c = base_config()
  c.model.checkpoint = str(llamas["student"])
  c.model.task = "causal_lm"
  c.model.logits_chunk = 8  # the chunked path (both models' logits one chunk at a time)
  c.objective.name = "distill"
  c.objective.distill.teacher = str(llamas["teacher"])
  for k, v in distill_options.items():
    c.objective.distill[k] = v
  c.method.name = "full"
  c.data.name = "chat_files"
  c.data.files.train = str(llamas["train"])
  c.data.files.validation = str(llamas["validation"])
  c.data.test_split = ""
  c.data.max_length = 24
  c.data.bucket_boundaries = (24,)
  c.train.steps = 24
  c.train.batch_size = 8
  c.train.log_every_steps = 4
  c.optimizer.lr = 3e-3
  c.optimizer.schedule = "constant"
  c.eval.every_steps = 12
  c.eval.batch_size = 12
  c.eval.metric = "divergence"
  c.eval.mode = "min"
  c.eval.num_samples = 0
  c.checkpoint.every_steps = 12
  return c


def test_a_smaller_llama_learns_the_teachers_next_token_distribution(llamas, tmp_path):
  summary = train.train_and_evaluate(_llama_config(llamas), str(tmp_path / "run"))
  first, last = summary["initial_eval"], summary["final_eval"]
  assert first["divergence"] > 0.5, first  # a random student and a confident teacher disagree
  assert last["divergence"] < 0.5 * first["divergence"], (first, last)
  assert {"perplexity", "token_accuracy", "num_tokens"} <= set(last)  # the head's own metrics
  records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  rows = [r for r in records if "grad_norm" in r]
  assert rows and {"divergence", "task_loss", "token_accuracy"} <= set(rows[-1])
  # Pure distillation (task_weight 0): the logged loss is the divergence.
  assert rows[-1]["loss"] == pytest.approx(rows[-1]["divergence"], rel=1e-5)


def test_on_policy_distillation_learns_on_student_samples_and_resumes_exactly(llamas, tmp_path):
  """GKD's lambda 0.5: about half the steps train on replies the student sampled (the teacher
  scoring them); the divergence on the dataset's replies still falls, and a run stopped at step 8
  draws the same on-policy steps and samples after resuming."""
  def config(steps):
    cfg = _llama_config(llamas, on_policy_fraction=0.5, on_policy_max_new_tokens=6)
    cfg.train.steps, cfg.train.log_every_steps, cfg.eval.every_steps = steps, 1, 8
    return cfg
  straight, resumed = straight_and_resumed(config, tmp_path, 16, 8)
  first, last = straight["initial_eval"], straight["final_eval"]
  assert last["divergence"] < 0.7 * first["divergence"], (first, last)
  rows = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
  drawn = [r["on_policy"] for r in rows if r["split"] == "train"]
  assert 0 < sum(drawn) < len(drawn), drawn  # some steps of each kind
  assert resumed["final_eval"] == last
  with pytest.raises(UserError, match="on_policy_fraction' needs model.task=causal_lm"):
    cfg = config(1)
    cfg.model.task = "classification"
    train.build_experiment(cfg, abstract=True)


def test_chunked_loss_and_gradients_equal_the_whole_logits(llamas):
  """`model.logits_chunk` changes where the logits live, not the loss: jsd mixed with the task
  loss, chunks of 8 over 24 positions (one padded), against all positions at once."""
  student, _ = registry.build_model(llamas["student"], task="causal_lm", rngs=nnx.Rngs(0))
  teacher, _ = registry.build_model(llamas["teacher"], task="causal_lm", rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  t = 23
  batch = {"input_ids": rng.integers(3, 60, size=(2, t)), "attention_mask": np.ones((2, t), int),
           "positions": np.tile(np.arange(t), (2, 1)), "segment_ids": np.ones((2, t), int),
           "targets": rng.integers(3, 60, size=(2, t)),
           "loss_mask": (rng.random((2, t)) < 0.6).astype(np.int32)}
  graphdef, params = nnx.split(student)

  def loss(params, chunk):
    cfg = _llama_config(llamas, divergence="jsd", jsd_beta=0.3, temperature=1.5, task_weight=0.25)
    cfg.model.logits_chunk = chunk
    objective = distill.configure(cfg)
    return objective.train_loss(nnx.merge(graphdef, params), batch, None, teacher=teacher)[0]

  whole, grads_whole = jax.value_and_grad(loss)(params, 0)
  chunked, grads_chunked = jax.value_and_grad(loss)(params, 8)
  assert float(whole) > 0
  np.testing.assert_allclose(float(chunked), float(whole), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_whole), jax.tree.leaves(grads_chunked), strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)


# -------------------------------------------------------------------- sequence classifier head

@pytest.fixture(scope="module")
def berts(tmp_path_factory, tiny_bert_dir, tiny_sentiment_files):
  """A teacher fine-tuned by ftjax (the 2-layer tiny BERT, exported with `ftjax.export`), a
  1-layer student with its tokenizer, a teacher without a head and one with another vocabulary."""
  import transformers  # pylint: disable=g-import-not-at-top
  from ftjax import export  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("distill_bert")
  assets = {"student": make_tiny_bert(root / "student", seed=1, layers=1), **tiny_sentiment_files}
  cfg = _bert_config(assets)
  with cfg.unlocked():
    cfg.model.checkpoint = str(tiny_bert_dir)
    cfg.objective.name = ""
    cfg.eval.metric, cfg.eval.mode, cfg.eval.at_start = "accuracy", "max", False
    cfg.train.steps = 48  # confident: its distributions are far from 1/2
  taught = train.train_and_evaluate(cfg, str(root / "teacher_run"))
  assert taught["final_eval"]["accuracy"] >= 0.9 and taught["final_eval"]["loss"] < 0.3, taught
  assets["teacher"] = pathlib.Path(export.export(str(root / "teacher_run"), str(root / "teacher"),
                                                 "hf"))
  other = root / "other_vocabulary"
  save_wordpiece_tokenizer(other, list(WORDS)[: len(WORDS) // 2])
  transformers.BertForSequenceClassification(
      transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                              num_attention_heads=4, intermediate_size=64)).save_pretrained(str(other))
  return {**assets, "headless": make_tiny_bert(root / "headless", seed=2, layers=1),
          "other": other}


def _bert_config(berts, steps=24, **distill_options):
  c = base_config()
  c.model.checkpoint = str(berts["student"])
  c.objective.name = "distill"
  c.objective.distill.teacher = str(berts.get("teacher", ""))
  for k, v in distill_options.items():
    c.objective.distill[k] = v
  c.method.name = "full"
  c.data.name = "files"
  c.data.files.train = str(berts["train"])
  c.data.files.validation = str(berts["validation"])
  c.data.test_split = ""
  c.data.max_length = 16
  c.data.bucket_boundaries = (8, 16)
  c.train.steps = steps
  c.train.batch_size = 8
  c.train.log_every_steps = 4
  c.optimizer.lr = 1e-2
  c.optimizer.schedule = "constant"
  c.eval.every_steps = 12
  c.eval.batch_size = 20
  c.eval.metric = "divergence"
  c.eval.mode = "min"
  c.checkpoint.every_steps = 3
  return c


def test_a_student_classifier_learns_the_teachers_label_distribution(berts, tiny_bert_dir,
                                                                     tmp_path):
  """The student is the teacher's own pretrained base cut to its first layer
  (`model.num_layers`), as MiniLM-L6 cut to 3 layers would be; it exports as a 1-layer model."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from ftjax import export  # pylint: disable=g-import-not-at-top
  cfg = _bert_config(berts, steps=48, divergence="reverse_kl", temperature=2.0, task_weight=0.2)
  cfg.model.checkpoint, cfg.model.num_layers = str(tiny_bert_dir), 1
  summary = train.train_and_evaluate(cfg, str(tmp_path / "run"))
  first, last = summary["initial_eval"], summary["final_eval"]
  assert last["divergence"] < 0.5 * first["divergence"], (first, last)
  assert last["accuracy"] >= 0.9 and {"macro_f1", "ece", "loss"} <= set(last)
  out = export.export(str(tmp_path / "run"), str(tmp_path / "hf"), "hf")
  student = transformers.BertForSequenceClassification.from_pretrained(str(out))
  assert student.config.num_hidden_layers == 1 and len(student.bert.encoder.layer) == 1
  with torch.no_grad():  # the export is the student trained, not the base or the teacher
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    rows = [json.loads(l) for l in berts["validation"].read_text().splitlines()]
    logits = student(**tok([r["text"] for r in rows], return_tensors="pt", padding=True)).logits
  labels = student.config.id2label
  predicted = [labels[int(i)] for i in logits.argmax(-1)]
  assert np.mean([p == r["label"] for p, r in zip(predicted, rows)]) == last["accuracy"]
  with pytest.raises(UserError, match=r"model.num_layers must be in \[1, 2\] .* got 3"):
    cfg.model.num_layers = 3
    train.build_experiment(cfg, abstract=True)


def test_resume_rebuilds_the_teacher_and_continues_bit_for_bit(berts, tmp_path):
  def config(steps):
    cfg = _bert_config(berts, steps=steps)
    cfg.eval.at_start = False
    return cfg
  straight, resumed = straight_and_resumed(config, tmp_path, 6, 3)
  assert resumed["final_eval"] == straight["final_eval"]


def test_a_teacher_that_is_the_student_starts_at_zero_divergence(berts):
  cfg = _bert_config(berts)
  with cfg.unlocked():
    cfg.model.checkpoint = cfg.objective.distill.teacher
  exp = train.build_experiment(cfg, optimizer=False)
  assert exp.state.teacher is not None
  metrics = train.Evaluator(exp)(exp.state, "validation")
  assert metrics["divergence"] == pytest.approx(0.0, abs=1e-6)


def test_bad_teachers_and_options_are_one_line_errors(berts, tmp_path):
  def build(**changes):
    cfg = _bert_config(berts)
    with cfg.unlocked():
      for key, value in changes.items():
        cfg.objective.distill[key] = value
    return train.build_experiment(cfg, abstract=True)

  with pytest.raises(UserError, match=r"objective.distill.teacher '.*headless' lacks "
                     r"classifier\..*a teacher must be a trained classification model"):
    build(teacher=str(berts["headless"]))
  with pytest.raises(UserError, match=r"'.*other_vocabulary' has another tokenizer than the "
                     r"student .*must share one"):
    build(teacher=str(berts["other"]))
  with pytest.raises(UserError, match=r"'objective.distill.divergence' is 'kl'; known: "
                     r"forward_kl, reverse_kl, jsd"):
    build(divergence="kl")
  with pytest.raises(UserError, match=r"'objective.distill.task_weight' must be in \[0, 1\)"):
    build(task_weight=1.0)
  with pytest.raises(UserError, match=r"needs config key 'objective.distill.teacher'"):
    build(teacher="")
