"""Tiny real assets for tests: a WordPiece tokenizer, a random BERT saved by transformers, data."""

import json
import pathlib

WORDS = ("good great fine superb lovely bad awful poor dull boring the movie film was a plot "
         "acting really quite not very").split()
POSITIVE = ("good", "great", "fine", "superb", "lovely")
NEGATIVE = ("bad", "awful", "poor", "dull", "boring")


def save_wordpiece_tokenizer(path: pathlib.Path, words) -> dict[str, int]:
  """A BERT-style fast tokenizer ([CLS] a [SEP] b [SEP], type ids) saved to `path`."""
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  vocab = {token: i for i, token in enumerate(specials + list(words))}
  tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
      special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
      sep_token="[SEP]", mask_token="[MASK]")
  path.mkdir(parents=True, exist_ok=True)
  fast.save_pretrained(str(path))
  return vocab


def make_tiny_bert(path: pathlib.Path, *, seed: int = 0, layers: int = 2, hidden: int = 32) -> pathlib.Path:
  """A tiny random BERT saved by transformers (safetensors) with a real WordPiece tokenizer."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  vocab = save_wordpiece_tokenizer(path, list(WORDS) + [".", ","])
  config = transformers.BertConfig(
      vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
      intermediate_size=2 * hidden, max_position_embeddings=64, type_vocab_size=2)
  torch.manual_seed(seed)
  transformers.BertModel(config).save_pretrained(str(path))
  return path


def make_sentiment_rows(n: int, seed: int) -> list[dict]:
  """Short synthetic reviews whose label is decided by one sentiment word."""
  import random  # pylint: disable=g-import-not-at-top
  rng = random.Random(seed)
  rows = []
  for i in range(n):
    label = "pos" if i % 2 == 0 else "neg"
    word = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
    filler = rng.sample(["the", "movie", "film", "was", "a", "plot", "acting", "really", "quite", "very"], 3)
    rows.append({"text": " ".join(filler[:2] + [word] + filler[2:]) + f" {i}", "label": label})
  return rows


def write_jsonl(path: pathlib.Path, rows) -> pathlib.Path:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


