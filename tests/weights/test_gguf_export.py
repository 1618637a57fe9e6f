"""GGUF export (`ftjax.weights.gguf_export`, `python -m ftjax.export --format gguf`).

Oracles: the tiny llama GGUF of test_gguf.py (written as llama.cpp's converter writes one),
imported by ftjax into an HF directory and exported again, must give back its own tensors
(F16: the float16 cast of each; Q8_0: `gguf.quants` of each), tokens, merges, special ids and
chat template; transformers' GGUF loader and ftjax's must read the exported file to the same
logits (within 1e-4); and a LoRA run exported with `--format gguf` runs in transformers with the
logits of the run's merged weights rounded as each type stores them (within 1e-4 of the
largest logit); the error against the unrounded merged model is reported per type.
"""

import gguf
from gguf import GGMLQuantizationType as GT
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from ftjax import export, train
from ftjax.config import base_config
from ftjax.errors import UserError
from ftjax.models import registry
from ftjax.weights import gguf as ftgguf
from ftjax.weights import gguf_export, safetensors_io
from test_gguf import CHAT, CHAT_TEMPLATE, TEXTS, write_tiny_gguf
from tiny_assets import make_conversations, make_tiny_llama, write_jsonl


def _imported(root, bias):
  path = root / "tiny.gguf"
  write_tiny_gguf(path, tied=False, bias=bias, quant=GT.F32, add_bos=False)
  return path, ftgguf.materialize_hf_dir(path, root / "hf")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """An HF directory imported from the tiny GGUF (untied head, Q/K/V biases as Qwen2 has them,
  4 / 2 heads): the file round trip."""
  return _imported(tmp_path_factory.mktemp("gguf_export"), bias=True)


@pytest.fixture(scope="module")
def llama_source(tmp_path_factory):
  """The same without biases: a Llama that ftjax and transformers build (their `attention_bias`
  means biases on all four projections)."""
  return _imported(tmp_path_factory.mktemp("gguf_export_llama"), bias=False)


def _fields(path):
  reader = gguf.GGUFReader(str(path))
  meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
  tensors = {t.name: (t.tensor_type, gguf.quants.dequantize(t.data, t.tensor_type))
             for t in reader.tensors}
  return meta, tensors


@pytest.mark.parametrize("kind", ["f16", "bf16", "q8_0"])
def test_export_gives_back_the_imported_file(source, tmp_path, kind):
  original, hf_dir = source
  out = gguf_export.write_gguf(hf_dir, tmp_path / "out.gguf", kind)
  want_meta, want = _fields(original)
  got_meta, got = _fields(out)
  assert set(got) == set(want)
  qtype = gguf_export.GGUF_TYPES[kind][0]
  for name, (_, value) in want.items():
    got_type, got_value = got[name]
    if value.ndim == 1:  # norms and biases stay F32, exactly
      assert got_type == GT.F32
      np.testing.assert_array_equal(got_value, value, err_msg=name)
    else:  # Q/K rows in llama.cpp's order again: the same values in the chosen type
      assert got_type == qtype, name
      expect = gguf.quants.dequantize(gguf.quants.quantize(value, qtype), qtype)
      np.testing.assert_array_equal(got_value, expect.reshape(value.shape), err_msg=name)
  for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
              "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
              "tokenizer.ggml.eos_token_id", "tokenizer.chat_template", "llama.block_count",
              "llama.attention.head_count_kv", "llama.rope.freq_base", "llama.context_length"):
    assert got_meta[key] == want_meta[key], key
  assert got_meta["general.file_type"] == int(gguf_export.GGUF_TYPES[kind][1])


