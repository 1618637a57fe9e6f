"""Tests for the chat TFDS builders: local conversation JSONL and the ChatterBot corpus."""

import json
import re

import pytest

from ftjax.data import builders
from ftjax.data import chat_files
from ftjax.data import chatterbot
from ftjax.errors import UserError


def _conv(*turns, system=None):
  messages = [{"role": "system", "content": system}] if system else []
  messages += [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
               for i, t in enumerate(turns)]
  return {"messages": messages}


def _messages(builder, split):
  source = builder.as_data_source(split=split)
  return [json.loads(source[i]["messages_json"]) for i in range(len(source))]


def test_chat_files_roundtrip_and_skips(tmp_path, make_data_cfg, write_jsonl):
  train = write_jsonl(tmp_path / "train.jsonl", [
      _conv("hi", "hello", system="be nice"),
      _conv("only a question"),  # No assistant turn: skipped and counted.
      _conv("a", "b", "c", "d"),
      {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]},
  ])
  valid = write_jsonl(tmp_path / "valid.jsonl", [_conv("x", "y")])
  cfg = make_data_cfg(name="chat_files", files={"train": train, "validation": valid})
  builder = builders.prepare(cfg)
  assert builder.info.splits["train"].num_examples == 2
  assert builder.info.metadata["skipped"] == {"no_assistant": 2}
  assert _messages(builder, "train") == [_conv("hi", "hello", system="be nice")["messages"],
                                        _conv("a", "b", "c", "d")["messages"]]
  assert _messages(builder, "validation") == [_conv("x", "y")["messages"]]
  ids = builder.as_data_source(split="train")
  assert [ids[i]["id"].decode() for i in range(2)] == ["train.jsonl:1", "train.jsonl:3"]


def test_chat_files_config_name_tracks_content(tmp_path, write_jsonl):
  path = write_jsonl(tmp_path / "c.jsonl", [_conv("hi", "hello")])
  first = chat_files.make_config({"train": str(path)}).name
  assert chat_files.make_config({"train": str(path)}).name == first
  write_jsonl(tmp_path / "c.jsonl", [_conv("hi", "hello there")])
  assert chat_files.make_config({"train": str(path)}).name != first
  assert chat_files.make_config({"train": str(path)}, messages_field="chat").name != first


@pytest.mark.parametrize("line, message", [
    ('{"messages": [{"role": "user", "content": "a"}', r"c\.jsonl:2: bad JSON"),
    ('{"turns": []}', r"c\.jsonl:2: missing field 'messages'"),
    ('{"messages": []}', r"c\.jsonl:2: messages must be a non-empty list"),
    ('{"messages": [{"role": "bot", "content": "a"}]}', r"c\.jsonl:2: message 0 has role 'bot'"),
    ('{"messages": [{"role": "user", "content": 3}]}',
     r"c\.jsonl:2: message 0 content must be a string"),
    ('{"messages": ["hi"]}', r"c\.jsonl:2: message 0 must be an object"),
    ('[1, 2]', r"c\.jsonl:2: expected a JSON object"),
])
def test_chat_files_bad_rows_name_file_and_line(tmp_path, make_data_cfg, line, message):
  path = tmp_path / "c.jsonl"
  path.write_text(json.dumps(_conv("hi", "hello")) + "\n" + line + "\n", encoding="utf-8")
  with pytest.raises(UserError, match=message):
    builders.prepare(make_data_cfg(name="chat_files", files={"train": str(path)}))


def test_chat_files_without_any_assistant_is_an_error(tmp_path, make_data_cfg, write_jsonl):
  path = write_jsonl(tmp_path / "q.jsonl", [_conv("only"), _conv("questions")])
  with pytest.raises(UserError, match=r"no conversation with an assistant turn.*2 skipped"):
    builders.prepare(make_data_cfg(name="chat_files", files={"train": path}))


def test_chat_files_refuses_csv(tmp_path, make_data_cfg):
  path = tmp_path / "c.csv"
  path.write_text("messages\nx\n")
  with pytest.raises(UserError, match="must be JSONL"):
    builders.prepare(make_data_cfg(name="chat_files", files={"train": str(path)}))


