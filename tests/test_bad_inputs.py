"""A table of bad inputs: each exits 2 with one `error:` line naming the culprit, writing nothing.

The runs go through the same path as `python -m ftjax.main` (config loading + overrides,
`train_and_evaluate`, `exit_on_user_error`), in-process to keep the table fast; tests/test_main.py
covers the subprocess entry point itself.
"""

import hashlib
import json
import pathlib
import shutil

import pytest

from ftjax import config as config_lib
from ftjax import train
from ftjax.errors import exit_on_user_error
from test_train import tiny_config
from tiny_assets import make_sentiment_rows, write_jsonl


def tree_digest(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  for f in sorted(p for p in path.rglob("*") if p.is_file()):
    h.update(str(f.relative_to(path)).encode())
    h.update(f.read_bytes())
  return h.hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_bert_dir, tiny_sentiment_files):
  """A finished tiny run (an existing checkpoint to protect) plus broken files of every kind."""
  root = tmp_path_factory.mktemp("bad_inputs")
  workdir = root / "run"
  train.train_and_evaluate(tiny_config(tiny_bert_dir, tiny_sentiment_files), str(workdir))
  good_rows = make_sentiment_rows(8, seed=3)

  def data(name, text):
    path = root / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path

  lines = [json.dumps(r) for r in good_rows]
  files = {
      "json_error": data("json_error.jsonl", "\n".join(lines[:2] + ['{"text": "good", "label": '] + lines[2:]) + "\n"),
      "non_utf8": data("non_utf8.jsonl", ("\n".join(lines[:3]) + "\n").encode() + b'{"text": "bad \xff\xfe", "label": "neg"}\n'),
      "empty": data("empty.jsonl", ""),
      "missing_field": data("missing_field.jsonl", "\n".join(lines[:4] + ['{"text": "fine movie"}']) + "\n"),
      "empty_text": data("empty_text.jsonl", "\n".join(lines[:1] + ['{"text": "", "label": "pos"}']) + "\n"),
      "unknown_label": data("unknown_label.jsonl", "\n".join(lines[:2] + ['{"text": "good film", "label": "meh"}']) + "\n"),
  }

  def model_variant(name, edit):
    path = root / name
    shutil.copytree(tiny_bert_dir, path)
    edit(path)
    return path

  def truncate(path):
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])

  def wrong_shape(path):
    from safetensors.numpy import load_file, save_file
    tensors = load_file(path / "model.safetensors")
    tensors["encoder.layer.0.attention.self.query.weight"] = tensors["encoder.layer.0.attention.self.query.weight"][:, :16]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})

  def edit_config(**changes):
    def edit(path):
      cfg = json.loads((path / "config.json").read_text())
      cfg.update(changes)
      (path / "config.json").write_text(json.dumps(cfg))
    return edit

  def only_pickle(path):
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"not loaded: pickles are never unpickled")

  models = {
      "truncated": model_variant("m_truncated", truncate),
      "wrong_shape": model_variant("m_wrong_shape", wrong_shape),
      "unknown_type": model_variant("m_unknown_type", edit_config(model_type="xyzformer")),
      "small_vocab": model_variant("m_small_vocab", edit_config(vocab_size=10)),
      "bad_json": model_variant("m_bad_json", lambda p: (p / "config.json").write_text("{not json")),
      "no_tokenizer": model_variant("m_no_tokenizer", lambda p: (p / "tokenizer.json").unlink()),
      "only_pickle": model_variant("m_only_pickle", only_pickle),
  }
  not_a_dir = data("a_file", "x")
  return {"root": root, "workdir": workdir, "files": files, "models": models, "not_a_dir": not_a_dir,
          "model": tiny_bert_dir, "data": tiny_sentiment_files}


def base_overrides(w):
  return [f"model.checkpoint={w['model']}", f"data.files.train={w['data']['train']}",
          f"data.files.validation={w['data']['validation']}", "data.max_length=16",
          "data.bucket_boundaries=(8,16)", "train.steps=6", "train.batch_size=8", "eval.every_steps=3",
          "eval.batch_size=16", "checkpoint.every_steps=3"]


