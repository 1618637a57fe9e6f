"""Hugging Face `datasets` in (`data.name=hf_datasets`): saved datasets and local parquet/JSON
train exactly like the same rows in ftjax's own JSONL files; bad columns are one-line errors."""

import json

import datasets
import ml_collections
import pytest

from ftjax import train
from ftjax.data import builders, chat, hf_datasets, preference
from ftjax.data import pairs as pairs_lib
from ftjax.errors import UserError
from test_train import tiny_config
from tiny_assets import make_conversations, make_preference_rows, make_tiny_llama


def _rows(path):
  return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_a_saved_dataset_trains_exactly_like_its_rows_in_jsonl(tmp_path, tiny_bert_dir,
                                                               tiny_sentiment_files):
  names = ["neg", "pos"]  # sorted, as ftjax orders string labels from a file
  features = datasets.Features({"sentence": datasets.Value("string"),
                                "label": datasets.ClassLabel(names=names)})
  saved = datasets.DatasetDict({
      split: datasets.Dataset.from_list(
          [{"sentence": r["text"], "label": names.index(r["label"])} for r in _rows(path)],
          features=features)
      for split, path in tiny_sentiment_files.items()})
  saved.save_to_disk(str(tmp_path / "saved"))
  reference = train.train_and_evaluate(tiny_config(tiny_bert_dir, tiny_sentiment_files),
                                       str(tmp_path / "jsonl"))
  c = tiny_config(tiny_bert_dir, tiny_sentiment_files)
  c.data.name = "hf_datasets"
  c.data.files = ml_collections.ConfigDict()
  c.data.hf_dataset = str(tmp_path / "saved")
  c.data.hf_columns = ml_collections.ConfigDict({"sentence": "text"})
  summary = train.train_and_evaluate(c, str(tmp_path / "hf"))
  assert summary["final_eval"] == reference["final_eval"]  # same rows, order, labels, batches
  report = json.loads((tmp_path / "hf" / "data_report.json").read_text())
  assert report["label_names"] == names  # from the ClassLabel feature


def test_parquet_chat_and_json_preference_rows_feed_the_chat_and_pair_pipelines(tmp_path):
  tokenizer_dir = make_tiny_llama(tmp_path / "llama")
  from ftjax.data import tokenization
  tokenizer = tokenization.load_tokenizer(tokenizer_dir)
  chats = make_conversations(12, 0)
  datasets.Dataset.from_list(chats).to_parquet(str(tmp_path / "chat.parquet"))
  cfg = ml_collections.ConfigDict(dict(
      name="hf_datasets", hf_dataset="parquet", hf_config="", hf_format="",
      hf_columns=ml_collections.ConfigDict(), files=ml_collections.ConfigDict(
          {"train": str(tmp_path / "chat.parquet")}), messages_field="messages",
      chat_template="", packing=False, max_length=32, padding="bucket",
      bucket_boundaries=(16, 32), train_split="train", data_dir=str(tmp_path / "tfds"),
      max_train_examples=0, label_field="label", text_field="text"))
  data = chat.load_chat_data(cfg, tokenizer, seed=0)
  key = lambda messages: json.dumps(messages, sort_keys=True)  # TFDS stores rows by key hash
  assert sorted(map(key, data.conversations("train"))) == sorted(key(c["messages"]) for c in chats)

  pairs = make_preference_rows(10, 0)
  (tmp_path / "pairs.jsonl").write_text("".join(
      json.dumps({"question": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}) + "\n"
      for p in pairs))
  cfg.update(dict(hf_dataset="json", hf_columns=ml_collections.ConfigDict({"question": "prompt"})))
  cfg.files = ml_collections.ConfigDict({"train": str(tmp_path / "pairs.jsonl")})
  cfg.truncate_prompt = False
  data = preference.load_preference_data(cfg, tokenizer, seed=0)
  got = sorted(p["prompt"][-1]["content"] for p in data.pairs("train"))  # messages, user last
  assert got == sorted(p["prompt"] for p in pairs)

  # Text pairs (anchor / positive columns) feed the embedding objective's pair data.
  datasets.Dataset.from_list([{"query": p["prompt"], "positive": p["chosen"], "group": i % 3}
                              for i, p in enumerate(pairs)]).to_json(str(tmp_path / "text.jsonl"))
  cfg.hf_columns = ml_collections.ConfigDict({"query": "anchor"})
  cfg.files = ml_collections.ConfigDict({"train": str(tmp_path / "text.jsonl")})
  data = pairs_lib.load_pair_data(cfg, tokenizer, seed=0)
  assert sorted((r["anchor"], r["positive"]) for r in data.rows("train")) == sorted(
      (p["prompt"], p["chosen"]) for p in pairs)
  assert sorted(set(r["group"] for r in data.rows("train"))) == ["0", "1", "2"]


def test_bad_columns_and_sources_are_one_line_errors(tmp_path):
  datasets.Dataset.from_dict({"sentence": ["a"], "stars": [1]}).save_to_disk(str(tmp_path / "d"))
  cfg = ml_collections.ConfigDict(dict(
      name="hf_datasets", hf_dataset=str(tmp_path / "d"), hf_config="", hf_format="",
      hf_columns=ml_collections.ConfigDict({"review": "text"}), files=ml_collections.ConfigDict(),
      data_dir=str(tmp_path / "tfds"), label_field="label", text_field="text",
      text_pair_field="", messages_field="messages", label_names=(), train_split="train"))
  with pytest.raises(UserError, match=r"no column 'review' \(its columns: \['sentence', 'stars'\]"):
    builders.get_builder(cfg)
  cfg.hf_columns = ml_collections.ConfigDict({"sentence": "text"})
  with pytest.raises(UserError, match="cannot tell what the columns"):
    builders.get_builder(cfg)
  cfg.hf_format = "classification"
  with pytest.raises(UserError, match=r"no column 'label' for classification data"):
    builders.get_builder(cfg)
  cfg.hf_dataset = str(tmp_path / "missing")
  with pytest.raises(UserError, match="data.hf_dataset=.*missing.*cannot load it"):
    builders.get_builder(cfg)


def test_the_export_is_written_once_per_dataset_version(tmp_path):
  datasets.Dataset.from_dict({"text": ["a b", "c"], "label": [0, 1]}).save_to_disk(str(tmp_path / "d"))
  cfg = ml_collections.ConfigDict(dict(
      name="hf_datasets", hf_dataset=str(tmp_path / "d"), hf_format="", label_names=(),
      label_field="label", text_field="text", files=ml_collections.ConfigDict()))
  first = hf_datasets.as_files_config(cfg, tmp_path / "tfds")
  stamp = (tmp_path / first.files.train).stat().st_mtime_ns
  again = hf_datasets.as_files_config(cfg, tmp_path / "tfds")
  assert again.files.train == first.files.train and again.name == "files"
  assert (tmp_path / again.files.train).stat().st_mtime_ns == stamp
  assert _rows(first.files.train) == [{"text": "a b", "label": 0}, {"text": "c", "label": 1}]


def test_column_renames_come_from_the_command_line_and_survive_the_workdir_config(tmp_path):
  from ftjax import config as config_lib
  cfg = config_lib.load_config("configs/quickstart.py", [
      "data.name=hf_datasets", "data.hf_dataset=parquet", "data.hf_columns.sentence=text"])
  (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
  assert dict(config_lib.load_json(tmp_path / "config.json").data.hf_columns) == {"sentence": "text"}
