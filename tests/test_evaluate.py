"""ftjax.evaluate on a tiny trained workdir: library, slices, and the CLI's files and errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ftjax import eval_slices, evaluate, train
from ftjax.config import base_config
from ftjax.errors import UserError
from tiny_assets import files_config, make_sentiment_rows, write_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def with_genre(rows):
  return [{**r, "genre": ("drama", "comedy", "horror")[i % 3]} for i, r in enumerate(rows)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("genre_data")
  return {"train": write_jsonl(root / "train.jsonl", with_genre(make_sentiment_rows(64, seed=0))),
          "validation": write_jsonl(root / "dev.jsonl", with_genre(make_sentiment_rows(40, seed=1)))}


def tiny_config(model_dir, files, cache):
  c = files_config(model_dir, files)
  c.data.max_length = 16
  c.data.bucket_boundaries = (8, 16)
  c.data.data_dir = str(cache)
  c.train.steps = 4
  c.train.batch_size = 8
  c.train.log_every_steps = 2
  c.eval.every_steps = 2
  c.eval.batch_size = 16  # 40 examples: 3 batches, the last one padded
  c.checkpoint.every_steps = 2
  c.optimizer.lr = 3e-3
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir, files):
  root = tmp_path_factory.mktemp("evaluate")
  cfg = tiny_config(tiny_bert_dir, files, root / "tfds")
  summary = train.train_and_evaluate(cfg, str(root / "run"))
  return cfg, root / "run", summary


def sliced(cfg, *fields, batch_size=None):
  cfg = cfg.copy_and_resolve_references()
  cfg.eval.slice_by = fields
  if batch_size:
    cfg.eval.batch_size = batch_size
  return cfg


def test_latest_and_base_reproduce_the_trainers_evals(trained):
  cfg, workdir, summary = trained
  path, latest = evaluate.run(cfg, workdir, "latest")
  assert path == workdir / "eval_validation_latest.json"
  saved = json.loads(path.read_text())
  assert saved["step"] == 4 and saved["checkpoint"] == "latest"
  np.testing.assert_allclose(saved["accuracy"], summary["final_eval"]["accuracy"], rtol=1e-6)
  np.testing.assert_allclose(saved["loss"], summary["final_eval"]["loss"], rtol=1e-5)
  assert {"macro_f1", "ece", "confusion", "per_class", "calibration"} <= set(saved)
  assert saved["per_class"]["label"] == saved["label_names"] == ["neg", "pos"]
  assert np.sum(saved["confusion"]) == 40

  _, base = evaluate.run(cfg, workdir, "base")
  np.testing.assert_allclose(base["accuracy"], summary["initial_eval"]["accuracy"], rtol=1e-6)
  np.testing.assert_allclose(base["loss"], summary["initial_eval"]["loss"], rtol=1e-5)
  assert (workdir / "eval_validation_base.json").exists()
  assert latest["step"] == 4 and base["step"] == 0


def test_slices_partition_the_split_and_do_not_depend_on_batching(trained):
  cfg, workdir, _ = trained
  _, small = evaluate.run(sliced(cfg, "length", "genre"), workdir, 2)
  _, whole = evaluate.run(sliced(cfg, "length", "genre", batch_size=64), workdir, 2)
  names = list(small["slices"])
  assert [n for n in names if n.startswith("genre=")] == ["genre=comedy", "genre=drama", "genre=horror"]
  assert [small["slices"][n]["num_examples"] for n in names if n.startswith("genre=")] == [13, 14, 13]
  for prefix in ("length:", "genre="):
    parts = [small["slices"][n] for n in names if n.startswith(prefix)]
    assert sum(p["num_examples"] for p in parts) == 40
    np.testing.assert_array_equal(sum(np.asarray(p["confusion"]) for p in parts), small["confusion"])
    np.testing.assert_allclose(sum(p["loss"] * p["num_examples"] for p in parts) / 40, small["loss"],
                               rtol=1e-5)
  for name in names:
    for k in ("accuracy", "loss", "macro_f1", "ece"):
      np.testing.assert_allclose(small["slices"][name][k], whole["slices"][name][k], rtol=1e-5,
                                 atol=1e-6, err_msg=f"{name} {k}")


def test_genre_slice_equals_evaluating_only_that_genre(trained, tmp_path, files):
  cfg, workdir, _ = trained
  _, result = evaluate.run(sliced(cfg, "genre"), workdir, 2)
  rows = [json.loads(line) for line in open(files["validation"])]
  only = write_jsonl(tmp_path / "horror.jsonl", [r for r in rows if r["genre"] == "horror"])
  cfg_only = cfg.copy_and_resolve_references()
  cfg_only.data.files.validation = str(only)
  _, horror = evaluate.run(cfg_only, workdir, 2)
  for k in ("accuracy", "loss", "macro_f1", "ece", "num_examples", "confusion"):
    np.testing.assert_allclose(result["slices"]["genre=horror"][k], horror[k], rtol=1e-5, atol=1e-6)


def test_length_buckets():
  lengths = np.array([3, 5, 5, 7, 9, 12, 12, 20])
  bounds = eval_slices.quantile_boundaries(lengths, 4)
  matrix, names = eval_slices.length_slices(lengths, bounds)
  assert matrix.sum(1).tolist() == [1] * 8 and len(names) == len(bounds) + 1
  matrix, names = eval_slices.length_slices(lengths, (5, 10))
  assert names == ["length:1-5", "length:6-10", "length:>10"]
  assert matrix.sum(0).tolist() == [3, 2, 3]


def test_slicing_errors_name_the_config_key(trained):
  cfg, workdir, _ = trained
  with pytest.raises(UserError, match="eval.slice_by.*'studio'"):
    evaluate.run(sliced(cfg, "studio"), workdir, "latest")
  rt = base_config().data
  with pytest.raises(UserError, match="eval.slice_by.*data.name='files'"):
    eval_slices.check_fields(rt, ("length", "movie"))


def test_eval_batches_carry_each_records_slice_row(trained, tiny_bert_dir):
  cfg, _, _ = trained
  from ftjax.data.classification import load_classification_data
  from ftjax.data.tokenization import load_tokenizer
  dataset = load_classification_data(cfg.data, load_tokenizer(tiny_bert_dir), seed=0)
  dataset.eval_slices = lambda split: np.eye(3, dtype=np.float32)[
      np.array([r["label"] for r in dataset.rows(split)]) + 1]  # slice = label + 1
  for shard in range(3):
    for batch in dataset.eval_batches("validation", 8, shard_index=shard, shard_count=3):
      real = batch["weights"] > 0
      assert batch["slices"].shape == (8, 3)
      np.testing.assert_array_equal(batch["slices"][real].argmax(1), batch["labels"][real] + 1)
      assert not batch["slices"][~real].any()


def run_cli(*args, devices=1):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.run([sys.executable, "-m", "ftjax.evaluate", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def cli_args(cfg, workdir):
  return ["--config=configs/classify_files.py", f"--workdir={workdir}",
          f"--config.model.checkpoint={cfg.model.checkpoint}",
          f"--config.data.files.train={cfg.data.files.train}",
          f"--config.data.files.validation={cfg.data.files.validation}",
          f"--config.data.data_dir={cfg.data.data_dir}",
          "--config.data.max_length=16", "--config.data.bucket_boundaries=(8,16)",
          "--config.eval.batch_size=16"]


def test_cli_writes_the_file_and_reports_user_errors(trained):
  cfg, workdir, _ = trained
  # On 4 devices (data parallel), the CLI reproduces the library's single-device numbers.
  _, expected = evaluate.run(sliced(cfg, "genre"), workdir, 2)
  result = run_cli(*cli_args(cfg, workdir), "--checkpoint=2", "--config.eval.slice_by=genre",
                   "--config.mesh.shape=(4,1,1)", devices=4)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "validation @ 2 (step 2): accuracy" in result.stdout
  assert "genre=drama" in result.stdout
  saved = json.loads((workdir / "eval_validation_2.json").read_text())
  assert saved["step"] == 2 and set(saved["slices"]) == {"genre=comedy", "genre=drama", "genre=horror"}
  for k in ("accuracy", "loss", "macro_f1", "ece", "confusion"):
    np.testing.assert_allclose(saved[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=k)
  for name, metrics in expected["slices"].items():
    np.testing.assert_allclose(saved["slices"][name]["loss"], metrics["loss"], rtol=1e-5)

  for extra, culprit in ((["--checkpoint=99"], "checkpoint '99'"), (["--split=nope"], "split 'nope'"),
                         (["--checkpoint=final"], "--checkpoint")):
    result = run_cli(*cli_args(cfg, workdir), *extra)
    assert result.returncode == 2, (extra, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and culprit in errors[0], result.stderr[-2000:]