# (case id, overrides on top of the valid tiny run, text the error line must contain)
CASES = [
    ("misspelled_key", lambda w: ["optimizer.lrr=1e-3"], "did you mean 'optimizer.lr'"),
    ("misspelled_section", lambda w: ["optimiser.lr=1e-3"], "'optimiser.lr'"),
    ("wrong_type_int", lambda w: ["train.steps=ten"], "train.steps"),
    ("wrong_type_bool", lambda w: ["eval.at_start=perhaps"], "eval.at_start"),
    ("negative_lr", lambda w: ["optimizer.lr=-0.1"], "optimizer.lr"),
    ("zero_batch", lambda w: ["train.batch_size=0"], "train.batch_size"),
    ("unknown_method", lambda w: ["method.name=superlora"], "method.name"),
    ("unknown_task", lambda w: ["model.task=translation"], "model.task"),
    ("bad_dtype", lambda w: ["model.dtype=float8"], "model.dtype"),
    ("bad_mesh_rank", lambda w: ["mesh.shape=(1,1)"], "mesh.shape"),
    ("mesh_too_big", lambda w: ["mesh.shape=(3,1,1)"], "mesh.shape"),
    ("bad_freeze_regex", lambda w: ["method.freeze=(unclosed"], "method.freeze"),
    ("bad_on_nan", lambda w: ["train.on_nan=ignore"], "train.on_nan"),
    ("unknown_eval_metric", lambda w: ["eval.metric=f7"], "f7"),
    ("mode_against_metric", lambda w: ["eval.metric=ece"], "eval.mode"),
    ("removed_key", lambda w: ["data.num_workers=2"], "'data.num_workers' in the command line was removed"),
    ("unknown_optimizer", lambda w: ["optimizer.name=adam"], "optimizer.name"),
    ("lora_plus_without_lora", lambda w: ["optimizer.lora_plus_ratio=16"], "optimizer.lora_plus_ratio"),
    ("unknown_dataset", lambda w: ["data.name=imagenet"], "imagenet"),
    ("plain_text_for_a_classifier", lambda w: ["data.name=text_files"], "set model.task=causal_lm"),
    ("missing_data_file", lambda w: [f"data.files.train={w['root']}/nope.jsonl"], "nope.jsonl"),
    ("empty_dataset", lambda w: [f"data.files.train={w['files']['empty']}"], "empty.jsonl"),
    ("json_syntax_error", lambda w: [f"data.files.train={w['files']['json_error']}"], "json_error.jsonl:3"),
    ("non_utf8_line", lambda w: [f"data.files.train={w['files']['non_utf8']}"], "non_utf8.jsonl:4"),
    ("missing_label_field", lambda w: [f"data.files.train={w['files']['missing_field']}"], "missing_field.jsonl:5"),
    ("empty_text", lambda w: [f"data.files.train={w['files']['empty_text']}"], "empty_text.jsonl:2"),
    ("label_outside_classes", lambda w: [f"data.files.train={w['files']['unknown_label']}",
                                         "data.label_names=('neg','pos')"], "unknown_label.jsonl:3"),
    ("missing_model_dir", lambda w: [f"model.checkpoint={w['root']}/no_model"], "no_model"),
    ("unknown_source_scheme", lambda w: ["model.checkpoint=s3://bucket/model"], "s3"),
    ("truncated_safetensors", lambda w: [f"model.checkpoint={w['models']['truncated']}"], "model.safetensors"),
    ("wrong_tensor_shape", lambda w: [f"model.checkpoint={w['models']['wrong_shape']}"],
     "encoder.layer.0.attention.self.query.weight"),
    ("unknown_model_type", lambda w: [f"model.checkpoint={w['models']['unknown_type']}"], "xyzformer"),
    ("tokenizer_vocab_mismatch", lambda w: [f"model.checkpoint={w['models']['small_vocab']}"], "vocab_size 10"),
    ("config_json_syntax", lambda w: [f"model.checkpoint={w['models']['bad_json']}"], "config.json"),
    ("missing_tokenizer", lambda w: [f"model.checkpoint={w['models']['no_tokenizer']}"], "tokenizer"),
    ("pickle_weights_refused", lambda w: [f"model.checkpoint={w['models']['only_pickle']}"], "model.safetensors"),
]


def run_cli(overrides, workdir, capsys):
  with pytest.raises(SystemExit) as exit_info:
    with exit_on_user_error():
      cfg = config_lib.load_config("configs/classify_files.py", overrides)
      train.train_and_evaluate(cfg, str(workdir))
  err = capsys.readouterr().err
  return exit_info.value.code, [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("case, make_overrides, culprit", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_naming_the_culprit(world, capsys, case, make_overrides, culprit):
  before = tree_digest(world["workdir"])
  code, errors = run_cli(base_overrides(world) + make_overrides(world), world["workdir"], capsys)
  assert code == 2, case
  assert len(errors) == 1 and culprit in errors[0], errors
  assert tree_digest(world["workdir"]) == before, "the existing run's files changed"


@pytest.mark.parametrize("make_workdir", [
    lambda w: w["not_a_dir"] / "sub",  # a path under a regular file
    lambda w: w["not_a_dir"],          # a regular file
], ids=["under_a_file", "is_a_file"])
def test_unwritable_workdir(world, capsys, make_workdir):
  code, errors = run_cli(base_overrides(world), make_workdir(world), capsys)
  assert code == 2 and len(errors) == 1 and "workdir" in errors[0], errors