def test_transformers_and_ftjax_read_the_export_alike(llama_source, tmp_path):
  _, hf_dir = llama_source
  out = gguf_export.write_gguf(hf_dir, tmp_path / "tiny-f16.gguf", "f16")
  ref = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name,
                                                          dtype=torch.float32).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=out.name)
  original = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
  for text in TEXTS:
    assert tokenizer(text).input_ids == original(text).input_ids, text
  assert tokenizer.chat_template == CHAT_TEMPLATE
  assert (tokenizer.apply_chat_template(CHAT, tokenize=False)
          == original.apply_chat_template(CHAT, tokenize=False))
  ids = np.asarray([original("Hello world! What is the capital of France?").input_ids])
  with torch.no_grad():
    want = ref(torch.from_numpy(ids)).logits.numpy()
  got = _rounded_logits(ftgguf.resolve_checkpoint_dir(out, cache_dir=tmp_path / "cache"), ids)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_what_the_writer_does_not_cover_is_named(source, tmp_path, tiny_bert_dir):
  _, hf_dir = source
  with pytest.raises(UserError, match="covers the llama architecture; .* is 'bert'"):
    gguf_export.write_gguf(tiny_bert_dir, tmp_path / "a.gguf")
  word_level = make_tiny_llama(tmp_path / "word_level")  # a WordLevel tokenizer
  with pytest.raises(UserError, match="covers byte-level BPE tokenizers; .* is WordLevel"):
    gguf_export.write_gguf(word_level, tmp_path / "b.gguf")
  with pytest.raises(UserError, match="unknown GGUF type 'q4_k'"):
    gguf_export.write_gguf(hf_dir, tmp_path / "c.gguf", "q4_k")
  assert not list(tmp_path.glob("*.gguf"))  # nothing half-written


@pytest.fixture(scope="module")
def lora_run(llama_source, tmp_path_factory):
  """A few LoRA steps of chat SFT on the imported tiny llama."""
  _, hf_dir = llama_source
  root = tmp_path_factory.mktemp("gguf_lora")
  c = base_config()
  c.model.checkpoint = str(hf_dir)
  c.model.task = "causal_lm"
  c.method.name = "lora"
  c.method.lora.targets = r"(q|v|o|down)_proj"
  c.data.name = "chat_files"
  c.data.files.train = str(write_jsonl(root / "train.jsonl", make_conversations(16, 0)))
  c.data.files.validation = str(write_jsonl(root / "dev.jsonl", make_conversations(4, 1)))
  c.data.test_split = ""
  c.data.max_length = 64
  c.data.bucket_boundaries = (64,)
  c.train.steps = 3
  c.train.batch_size = 4
  c.optimizer.lr = 5e-2
  c.eval.every_steps = 3
  c.eval.metric, c.eval.mode = "loss", "min"
  c.eval.num_samples = 0
  c.checkpoint.every_steps = 3
  workdir = root / "run"
  train.train_and_evaluate(c, str(workdir))
  return workdir


def _rounded_logits(hf_dir, ids, qtype=None):
  """ftjax's logits of `hf_dir` with every matrix rounded through `qtype` as the GGUF stores it
  (vectors kept in F32); unrounded with `qtype=None`."""
  spec = registry.model_spec(hf_dir, task="causal_lm")
  model = registry.init_model(spec, nnx.Rngs(params=0))
  rounded = lambda v: v if qtype is None or v.ndim < 2 else gguf.quants.dequantize(
      gguf.quants.quantize(v, qtype), qtype).reshape(v.shape)
  tensors = {k: rounded(v) for k, v in safetensors_io.read_safetensors_dir(hf_dir).items()}
  safetensors_io.load_params(model, tensors, spec.table)
  return np.asarray(model(jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids))))


def test_a_lora_run_exports_to_gguf_that_transformers_runs(lora_run, tmp_path):
  # The oracle: the run's merged weights (`--format hf`), each matrix rounded as the GGUF type
  # stores it, run by ftjax; transformers on the exported GGUF must give those logits.
  merged = export.export(str(lora_run), str(tmp_path / "merged"), "hf")
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(merged))
  prompt = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
  ids = np.asarray([tokenizer(prompt).input_ids])
  exact = _rounded_logits(merged, ids)
  errors = {}
  for kind in ("f16", "q8_0"):
    out = export.export(str(lora_run), str(tmp_path / f"run-{kind}.gguf"), "gguf", "latest",
                        gguf_type=kind)
    assert out.is_file() and not list(tmp_path.glob(".*tmp*"))  # the file alone, moved in whole
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=out.name, dtype=torch.float32).eval()
    with torch.no_grad():
      got = model(torch.from_numpy(ids)).logits.numpy()
    want = _rounded_logits(merged, ids, gguf_export.GGUF_TYPES[kind][0])
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=0)
    errors[kind] = float(np.abs(got - exact).max() / np.abs(exact).max())
  print(f"max |logit error| / max |logit| of the export against the merged model: {errors}")
  assert 0 < errors["f16"] < errors["q8_0"]
  with pytest.raises(UserError, match="already exists"):
    export.export(str(lora_run), str(tmp_path / "run-f16.gguf"), "gguf")
  with pytest.raises(UserError, match="unknown --gguf_type 'q2'"):
    export.export(str(lora_run), str(tmp_path / "x.gguf"), "gguf", gguf_type="q2")
