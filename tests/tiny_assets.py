"""Tiny real assets for tests: a WordPiece tokenizer, a random BERT saved by transformers, data."""

import json
import pathlib

WORDS = ("good great fine superb lovely bad awful poor dull boring the movie film was a plot "
         "acting really quite not very").split()
POSITIVE = ("good", "great", "fine", "superb", "lovely")
NEGATIVE = ("bad", "awful", "poor", "dull", "boring")


def files_config(model_dir, files):
  """The trainer's base config on local train/validation files (`data.name=files`), no test split."""
  from ftjax.config import base_config  # pylint: disable=g-import-not-at-top
  c = base_config()
  c.model.checkpoint = str(model_dir)
  c.data.name = "files"
  c.data.files.train = str(files["train"])
  c.data.files.validation = str(files["validation"])
  c.data.test_split = ""
  return c


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


def make_tiny_roberta(path: pathlib.Path, *, seed: int = 0) -> pathlib.Path:
  """A tiny random RoBERTa (fairseq positions from pad + 1, one token type) with the tiny
  BERT's WordPiece tokenizer (its [PAD] is the model's pad_token_id)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  vocab = save_wordpiece_tokenizer(path, list(WORDS) + [".", ","])
  config = transformers.RobertaConfig(
      vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=64, max_position_embeddings=64, type_vocab_size=1,
      pad_token_id=vocab["[PAD]"], bos_token_id=vocab["[CLS]"], eos_token_id=vocab["[SEP]"])
  torch.manual_seed(seed)
  transformers.RobertaModel(config).save_pretrained(str(path))
  return path


def make_tiny_distilbert(path: pathlib.Path, *, seed: int = 0) -> pathlib.Path:
  """A tiny random DistilBERT with the tiny BERT's WordPiece tokenizer."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  vocab = save_wordpiece_tokenizer(path, list(WORDS) + [".", ","])
  config = transformers.DistilBertConfig(
      vocab_size=len(vocab), dim=32, n_layers=2, n_heads=4, hidden_dim=64,
      max_position_embeddings=64, pad_token_id=vocab["[PAD]"])
  torch.manual_seed(seed)
  transformers.DistilBertModel(config).save_pretrained(str(path))
  return path


def make_tiny_modernbert(path: pathlib.Path, *, seed: int = 0) -> pathlib.Path:
  """A tiny random ModernBERT (layer 0 global, layer 1 local with a window of 4 each side, so
  16-token inputs reach past it; no biases but the classifier's, as ModernBERT's defaults)
  with the tiny BERT's WordPiece tokenizer. Its sharded dims divide by 8 (Wqkv 32 -> 96,
  Wi 32 -> 128)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  vocab = save_wordpiece_tokenizer(path, list(WORDS) + [".", ","])
  config = transformers.ModernBertConfig(
      vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=64, max_position_embeddings=64, global_attn_every_n_layers=2,
      local_attention=8, pad_token_id=vocab["[PAD]"], bos_token_id=vocab["[CLS]"],
      eos_token_id=vocab["[SEP]"], cls_token_id=vocab["[CLS]"], sep_token_id=vocab["[SEP]"])
  torch.manual_seed(seed)
  transformers.ModernBertModel(config).save_pretrained(str(path))
  return path


def make_tiny_deberta(path: pathlib.Path, *, seed: int = 0) -> pathlib.Path:
  """A tiny random DeBERTa-v3-like model (log-bucketed relative attention with shared position
  keys, no absolute positions or token types) with the tiny BERT's WordPiece tokenizer."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  vocab = save_wordpiece_tokenizer(path, list(WORDS) + [".", ","])
  config = transformers.DebertaV2Config(
      vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=64, max_position_embeddings=64, type_vocab_size=0,
      relative_attention=True, position_buckets=8, share_att_key=True, pos_att_type="p2c|c2p",
      norm_rel_ebd="layer_norm", position_biased_input=False, pad_token_id=vocab["[PAD]"])
  torch.manual_seed(seed)
  transformers.DebertaV2Model(config).save_pretrained(str(path))
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




def _save_chat_tokenizer(path: pathlib.Path) -> dict[str, int]:
  """A word-level ChatML tokenizer for the tiny decoders; returns its vocabulary."""
  import transformers  # pylint: disable=g-import-not-at-top
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  from ftjax.data.chat_template import CHATML  # pylint: disable=g-import-not-at-top

  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  words = list(WORDS) + ["user", "assistant", "system", "hello", "hi", "how", "are", "you", "?", "!",
                         "i", "am", "help", "me", "with", "python", "sure"] + [str(i) for i in range(64)]
  vocab = {t: i for i, t in enumerate(dict.fromkeys(specials + ["[UNK]"] + words))}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
      bos_token="<|im_start|>", unk_token="[UNK]", additional_special_tokens=specials[1:])
  fast.chat_template = CHATML
  path.mkdir(parents=True, exist_ok=True)
  fast.save_pretrained(str(path))
  return vocab


