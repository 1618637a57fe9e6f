"""run_report.write from workdir files alone: tables, the base-vs-tuned row merge, legible PNGs."""

import json

from ftjax.reports import run_report


def eval_result(split, checkpoint, step, accuracy):
  return {"split": split, "checkpoint": checkpoint, "step": step, "accuracy": accuracy,
          "macro_f1": accuracy - 0.01, "loss": 1 - accuracy, "ece": 0.05, "num_examples": 10,
          "confusion": [[4, 1, 0], [1, 2, 0], [0, 0, 2]], "label_names": ["neg", "neu", "pos"],
          "per_class": {"precision": [0.8, 0.67, 1.0], "recall": [0.8, 0.67, 1.0],
                        "f1": [0.8, 0.67, 1.0], "support": [5, 3, 2]},
          "calibration": {"bin_upper_edges": [0.5, 1.0], "count": [4, 6],
                          "confidence": [0.45, 0.8], "accuracy": [0.5, 0.9]},
          "slices": {"length:1-8": {"num_examples": 6, "accuracy": 0.8, "macro_f1": 0.7, "loss": 0.3,
                                    "ece": 0.1},
                     "length:>8": {"num_examples": 4, "accuracy": 0.75, "macro_f1": 0.7,
                                   "loss": 0.4, "ece": 0.1}}}


def make_workdir(path, *, with_evals=True):
  records = [{"step": 0, "split": "eval", "loss": 1.1, "accuracy": 0.3, "num_examples": 10}]
  for step in range(2, 21, 2):
    records.append({"step": step, "split": "train", "loss": 1.1 - step / 30, "accuracy": 0.3 + step / 40,
                    "lr": 1e-3, "grad_norm": 1.0, "examples_per_sec": 5.0, "tokens_per_sec": 50.0})
    if step % 10 == 0:
      records.append({"step": step, "split": "eval", "loss": 1.0 - step / 40, "accuracy": 0.5 + step / 100,
                      "macro_f1": 0.45 + step / 100, "ece": 0.1, "num_examples": 10})
  (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  evals = [r for r in records if r["split"] == "eval"]
  summary = {"steps": 20, "method": "lora", "params": {"trainable": 10, "total": 1000},
             "initial_eval": evals[0], "final_eval": evals[-1], "best_eval": evals[-1], "best_step": 20,
             "best_metric": "accuracy", "test": {"accuracy": 0.66, "loss": 0.5, "num_examples": 12},
             "examples_per_sec": 5.0, "wall_time_sec": 90}
  (path / "summary.json").write_text(json.dumps(summary))
  (path / "config.json").write_text(json.dumps({"data": {"eval_split": "validation", "test_split": "test"}}))
  if with_evals:
    for result in (eval_result("validation", "best", 20, 0.7), eval_result("validation", "base", 0, 0.3),
                   eval_result("test", "best", 20, 0.66)):
      (path / f"eval_{result['split']}_{result['checkpoint']}.json").write_text(json.dumps(result))
  (path / "data_report.md").write_text("## Data\n\nsome data facts\n")
  return path


def is_png(path):
  return path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_report_from_workdir_files(tmp_path):
  workdir = make_workdir(tmp_path)
  path = run_report.write(workdir)
  text = path.read_text()
  assert path == workdir / "report.md"
  assert "| base (step 0) | validation | 0.3000 | 0.2900 |" in text  # completed by eval_validation_base.json
  assert "| best (step 20) | validation | 0.7000 | 0.6900 |" in text
  assert "| test (step 20) | test | 0.6600 |" in text
  assert "from 0.3000 (base) to 0.7000 (step 20), +0.4000" in text
  assert "| neu | 0.6700 | 0.6700 | 0.6700 | 3 |" in text
  assert "| length:>8 | 4 | 0.7500 |" in text
  assert "some data facts" in text
  for name in ("report_loss.png", "report_metrics.png", "report_confusion_validation.png",
               "report_calibration_validation.png", "report_confusion_test.png"):
    assert is_png(workdir / name), name
    assert f"]({name})" in text


def test_report_without_eval_files_or_summary(tmp_path):
  workdir = make_workdir(tmp_path, with_evals=False)
  text = run_report.write(workdir).read_text()
  assert "| final (step 20) | validation | 0.7000 |" in text and "python -m ftjax.evaluate" in text
  assert is_png(workdir / "report_loss.png") and not (workdir / "report_confusion_validation.png").exists()
  (workdir / "summary.json").unlink()
  text = run_report.write(workdir).read_text()
  assert "has not finished" in text and is_png(workdir / "report_metrics.png")


def test_final_and_best_at_the_same_step_each_keep_their_own_eval_file():
  # The size-sweep/methods runs end on their best step: both eval JSONs match step 400, and
  # the table must still show one row per checkpoint, none twice.
  evals = [{"file": f"eval_validation_{name}.json", "split": "validation", "step": step,
            "checkpoint": name, "accuracy": acc}
           for name, step, acc in (("base", 0, 0.4), ("best", 400, 0.8), ("final", 400, 0.8))]
  summary = {"eval_split": "validation", "initial_eval": {"step": 0, "accuracy": 0.4},
             "final_eval": {"step": 400, "accuracy": 0.8},
             "best_eval": {"step": 400, "accuracy": 0.8}}
  rows = run_report.comparison_rows(summary, evals)
  assert [what for what, _, _ in rows] == ["base (step 0)", "final (step 400)", "best (step 400)"]
  assert [m["file"] for _, _, m in rows] == [
      "eval_validation_base.json", "eval_validation_final.json", "eval_validation_best.json"]
