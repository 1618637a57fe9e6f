"""Tests for the generic local-files classification builder."""

import re

import pytest

from ftjax.data import builders
from ftjax.data import classification_files
from ftjax.errors import UserError

ROWS = [
    {"text": "good movie", "label": "pos"},
    {"text": "bad film", "label": "neg"},
    {"text": "great fun", "label": "pos"},
]


def _split(builder, split):
  source = builder.as_data_source(split=split)
  return sorted((r["text"].decode(), int(r["label"])) for r in (source[i] for i in
                                                                   range(len(source))))


def test_jsonl_and_csv_splits(tmp_path, make_data_cfg, write_jsonl):
  train = write_jsonl(tmp_path / "train.jsonl", ROWS)
  valid = tmp_path / "valid.csv"
  valid.write_text('label,text\nneg,"dull, very dull"\npos,fun\n', encoding="utf-8")
  builder = builders.prepare(make_data_cfg(files={"train": train, "validation": str(valid)}))
  assert builder.info.features["label"].names == ["neg", "pos"]  # Sorted from train.
  assert builder.info.splits["train"].num_examples == 3
  assert _split(builder, "train") == [("bad film", 0), ("good movie", 1), ("great fun", 1)]
  assert _split(builder, "validation") == [("dull, very dull", 0), ("fun", 1)]


def test_integer_labels_and_given_names(tmp_path, make_data_cfg, write_jsonl):
  train = write_jsonl(tmp_path / "t.jsonl", [{"s": "a", "y": 1}, {"s": "b", "y": 0}])
  builder = builders.prepare(make_data_cfg(files={"train": train}, text_field="s",
                                           label_field="y", label_names=("neg", "pos")))
  assert builder.info.features["label"].names == ["neg", "pos"]
  assert _split(builder, "train") == [("a", 1), ("b", 0)]
  collected = builders.prepare(make_data_cfg(
      files={"train": train}, text_field="s", label_field="y"))
  assert collected.info.features["label"].names == ["0", "1"]



def test_integer_label_seen_only_in_validation_keeps_its_index(tmp_path, make_data_cfg,
                                                               write_jsonl):
  # Integer labels are class indices: class 1 occurs only in validation, yet 2 must stay class 2
  # (a vocabulary of the training labels alone would map 2 -> 1 and collide with the real 1).
  train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 0}, {"text": "c", "label": 2}])
  valid = write_jsonl(tmp_path / "valid.jsonl", [{"text": "b", "label": 1}, {"text": "d", "label": 2}])
  builder = builders.prepare(make_data_cfg(files={"train": train, "validation": valid}))
  assert builder.info.features["label"].names == ["0", "1", "2"]
  assert _split(builder, "train") == [("a", 0), ("c", 2)]
  assert _split(builder, "validation") == [("b", 1), ("d", 2)]
  negative = write_jsonl(tmp_path / "neg.jsonl", [{"text": "e", "label": -1}])
  with pytest.raises(UserError, match=r"integer label -1 .* is negative"):
    builders.prepare(make_data_cfg(files={"train": train, "validation": negative}))

def test_sentence_pairs(tmp_path, make_data_cfg, write_jsonl):
  train = write_jsonl(tmp_path / "p.jsonl", [
      {"premise": "a b", "hypothesis": "c", "label": "yes"},
      {"premise": "d", "hypothesis": "e f", "label": "no"}])
  builder = builders.prepare(make_data_cfg(
      files={"train": train}, text_field="premise", text_pair_field="hypothesis"))
  source = builder.as_data_source(split="train")
  pairs = sorted((r["text"].decode(), r["text_pair"].decode()) for r in
                 (source[i] for i in range(len(source))))
  assert pairs == [("a b", "c"), ("d", "e f")]


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", "label": \n',
     r"bad\.jsonl:2: bad JSON"),
    ("miss.jsonl", b'{"text": "a", "label": "x"}\n\n{"text": "b"}\n',
     r"miss\.jsonl:3: missing field 'label'"),
    ("empty.jsonl", b'{"text": "a", "label": "x"}\n{"text": "  ", "label": "x"}\n',
     r"empty\.jsonl:2: empty text in field 'text'"),
    ("latin.jsonl", b'{"text": "a", "label": "x"}\n{"text": "caf\xe9", "label": "x"}\n',
     r"latin\.jsonl:2: not valid UTF-8"),
    ("latin.csv", b"text,label\na,x\n\"two\nlines\",x\ncaf\xe9,x\n",
     r"latin\.csv:5: not valid UTF-8"),
    ("miss.csv", b"text,label\na,x\n\"two\nlines\",x\nb\n",
     r"miss\.csv:5: missing field 'label'"),
])
def test_bad_rows_name_file_and_line(tmp_path, make_data_cfg, name, content, message):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(UserError, match=message):
    builders.prepare(make_data_cfg(files={"train": str(path)}, label_names=("x",)))