def move_norms(model, scale: float) -> None:
  """Adds N(0, scale) to every norm weight of a torch model, so a norm read as 1 + w, or
  dropped, shows in the logits (HF initialises them to exactly 0 or 1)."""
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name:
        param.add_(torch.randn_like(param) * scale)


def make_tiny_llama(path: pathlib.Path, *, seed: int = 0, layers: int = 2) -> pathlib.Path:
  """A tiny random Llama (tied embeddings, like SmolLM2) with a ChatML tokenizer."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  vocab = _save_chat_tokenizer(path)
  config = transformers.LlamaConfig(
      vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
      tie_word_embeddings=True, eos_token_id=vocab["<|im_end|>"], pad_token_id=0)
  torch.manual_seed(seed)
  transformers.LlamaForCausalLM(config).save_pretrained(str(path))
  return path


def make_tiny_gemma3(path: pathlib.Path, *, seed: int = 0) -> pathlib.Path:
  """A tiny random Gemma 3 (3 layers: sliding, sliding, global; window 4; q/k norms; norm
  weights moved off their zero init) with the tiny decoders' ChatML tokenizer."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  vocab = _save_chat_tokenizer(path)
  config = transformers.Gemma3TextConfig(
      vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
      num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
      max_position_embeddings=128, sliding_window=4, sliding_window_pattern=3,
      rope_theta=10000.0, rope_local_base_freq=100.0,
      eos_token_id=vocab["<|im_end|>"], bos_token_id=vocab["<|im_start|>"], pad_token_id=0)
  torch.manual_seed(seed)
  model = transformers.Gemma3ForCausalLM(config)
  move_norms(model, 0.2)
  model.save_pretrained(str(path))
  return path


def make_tiny_phi3(path: pathlib.Path, *, seed: int = 0) -> pathlib.Path:
  """A tiny random Phi-3 (fused qkv_proj / gate_up_proj, LongRoPE past 16 positions, norm
  weights moved off 1) with the tiny decoders' ChatML tokenizer."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  vocab = _save_chat_tokenizer(path)
  config = transformers.Phi3Config(
      vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
      original_max_position_embeddings=16, rope_parameters=dict(
          rope_type="longrope", rope_theta=10000.0, short_factor=[1.0] * 4,
          long_factor=[1.0, 2.0, 3.0, 4.0]),
      eos_token_id=vocab["<|im_end|>"], bos_token_id=vocab["<|im_start|>"], pad_token_id=0)
  torch.manual_seed(seed)
  model = transformers.Phi3ForCausalLM(config)
  move_norms(model, 0.2)
  model.save_pretrained(str(path))
  return path


def make_tiny_moe(path: pathlib.Path, *, model_type: str = "mixtral", seed: int = 0,
                  **overrides) -> pathlib.Path:
  """A tiny random mixture of experts with the tiny decoders' ChatML tokenizer: a Mixtral
  (4 experts, top 2, every layer sparse) or a Qwen3-MoE (6 experts, top 3, q/k norms, layer 1
  a dense MLP); routers scaled up so routing is far from uniform, norm weights moved off 1."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  vocab = _save_chat_tokenizer(path)
  common = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                eos_token_id=vocab["<|im_end|>"], pad_token_id=0)
  if model_type == "mixtral":
    cls, own = transformers.MixtralForCausalLM, dict(
        intermediate_size=24, num_local_experts=4, num_experts_per_tok=2)
  else:
    cls, own = transformers.Qwen3MoeForCausalLM, dict(
        intermediate_size=40, moe_intermediate_size=16, num_experts=6, num_experts_per_tok=3,
        head_dim=8, mlp_only_layers=[1])
  config = cls.config_class(**{**common, **own, **overrides})
  torch.manual_seed(seed)
  model = cls(config)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith("gate.weight"):
        param.normal_(0.0, 0.5)
  move_norms(model, 0.2)
  model.save_pretrained(str(path))
  return path


def make_conversations(n: int, seed: int) -> list[dict]:
  import random  # pylint: disable=g-import-not-at-top
  rng = random.Random(seed)
  rows = []
  for i in range(n):
    question = rng.choice(["hello how are you ?", "help me with python !", "hi !"])
    answer = {"hello how are you ?": "i am fine", "help me with python !": "sure",
              "hi !": "hello"}[question]
    rows.append({"messages": [{"role": "user", "content": f"{question} {i}"},
                              {"role": "assistant", "content": answer}]})
  return rows


# A reply is preferred by question: "sure" is right for python and wrong for hello.
PREFERRED_REPLIES = {"hello how are you ?": ("i am fine", "sure"),
                     "help me with python !": ("sure", "hello"),
                     "hi !": ("hello", "i am fine")}


def make_preference_rows(n: int, seed: int) -> list[dict]:
  """Preference pairs for the tiny Llama's vocabulary: `{"prompt", "chosen", "rejected"}`."""
  import random  # pylint: disable=g-import-not-at-top
  rng = random.Random(seed)
  rows = []
  for i in range(n):
    question = rng.choice(sorted(PREFERRED_REPLIES))
    chosen, rejected = PREFERRED_REPLIES[question]
    rows.append({"prompt": f"{question} {i}", "chosen": chosen, "rejected": rejected})
  return rows
