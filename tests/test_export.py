"""The export CLI and PEFT adapters: transformers / peft load what we write, with our logits."""

import json
import os
import subprocess
import sys

import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx

from ftjax import export, methods, train
from ftjax.errors import UserError
from ftjax.models import registry
from ftjax.methods import lora_peft
from ftjax.models import rope as rope_lib
from ftjax.weights import peft_io
from test_train import tiny_config

IDS = np.array([[2, 5, 9, 14, 3, 0, 0], [2, 7, 6, 11, 20, 8, 3]])
MASK = (IDS != 0).astype(np.int64)
TYPES = np.zeros_like(IDS)


def ftjax_logits(model):
  return np.asarray(model(IDS, MASK, TYPES))


def torch_logits(model):
  model.eval()
  with torch.no_grad():
    return model(input_ids=torch.tensor(IDS), attention_mask=torch.tensor(MASK),
                 token_type_ids=torch.tensor(TYPES)).logits.numpy()


def hf_classifier(path):
  return transformers.AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=2)


def trained_run(tmp_path_factory, model_dir, files, method, **options):
  """A two-step run of `method` (lr high enough that every adapter moves off its init)."""
  cfg = tiny_config(model_dir, files, steps=2, method=method)
  with cfg.unlocked():
    cfg.eval.at_start = False
    cfg.eval.every_steps = 2
    cfg.checkpoint.every_steps = 2
    cfg.optimizer.lr = 5e-2
    for key, value in options.items():
      cfg.method[method][key] = value
  workdir = tmp_path_factory.mktemp(f"run_{method}")
  train.train_and_evaluate(cfg, str(workdir))
  exp = train.build_experiment(export.load_workdir_config(workdir))
  state, _ = train.restore_state(exp, str(workdir))
  return workdir, ftjax_logits(train.model_from_state(exp, state))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_bert_dir, tiny_sentiment_files):
  return trained_run(tmp_path_factory, tiny_bert_dir, tiny_sentiment_files, "lora", rank=4,
                     alpha=8.0, rslora=True)


def test_workdir_config_round_trips(lora_run):
  workdir, _ = lora_run
  cfg = export.load_workdir_config(workdir)
  assert cfg.method.name == "lora" and cfg.method.lora.rslora is True
  assert cfg.mesh.shape == (-1, 1, 1) and isinstance(cfg.data.bucket_boundaries, tuple)


def test_hf_export_of_lora_loads_in_transformers(lora_run, tmp_path):
  workdir, expected = lora_run
  out = export.export(str(workdir), str(tmp_path / "hf"), "hf")
  assert not list(tmp_path.glob(".hf.tmp-*"))
  np.testing.assert_allclose(torch_logits(hf_classifier(out)), expected, atol=1e-4, rtol=0)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
  assert tokenizer("good film")["input_ids"][0] == 2  # [CLS]
  config = json.loads((out / "config.json").read_text())
  assert config["id2label"] == {"0": "neg", "1": "pos"}


@pytest.mark.parametrize("method,options", [
    ("lora", None), ("dora", dict(rank=4, alpha=8.0)), ("ia3", {})])
def test_peft_export_loads_in_peft(method, options, lora_run, tmp_path_factory, tmp_path,
                                   tiny_bert_dir, tiny_sentiment_files):
  if options is None:
    workdir, expected = lora_run
  else:
    workdir, expected = trained_run(tmp_path_factory, tiny_bert_dir, tiny_sentiment_files,
                                    method, **options)
  out = export.export(str(workdir), str(tmp_path / "peft"), "peft")
  config = json.loads((out / peft_io.CONFIG_FILE).read_text())
  assert config["modules_to_save"] == ["classifier"]
  model = peft.PeftModel.from_pretrained(hf_classifier(tiny_bert_dir), str(out))
  np.testing.assert_allclose(torch_logits(model), expected, atol=1e-4, rtol=0)


PEFT_TARGETS = ["query", "value", "intermediate.dense"]


def peft_adapter(model_dir, out, dora: bool) -> np.ndarray:
  """Saves a LoRA / DoRA adapter made by `peft` (moved off its init) to `out`; its logits."""
  torch.manual_seed(0)
  config = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=16, use_rslora=not dora,
                           use_dora=dora, target_modules=PEFT_TARGETS)
  model = peft.get_peft_model(hf_classifier(model_dir), config)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "lora_B" in name:  # PEFT starts B at zero: make the adapter do something
        torch.nn.init.normal_(param, std=0.5)
      if "lora_magnitude_vector" in name:
        param.mul_(1.5)
  model.save_pretrained(str(out))
  return torch_logits(model)