@pytest.fixture
def corpus(tmp_path):
  """A tiny ChatterBot-style corpus: duplicates, a one-turn conversation, YAML scalars."""
  root = tmp_path / "english"
  root.mkdir()
  (root / "support.yml").write_text(
      "categories:\n- support\nconversations:\n"
      + "".join(f"- - My thing {i} is broken.\n  - Turn thing {i} off and on.\n"
                for i in range(40))
      + "- - My thing 0 is broken.\n  - Turn thing 0 off and on.\n"  # Exact duplicate.
      + "- - my  THING 1 is broken.\n  - turn thing 1 off and ON.\n"  # Normalised duplicate.
      + "- - Lonely question?\n"  # No assistant turn.
      + "- - yes\n  - 1.0\n  - no\n", encoding="utf-8")  # Scalars stay strings.
  (root / "smalltalk.yml").write_text(
      "conversations:\n- - Hello\n  - Hi\n  - How are you?\n  - Fine.\n"
      "- - My thing 3 is broken.\n  - Have you tried kicking it?\n", encoding="utf-8")
  return root


def _build(corpus, tmp_path, categories=(), eval_fraction=0.25):
  config = chatterbot.make_config(categories, eval_fraction=eval_fraction, source=str(corpus))
  builder = chatterbot.ChatterBot(data_dir=tmp_path / "tfds", config=config)
  builder.download_and_prepare(file_format="array_record")
  return builder


def test_chatterbot_dedup_skip_and_split(corpus, tmp_path):
  builder = _build(corpus, tmp_path)
  assert builder.info.metadata["skipped"] == {"no_assistant": 1, "duplicates": 2}
  train, valid = _messages(builder, "train"), _messages(builder, "validation")
  assert len(train) + len(valid) == 40 + 1 + 2  # support (40 + the scalar one) + smalltalk.
  assert 3 <= len(valid) <= 20  # ~25% of 43.
  assert ([{"role": "user", "content": "yes"}, {"role": "assistant", "content": "1.0"},
           {"role": "user", "content": "no"}] in train + valid)
  assert ([{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"},
           {"role": "user", "content": "How are you?"},
           {"role": "assistant", "content": "Fine."}] in train + valid)
  # The same opening question always lands in one split ("My thing 3" has two answers).
  first = lambda convs: {chat_files.first_user_key(m) for m in convs}
  assert not first(train) & first(valid)
  keys = [chat_files.conversation_key(m) for m in train + valid]
  assert len(keys) == len(set(keys))
  # Deterministic: a rebuild elsewhere gives the same split.
  again = _build(corpus, tmp_path / "again")
  assert _messages(again, "validation") == valid


def test_chatterbot_categories(corpus, tmp_path):
  builder = _build(corpus, tmp_path, categories=("smalltalk",), eval_fraction=0.0)
  assert list(builder.info.splits) == ["train"]
  assert len(_messages(builder, "train")) == 2
  with pytest.raises(UserError, match=re.escape("unknown ['nope']; available: "
                                                "['smalltalk', 'support']")):
    _build(corpus, tmp_path / "x", categories=("nope",))


def test_chatterbot_config_names():
  a = chatterbot.make_config(("coding", "ai"))
  assert a.name == chatterbot.make_config(("ai", "coding")).name  # Order-insensitive.
  assert a.name != chatterbot.make_config(("ai",)).name
  assert a.name != chatterbot.make_config(("coding", "ai"), eval_fraction=0.2).name
  with pytest.raises(UserError, match="eval_fraction"):
    chatterbot.make_config((), eval_fraction=1.0)


def test_real_chatterbot_corpus(tmp_path, make_data_cfg):
  """The real corpus (wheel via the resolver): the SFT config's categories, no leakage."""
  cfg = make_data_cfg(name="chatterbot",
                      chatterbot_categories=("ai", "coding", "computers", "tech_support"),
                      eval_fraction=0.1)
  builder = builders.prepare(cfg)
  skipped = builder.info.metadata["skipped"]
  assert skipped["duplicates"] >= 1040 + 80  # tech_support repeats 10 pairs 1,050 times.
  train, valid = _messages(builder, "train"), _messages(builder, "validation")
  assert 180 <= len(train) + len(valid) <= 240
  assert 0.04 <= len(valid) / (len(train) + len(valid)) <= 0.2
  first = lambda convs: {chat_files.first_user_key(m) for m in convs}
  assert not first(train) & first(valid)
  for messages in train + valid:
    assert messages[0]["role"] == "user" and messages[1]["role"] == "assistant"