def test_unknown_label_in_validation(tmp_path, make_data_cfg, write_jsonl):
  train = write_jsonl(tmp_path / "train.jsonl", ROWS)
  valid = write_jsonl(tmp_path / "valid.jsonl", [{"text": "a", "label": "pos"},
                                                 {"text": "b", "label": "meh"}])
  with pytest.raises(UserError, match=r"valid\.jsonl:2: label 'meh' is not one of"):
    builders.prepare(make_data_cfg(files={"train": train, "validation": valid}))


def test_missing_file_and_empty_split(tmp_path, make_data_cfg, write_jsonl):
  train = write_jsonl(tmp_path / "train.jsonl", ROWS)
  missing = tmp_path / "nope.jsonl"
  with pytest.raises(UserError, match=re.escape(str(missing))):
    builders.prepare(make_data_cfg(files={"train": train, "validation": str(missing)}))
  with pytest.raises(UserError, match="data.files is empty"):
    builders.prepare(make_data_cfg(files={}))
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(UserError, match=r"empty\.jsonl: no examples"):
    builders.prepare(make_data_cfg(files={"train": train, "validation": str(empty)}))
  with pytest.raises(UserError, match=r"empty\.jsonl: no examples"):
    builders.prepare(make_data_cfg(files={"train": str(empty)}))


def test_editing_a_file_rebuilds(tmp_path, make_data_cfg, write_jsonl):
  train = write_jsonl(tmp_path / "train.jsonl", ROWS)
  cfg = make_data_cfg(files={"train": train})
  first = builders.prepare(cfg)
  again = builders.prepare(cfg)
  assert again.builder_config.name == first.builder_config.name  # Reused.
  write_jsonl(tmp_path / "train.jsonl", ROWS + [{"text": "dull plot", "label": "neg"}])
  edited = builders.prepare(cfg)
  assert edited.builder_config.name != first.builder_config.name
  assert edited.info.splits["train"].num_examples == 4
  other_names = builders.prepare(
      make_data_cfg(files={"train": train}, label_names=("neg", "pos", "x")))
  assert other_names.builder_config.name != edited.builder_config.name


def test_failed_build_is_not_served(tmp_path, make_data_cfg, write_jsonl, monkeypatch):
  train = write_jsonl(tmp_path / "train.jsonl", ROWS)
  cfg = make_data_cfg(files={"train": train})
  original = classification_files.ClassificationFiles._generate_examples

  def crash(self, path):
    yield from list(original(self, path))[:1]
    raise RuntimeError("disk full")

  monkeypatch.setattr(classification_files.ClassificationFiles, "_generate_examples", crash)
  with pytest.raises(RuntimeError, match="disk full"):
    builders.prepare(cfg)
  monkeypatch.undo()
  builder = builders.prepare(cfg)
  assert builder.info.splits["train"].num_examples == 3


def test_concurrent_runs_prepare_the_same_data_once(tmp_path, make_data_cfg, write_jsonl):
  # Two experiments (or the 1- and 8-device workers of a test) starting together on the same
  # files: without a lock the slower TFDS build fails renaming onto the faster one's result.
  import json, subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  train = write_jsonl(tmp_path / "train.jsonl", ROWS * 50)
  cfg = make_data_cfg(files={"train": train})
  script = ("import json, sys, ml_collections\n"
            "from ftjax.data import builders\n"
            "b = builders.prepare(ml_collections.ConfigDict(json.loads(sys.argv[1])))\n"
            "print('EXAMPLES', b.info.splits['train'].num_examples)\n")
  procs = [subprocess.Popen([sys.executable, "-c", script, json.dumps(cfg.to_dict())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(3)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-2000:]
    assert "EXAMPLES 150" in out, out


def test_a_builder_made_before_another_process_finished_is_not_returned(
    tmp_path, make_data_cfg, write_jsonl, monkeypatch):
  # The race behind a flaky concurrent run: this process makes its builder while the dataset is
  # not on disk yet (so the builder has no split info), another process finishes the build, and
  # the check then finds the dataset prepared. `prepare` must not hand out the empty builder.
  cfg = make_data_cfg(files={"train": write_jsonl(tmp_path / "train.jsonl", ROWS * 2)})
  stale = builders.get_builder(cfg)
  builders.get_builder(cfg).download_and_prepare(file_format="array_record")  # "the other process"
  assert stale.is_prepared() and not stale.info.splits
  original, handed = builders.get_builder, iter([stale])
  monkeypatch.setattr(builders, "get_builder", lambda c: next(handed, None) or original(c))
  assert builders.prepare(cfg).info.splits["train"].num_examples == 6