@pytest.mark.parametrize("dora", [False, True])
def test_load_peft_lora_trained_elsewhere(tiny_bert_dir, tmp_path, dora):
  expected = peft_adapter(tiny_bert_dir, tmp_path / "adapter", dora)
  ours, _ = registry.build_model(tiny_bert_dir, task="classification", num_labels=2,
                                 rngs=nnx.Rngs(0))
  ours = lora_peft.load_peft_lora(ours, tmp_path / "adapter")
  np.testing.assert_allclose(ftjax_logits(ours), expected, atol=1e-4, rtol=0)
  merged = methods.get("dora" if dora else "lora").merge(ours)
  np.testing.assert_allclose(ftjax_logits(merged), expected, atol=1e-4, rtol=0)
  with pytest.raises(UserError, match="adapter_config.json"):
    lora_peft.load_peft_lora(ours, tmp_path)


@pytest.mark.parametrize("dora", [False, True])
def test_run_starts_from_a_peft_adapter(tiny_bert_dir, tiny_sentiment_files, tmp_path, dora):
  """`method.lora.init_from` (the config key): the run's step-0 model is peft's, head included."""
  expected = peft_adapter(tiny_bert_dir, tmp_path / "adapter", dora)
  method = "dora" if dora else "lora"
  cfg = tiny_config(tiny_bert_dir, tiny_sentiment_files, method=method)
  cfg.method[method].update(rank=4, alpha=16.0, rslora=not dora,
                            targets=r"\.(query|value|intermediate\.dense)$",
                            init_from=str(tmp_path / "adapter"))
  exp = train.build_experiment(cfg)
  model = train.model_from_state(exp, exp.state)
  np.testing.assert_allclose(ftjax_logits(model), expected, atol=1e-4, rtol=0)


def test_unmergeable_method_is_refused_for_hf(tmp_path_factory, tiny_bert_dir,
                                              tiny_sentiment_files, tmp_path):
  workdir, _ = trained_run(tmp_path_factory, tiny_bert_dir, tiny_sentiment_files, "adapters",
                           bottleneck=4)
  with pytest.raises(UserError, match="method 'adapters' cannot be merged"):
    export.export(str(workdir), str(tmp_path / "hf"), "hf")
  assert not (tmp_path / "hf").exists()


def test_cli_success_and_user_errors(lora_run, tmp_path):
  workdir, _ = lora_run
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "ftjax.export", "--workdir", str(workdir)]
  ok = subprocess.run(cmd + ["--out", str(tmp_path / "a"), "--format", "peft",
                             "--checkpoint", "2"], capture_output=True, text=True, env=env)
  assert ok.returncode == 0, ok.stderr
  assert (tmp_path / "a" / peft_io.WEIGHTS_FILE).is_file()
  again = subprocess.run(cmd + ["--out", str(tmp_path / "a"), "--format", "hf"],
                         capture_output=True, text=True, env=env)
  assert again.returncode == 2
  errors = [l for l in again.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "already exists" in errors[0], again.stderr
  missing = subprocess.run([sys.executable, "-m", "ftjax.export", "--workdir",
                            str(tmp_path / "nope"), "--out", str(tmp_path / "b")],
                           capture_output=True, text=True, env=env)
  assert missing.returncode == 2 and "error: no config.json" in missing.stderr


def test_llama3_export_writes_rope_for_old_and_new_readers(tmp_path):
  # transformers 5 writes only `rope_parameters`; readers older than it would silently fall back to
  # theta 1e4 without scaling, so the export also writes the legacy `rope_theta` / `rope_scaling`.
  config = transformers.LlamaConfig(
      vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
      rope_parameters=dict(rope_type="llama3", rope_theta=5e5, factor=8.0, low_freq_factor=1.0,
                           high_freq_factor=4.0, original_max_position_embeddings=16))
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(config).save_pretrained(str(tmp_path / "base"))
  model, _ = registry.build_model(tmp_path / "base", task="causal_lm", rngs=nnx.Rngs(0))
  out = registry.save_hf(model, tmp_path / "out")
  written = json.loads((out / "config.json").read_text())
  params = written["rope_parameters"]
  assert params["rope_type"] == "llama3" and written["rope_theta"] == params["rope_theta"] == 5e5
  assert written["rope_scaling"] == {**{k: v for k, v in params.items() if k != "rope_theta"},
                                     "type": "llama3"}
  # Both spellings alone give the same RoPE, and transformers gives ftjax's logits.
  legacy = {k: v for k, v in written.items() if k != "rope_parameters"}
  assert rope_lib.RopeConfig.from_hf(legacy, "legacy") == model.config.rope
  ids = np.array([[5, 9, 14, 3, 22, 41, 7, 60] * 4])  # 32 tokens: past the 16 of the original length
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
  with torch.no_grad():
    want = hf(input_ids=torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(np.asarray(model(ids, np.ones_like(ids))), want, atol=1e-4, rtol=0)
