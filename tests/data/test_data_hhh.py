"""BIG-bench HHH pairs from small fixtures in BIG-bench's task.json format (never the 358 MB sdist)."""

import json

import pytest

from ftjax.data import hhh
from ftjax.data import preference
from ftjax.errors import UserError
from test_data_chat_template import make_chat_tokenizer

WORDS = "hi hello how are you fine thanks bye ok good bad yes no please help me".split()


def _task(category, n):
  examples = []
  for i in range(n):
    request = f"{WORDS[i % len(WORDS)]} {category} {i}"
    if i % 4 == 3:  # a dialogue, as 41 of BIG-bench's inputs are
      request += "\n\nAssistant:  ok good\n\nHuman:  please help me"
    examples.append({"input": request,
                     "target_scores": {f"yes good {i}": 1, f"no bad {i}": 0}})
  return {"name": "hhh_alignment", "examples": examples}


@pytest.fixture
def hhh_dir(tmp_path):
  root = tmp_path / "hhh_alignment"
  for category, n in zip(hhh.CATEGORIES, (12, 10, 9, 8)):
    (root / category).mkdir(parents=True)
    (root / category / "task.json").write_text(json.dumps(_task(category, n)))
  return root


def test_pairs_are_parsed_split_by_request_and_carry_their_category(hhh_dir, make_data_cfg):
  cfg = make_data_cfg(name="hhh", hhh_source=str(hhh_dir), hhh_categories=(), eval_fraction=0.2,
                      test_fraction=0.3, max_length=64, chat_template="",
                      bucket_boundaries=(32, 64))
  data = preference.load_preference_data(cfg, make_chat_tokenizer(), seed=0)
  assert sum(data.split_sizes.values()) == 39 and set(data.split_sizes) == {
      "train", "validation", "test"}
  pairs = {split: data.pairs(split) for split in data.split_sizes}
  requests = {s: {p["prompt"][0]["content"] for p in ps} for s, ps in pairs.items()}
  assert not requests["train"] & requests["test"] and not requests["validation"] & requests["test"]
  every = [p for ps in pairs.values() for p in ps]
  assert {p["category"] for p in every} == set(hhh.CATEGORIES)
  dialogue = next(p for p in every if p["id"] == "helpful:3")
  assert [m["role"] for m in dialogue["prompt"]] == ["user", "assistant", "user"]
  assert dialogue["prompt"][1]["content"] == "ok good"
  assert (dialogue["chosen"], dialogue["rejected"]) == ("yes good 3", "no bad 3")
  assert next(data.eval_batches("test", 4))["input_ids"].shape[:2] == (4, 2)


def test_a_category_subset_and_bad_inputs(hhh_dir, make_data_cfg):
  cfg = make_data_cfg(name="hhh", hhh_source=str(hhh_dir), hhh_categories=("honest",),
                      eval_fraction=0.1, test_fraction=0.3, chat_template="")
  data = preference.load_preference_data(cfg, make_chat_tokenizer(), seed=0)
  assert sum(data.split_sizes.values()) == 9
  with pytest.raises(UserError, match=r"data.hhh_categories names \['kind'\]"):
    hhh.make_config(("kind",))
  (hhh_dir / "other" / "task.json").write_text(json.dumps(
      {"examples": [{"input": "hi", "target_scores": {"a": 1, "b": 1}}]}))
  with pytest.raises(UserError, match=r"other/task.json: example 0: expected 'input' and "
                                      r"'target_scores' with one response scored 1"):
    hhh.read_task(hhh_dir / "other" / "task.json", "other")
