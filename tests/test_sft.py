"""Chat fine-tuning end to end: a tiny Llama on tiny conversations through the trainer."""

import json

from ftjax import train
from ftjax.config import base_config
from tiny_assets import make_conversations, make_tiny_llama, write_jsonl


def test_sft_trains_reports_and_samples(tmp_path):
  model = make_tiny_llama(tmp_path / "llama")
  c = base_config()
  c.model.checkpoint = str(model)
  c.model.task = "causal_lm"
  c.data.name = "chat_files"
  c.data.files.train = str(write_jsonl(tmp_path / "train.jsonl", make_conversations(48, 0)))
  c.data.files.validation = str(write_jsonl(tmp_path / "dev.jsonl", make_conversations(8, 1)))
  c.data.test_split = ""
  c.data.packing = True
  c.data.max_length = 32
  c.data.bucket_boundaries = (16, 32)
  c.train.steps = 30
  c.train.batch_size = 4
  c.train.log_every_steps = 10
  c.optimizer.lr = 1e-2
  c.optimizer.warmup_steps = 3
  c.eval.every_steps = 15
  c.eval.batch_size = 8
  c.eval.metric = "loss"
  c.eval.mode = "min"
  c.eval.num_samples = 2
  c.eval.sample_max_new_tokens = 4
  c.checkpoint.every_steps = 15
  summary = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert summary["final_eval"]["loss"] < summary["initial_eval"]["loss"] * 0.5, summary
  assert summary["final_eval"]["token_accuracy"] > summary["initial_eval"]["token_accuracy"]
  assert {"perplexity", "num_tokens"} <= set(summary["final_eval"])
  samples = [json.loads(l) for l in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
  assert [s["checkpoint"] for s in samples] == ["base", "base", "final", "final"]
  assert all(s["prompt"].endswith("<|im_start|>assistant\n") for s in samples)
  assert (tmp_path / "run" / "data_report.json").exists()
