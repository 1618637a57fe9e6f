"""Tests for ftjax.data.tokenization.stop_token_ids: every id that ends a generation."""

import json

import pytest
from tokenizers import Tokenizer, models
import transformers

from ftjax.data import chat_template
from ftjax.data import tokenization
from ftjax.errors import UserError

SPECIALS = ["<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"]
LLAMA3 = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] }}<|eot_id|>{% endfor %}")


@pytest.fixture(scope="module")
def tokenizer():
  vocab = {t: i for i, t in enumerate(SPECIALS + ["[UNK]", "hi"])}
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")),
      eos_token="<|endoftext|>", unk_token="[UNK]", additional_special_tokens=SPECIALS[1:])


def ids(tokenizer, *tokens):
  return sorted(tokenizer.convert_tokens_to_ids(list(tokens)))


def test_eos_plus_the_templates_end_of_turn_token(tokenizer, tmp_path):
  # No config files: the tokenizer's eos and the end-of-turn token the template uses, no other.
  assert tokenization.stop_token_ids(tmp_path, tokenizer, chat_template.CHATML) == ids(
      tokenizer, "<|endoftext|>", "<|im_end|>")
  assert tokenization.stop_token_ids(tmp_path, tokenizer, LLAMA3) == ids(
      tokenizer, "<|endoftext|>", "<|eot_id|>")
  assert tokenization.stop_token_ids(tmp_path, tokenizer) == ids(tokenizer, "<|endoftext|>")


def test_generation_config_lists_and_config_fallback(tokenizer, tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 4}))
  assert tokenization.stop_token_ids(tmp_path, tokenizer) == sorted({0, 4})
  # generation_config.json wins over config.json, as in transformers; an int or a list.
  (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 3]}))
  assert tokenization.stop_token_ids(tmp_path, tokenizer) == [0, 2, 3]
  (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 3}))
  assert tokenization.stop_token_ids(tmp_path, tokenizer) == [0, 3]
  (tmp_path / "generation_config.json").write_text("{not json")
  with pytest.raises(UserError, match="generation_config.json: cannot read eos_token_id"):
    tokenization.stop_token_ids(tmp_path, tokenizer)
