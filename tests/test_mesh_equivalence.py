"""8 fake devices train like 1: every mesh, both model families, every method in the catalogue.

Issue #5: with 8 fake CPU devices, data parallelism (8,1,1), FSDP (1,8,1), tensor parallelism
(1,1,8) and a mixed (2,2,2) mesh must give the losses of every step and the final parameters
(trainable and frozen) of 1 device within 1e-5.

- A tiny Llama (causal LM on tiny chat data; dims divisible by 8 so that every logical-axis
  rule really shards) under full fine-tuning on all four meshes, and on the mixed mesh once more
  with the loss computed in chunks (`model.logits_chunk`).
- Every method of `ftjax.methods.registry.names()` on the tiny BERT (classification) and on the
  tiny Llama, on the mixed (2,2,2) mesh; full, LoRA and prompt tuning on a tiny Gemma 3 and
  full and LoRA on a tiny Phi-3, a tiny RoBERTa, a tiny DistilBERT and a tiny DeBERTa-v3 there;
  full and LoRA on a tiny Mixtral (dropless, its experts sharded along the expert axis) and full
  fine-tuning of a tiny Qwen3-MoE with a capacity factor (tokens dropped) there; and full, LoRA and QLoRA under DPO, under
  distillation (a second tiny Llama as the frozen teacher) and under GRPO (rollouts sampled on
  the sharded policy through the trainer's batch source) there. A method not yet available for a model family (a
  `UserError` "supports BERT-family models only") is reported as an xfail, never skipped.

Cost is the constraint: the device count is fixed when JAX starts, so the cases run in two
subprocesses started together (XLA compiles on one thread, so they share 2 cores well): one
with 1 CPU device runs every 1-device case, one with 8 fake CPU devices every sharded case, each
in a single Python process. The initial states (before the first step) are compared too: the frozen
variables must be bit-identical, the trainable ones within 1e-5 (`ftjax.train.construct` builds
them sharded). Each case is the trainer's own code, not a copy of it:
`train.build_experiment` from the config, then `train.make_train_step` jitted with the trainer's
shardings and donation, fed batches from the dataset's train iterator through
`sharding.put_batch`. The workers write per-step losses, parameter shardings and final states to
disk; the comparisons happen here, in the test process, so a failure names the model, method,
mesh, step or parameter path and the largest absolute difference.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys
import time
import traceback

import numpy as np
import pytest

from ftjax.methods import registry as method_registry

STEPS = 3
ATOL = 1e-5
ONE = (1, 1, 1)
MESHES = {"data": (8, 1, 1), "fsdp": (1, 8, 1), "tensor": (1, 1, 8), "mixed": (2, 2, 2),
          # The mixed mesh with the causal-LM loss in chunks (`model.logits_chunk`), against the
          # unchunked 1-device run: chunking keeps the sharded batch axis whole.
          "mixed_logits_chunk": (2, 2, 2)}
LOGITS_CHUNK = 8  # positions per chunk: 3 chunks of the tiny Llama's 24
MODELS = ("bert", "llama")
# Gemma 3 (sandwich and q/k norms, scaled embeddings, a sliding and a global layer with their
# own RoPE) under full fine-tuning, LoRA and prompt tuning.
GEMMA_METHODS = ("full", "lora", "prompt_tuning")
PHI3_METHODS = ("full", "lora")  # fused qkv_proj / gate_up_proj, LongRoPE
# Mixtures of experts: Mixtral dropless (ragged_dot over experts sharded along fsdp) under full
# and LoRA; Qwen3-MoE under full fine-tuning with capacity_factor 0.5, so tokens are dropped.
MOE_CASES = (("mixtral", "full"), ("mixtral", "lora"), ("qwen3_moe", "full"))
# RoBERTa (fairseq positions, the two-layer head), DistilBERT (its names, two-layer head),
# ModernBERT (fused Wqkv and GeGLU Wi sharded along tensor, local attention, `head` + classifier)
# and DeBERTa-v3 (disentangled attention over log-bucketed relative positions, context pooler).
ENCODER_METHODS = ("full", "lora")
ENCODERS = ("roberta", "distilbert", "modernbert", "deberta")
# The preference objective (DPO, its reference the step-0 trainable parameters) and distillation
# (a frozen teacher: another tiny Llama, sharded by the same rules) on the tiny Llama.
DPO_METHODS = DISTILL_METHODS = GRPO_METHODS = ("full", "lora", "qlora")
# Sentence embeddings on the bare tiny BERT: in-batch negatives span the global batch, with the
# same-group masking, however the batch is sharded.
EMBEDDING_METHODS = ("full",)
METHODS = method_registry.names()  # a new method is covered without touching this file
# Small options keep every case cheap; everything else is the method's default.
OPTIONS = {"adapters": dict(bottleneck=8), "prompt_tuning": dict(num_virtual_tokens=4),
           "qlora": dict(block_size=16),  # divides BERT's 32 inputs into 2 blocks: fsdp splits them
           "prefix_tuning": dict(num_virtual_tokens=4), "top_layers": dict(num_layers=1)}
BERT_ONLY = "supports BERT-family models only"
# Cases that give different numbers because of a known ftjax bug: {(model, method, mesh): why}.
# They are marked xfail(strict=True), so a fix makes them fail until they are taken off.
KNOWN_BUGS: dict[tuple[str, str, str], str] = {}
# Combinations the trainer refuses by design, with the refusal they must give on every mesh.
REFUSED = {("llama", "linear_probe"): "trains no parameters"}  # a causal LM has no task head

# Tiny Llama whose sharded dims all divide by 8: q_proj 64 -> 64 (8 heads of 8), k/v_proj
# 64 -> 32 (4 kv heads), mlp 128, vocab padded to a multiple of 8; q/k/v/o biases give BitFit
# something to train; tied embeddings like SmolLM2.
LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
             num_key_value_heads=4, attention_bias=True, tie_word_embeddings=True,
             max_position_embeddings=64)


def cases() -> list[tuple[str, str, str]]:
  """(model, method, mesh name) of every run; mesh 'one' is 1 device."""
  out = [("llama", "full", name) for name in ("one", *MESHES)]
  out += [(model, method, name) for model in MODELS for method in METHODS
          for name in ("one", "mixed") if (model, method, name) not in out]
  out += [("llama_dpo", method, name) for method in DPO_METHODS for name in ("one", "mixed")]
  out += [("llama_distill", method, name) for method in DISTILL_METHODS
          for name in ("one", "mixed")]
  out += [("llama_grpo", method, name) for method in GRPO_METHODS for name in ("one", "mixed")]
  out += [("gemma", method, name) for method in GEMMA_METHODS for name in ("one", "mixed")]
  out += [("phi3", method, name) for method in PHI3_METHODS for name in ("one", "mixed")]
  out += [(model, method, name) for model, method in MOE_CASES for name in ("one", "mixed")]
  out += [(model, method, name) for model in ENCODERS for method in ENCODER_METHODS
          for name in ("one", "mixed")]
  out += [("bert_embedding", method, name) for method in EMBEDDING_METHODS
          for name in ("one", "mixed")]
  return out


def case_id(model, method, mesh_name) -> str:
  return f"{model}-{method}-{mesh_name}"


def mesh_shape(mesh_name) -> tuple[int, int, int]:
  return ONE if mesh_name == "one" else MESHES[mesh_name]


# ------------------------------------------------------------ assets and the two workers' run

def make_mesh_llama(path: pathlib.Path, seed: int = 0) -> pathlib.Path:
  """`tiny_assets.make_tiny_llama`'s ChatML tokenizer with a Llama whose dims shard by 8."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from tiny_assets import make_tiny_llama  # pylint: disable=g-import-not-at-top

  make_tiny_llama(path)  # the tokenizer, and a model replaced here
  config = transformers.LlamaConfig.from_pretrained(str(path))
  config.update(LLAMA)
  config.vocab_size = 8 * math.ceil(config.vocab_size / 8)
  torch.manual_seed(seed)
  transformers.LlamaForCausalLM(config).save_pretrained(str(path))
  return path


def make_mesh_gemma(path: pathlib.Path) -> pathlib.Path:
  """`tiny_assets.make_tiny_gemma3` with dims that shard by 8 (the Llama's, head_dim 8) and two
  layers, sliding then global."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from tiny_assets import make_tiny_gemma3, move_norms  # pylint: disable=g-import-not-at-top

  make_tiny_gemma3(path)
  config = transformers.Gemma3TextConfig.from_pretrained(str(path))
  config.update(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=8, num_key_value_heads=4, head_dim=8,
                     layer_types=["sliding_attention", "full_attention"],
                     vocab_size=8 * math.ceil(config.vocab_size / 8)))
  torch.manual_seed(0)
  model = transformers.Gemma3ForCausalLM(config)
  move_norms(model, 0.2)
  model.save_pretrained(str(path))
  return path


def make_mesh_phi3(path: pathlib.Path) -> pathlib.Path:
  """`tiny_assets.make_tiny_phi3` with dims that shard by 8 (qkv_proj 64 -> 128)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from tiny_assets import make_tiny_phi3  # pylint: disable=g-import-not-at-top

  make_tiny_phi3(path)
  config = transformers.Phi3Config.from_pretrained(str(path))
  config.update(dict(hidden_size=64, intermediate_size=128, num_attention_heads=8,
                     num_key_value_heads=4, vocab_size=8 * math.ceil(config.vocab_size / 8)))
  torch.manual_seed(0)
  transformers.Phi3ForCausalLM(config).save_pretrained(str(path))
  return path


def make_mesh_moe(path: pathlib.Path, model_type: str) -> pathlib.Path:
  """`tiny_assets.make_tiny_moe` with dims that shard by 8 (the Llama's, 4 experts: 2 per fsdp
  shard of the mixed mesh)."""
  from tiny_assets import make_tiny_moe  # pylint: disable=g-import-not-at-top

  make_tiny_moe(path, model_type=model_type)  # for the tokenizer's size
  vocab = 8 * math.ceil(json.loads((path / "config.json").read_text())["vocab_size"] / 8)
  dims = dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=4, vocab_size=vocab,
              num_experts_per_tok=2)
  if model_type == "mixtral":
    dims.update(intermediate_size=32)
  else:
    dims.update(head_dim=8, num_experts=4, moe_intermediate_size=32, intermediate_size=64)
  return make_tiny_moe(path, model_type=model_type, **dims)


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_bert_dir, tiny_sentiment_files) -> pathlib.Path:
  """Runs every case of `cases()` in a 1-device and an 8-device worker; their output folder."""
  from tiny_assets import (  # pylint: disable=g-import-not-at-top
      make_conversations, make_sentiment_rows, make_tiny_deberta, make_tiny_distilbert,
      make_tiny_modernbert,
      make_tiny_roberta, write_jsonl)

  root = tmp_path_factory.mktemp("mesh_equivalence")
  assets = {
      "bert": str(tiny_bert_dir),
      "sentiment": {k: str(v) for k, v in tiny_sentiment_files.items()},
      "llama": str(make_mesh_llama(root / "llama")),
      "teacher": str(make_mesh_llama(root / "teacher", seed=1)),  # the same tokenizer
      "gemma": str(make_mesh_gemma(root / "gemma")),
      "phi3": str(make_mesh_phi3(root / "phi3")),
      "mixtral": str(make_mesh_moe(root / "mixtral", "mixtral")),
      "qwen3_moe": str(make_mesh_moe(root / "qwen3_moe", "qwen3_moe")),
      "roberta": str(make_tiny_roberta(root / "roberta")),
      "distilbert": str(make_tiny_distilbert(root / "distilbert")),
      "modernbert": str(make_tiny_modernbert(root / "modernbert")),
      "deberta": str(make_tiny_deberta(root / "deberta")),
      "chat": {"train": str(write_jsonl(root / "chat_train.jsonl", make_conversations(48, 0))),
               "validation": str(write_jsonl(root / "chat_dev.jsonl", make_conversations(8, 1)))},
  }
  pairs = [{"prompt": c["messages"][0]["content"], "chosen": c["messages"][1]["content"],
            "rejected": "i am not sure"} for c in make_conversations(24, 2)]
  assets["pairs"] = {"train": str(write_jsonl(root / "pairs_train.jsonl", pairs)),
                     "validation": str(write_jsonl(root / "pairs_dev.jsonl", pairs[:4]))}
  texts = [r["text"] for r in make_sentiment_rows(48, 3)]
  text_pairs = [{"anchor": a, "positive": b, "group": str(i % 5)}
                for i, (a, b) in enumerate(zip(texts[0::2], texts[1::2]))]
  assets["text_pairs"] = {"train": str(write_jsonl(root / "text_pairs_train.jsonl", text_pairs)),
                          "validation": str(write_jsonl(root / "text_pairs_dev.jsonl",
                                                        text_pairs[:4]))}
  prompts = [{"prompt": p["prompt"]} for p in pairs]
  assets["prompts"] = {"train": str(write_jsonl(root / "prompts_train.jsonl", prompts)),
                       "validation": str(write_jsonl(root / "prompts_dev.jsonl", prompts[:4]))}
  out = root / "out"
  out.mkdir()
  workers = {}
  for devices in (1, 8):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    log = root / f"worker_{devices}.log"  # a file, not a pipe: a full pipe would stall a worker
    with log.open("w") as f:
      workers[devices] = (log, subprocess.Popen(
          [sys.executable, __file__, str(out), json.dumps(assets)], env=env, stdout=f,
          stderr=subprocess.STDOUT))
  try:
    for devices, (log, proc) in workers.items():
      proc.wait(timeout=1800)
      assert proc.returncode == 0, f"{devices}-device worker:\n{log.read_text()[-6000:]}"
  finally:
    for _, proc in workers.values():
      if proc.poll() is None:
        proc.kill()
  return out


def config_for(model, method, mesh_name, assets):
  from ftjax.config import base_config  # pylint: disable=g-import-not-at-top

  c = base_config()
  c.method.name = method
  for key, value in OPTIONS.get(method, {}).items():
    c.method[method][key] = value
  c.data.test_split = ""
  c.data.padding = "max_length"  # one shape: one compilation per case
  if model in ("bert", "bert_embedding") + ENCODERS:
    c.model.checkpoint = assets[model.removesuffix("_embedding")]
    c.data.name = "files"
    c.data.files.train = assets["sentiment"]["train"]
    c.data.files.validation = assets["sentiment"]["validation"]
    c.data.max_length = 16
    c.data.bucket_boundaries = (16,)
    if model == "bert_embedding":
      c.model.task, c.data.name = "base", "pair_files"
      c.data.files.train = assets["text_pairs"]["train"]
      c.data.files.validation = assets["text_pairs"]["validation"]
      c.eval.metric, c.eval.mode = "loss", "min"
  else:
    c.model.checkpoint = assets[model if model in ("gemma", "phi3", "mixtral", "qwen3_moe")
                                else "llama"]
    if model == "qwen3_moe":
      c.model.moe.capacity_factor = 0.5
    c.model.task = "causal_lm"
    c.data.name = "chat_files"
    c.data.files.train = assets["chat"]["train"]
    c.data.files.validation = assets["chat"]["validation"]
    if model == "llama_dpo":
      c.objective.name = "preference"
      c.objective.preference.beta = 1.0  # large rewards: differences show
      c.data.name = "preference_files"
      c.data.files.train = assets["pairs"]["train"]
      c.data.files.validation = assets["pairs"]["validation"]
    if model == "llama_grpo":  # 2 updates per rollout: the old policy's log-probs, on the mesh
      g = c.objective.grpo
      c.objective.name = "grpo"
      g.num_generations, g.max_new_tokens, g.num_iterations, g.beta = 4, 6, 2, 0.5
      g.rewards = ("positive_share",)
      g.reward_modules = (str(pathlib.Path(__file__).with_name("grpo_rewards.py")),)
      c.data.name = "prompt_files"
      c.data.files.train = assets["prompts"]["train"]
      c.data.files.validation = assets["prompts"]["validation"]
    if model == "llama_distill":
      c.objective.name = "distill"
      c.objective.distill.teacher = assets["teacher"]
      c.objective.distill.divergence = "jsd"
      c.objective.distill.task_weight = 0.25
    c.data.max_length = 24
    c.data.bucket_boundaries = (24,)
    c.eval.metric, c.eval.mode = ("reward", "max") if model == "llama_grpo" else ("loss", "min")
  c.train.steps = STEPS
  c.train.batch_size = 8
  c.optimizer.lr = 1e-3
  if model == "gemma":
    # Gemma's tiny gradients (sandwich norms around GeGLU): some elements are ~1e-8 float noise,
    # which Adam's first steps (about lr x sign(g)) turn into 2e-5 differences on the mixed
    # mesh while every step's loss agrees; plain SGD keeps noise noise (as GRPO, below).
    c.optimizer.name, c.optimizer.lr, c.optimizer.momentum = "sgd", 0.5, 0.0
  if model == "llama_grpo":
    # Group-centred advantages cancel: some gradient elements are ~1e-8 sums of ~1e-3 terms, and
    # Adam's first step (about lr x sign(g)) turns their float noise into 1e-5 differences. Plain
    # SGD moves each parameter by its gradient, so noise stays noise and a real difference shows.
    c.optimizer.name, c.optimizer.lr, c.optimizer.momentum = "sgd", 1.0, 0.0
  c.mesh.shape = mesh_shape(mesh_name)
  if mesh_name.endswith("_logits_chunk"):
    c.model.logits_chunk = LOGITS_CHUNK
  return c


def run_case(model, method, mesh_name, assets, out: pathlib.Path) -> None:
  """Trains one case STEPS steps as the trainer does; writes its losses, shardings and state."""
  import jax  # pylint: disable=g-import-not-at-top
  from ftjax import sharding, train  # pylint: disable=g-import-not-at-top
  from ftjax.train import batches as train_batches  # pylint: disable=g-import-not-at-top
  from ftjax.errors import UserError  # pylint: disable=g-import-not-at-top
  from ftjax.methods import base  # pylint: disable=g-import-not-at-top

  name = case_id(model, method, mesh_name)
  record: dict = {"case": name}
  start = time.time()
  try:
    cfg = config_for(model, method, mesh_name, assets)
    exp = train.build_experiment(cfg)
    batch_sharding = sharding.batch_sharding(exp.mesh)
    step = jax.jit(train.make_train_step(exp.graphdef, exp.tx, exp.schedule, exp.task),
                   in_shardings=(exp.state_shardings, batch_sharding),
                   out_shardings=(exp.state_shardings, sharding.replicated(exp.mesh)),
                   donate_argnums=0)
    # The trainer's batch source: the data, or GRPO's rollouts of the current policy.
    batches = train_batches.batch_source(exp, exp.dataset.train_iterator(
        train.local_batch_size(cfg.train.batch_size, exp.mesh), seed=cfg.seed, shard_index=0,
        shard_count=1))
    arrays, specs = {}, {}
    groups = ("params", "frozen") + (("teacher",) if exp.state.teacher is not None else ())
    for group in groups:  # the built state, before any step
      for path, x in jax.tree_util.tree_flatten_with_path(getattr(exp.state, group))[0]:
        arrays[f"initial/{group}/{base.keypath_string(path)}"] = np.asarray(x)
    state, losses, rollouts = exp.state, [], []
    for _ in range(STEPS):
      batch, host = batches.next(state)
      state, metrics = step(state, sharding.put_batch(batch, batch_sharding))
      losses.append(float(metrics["loss"]))
      rollouts.append({k: float(v) for k, v in host.items() if k != "rollout_sec"})
    for group in groups:
      for path, x in jax.tree_util.tree_flatten_with_path(getattr(state, group))[0]:
        key = f"{group}/{base.keypath_string(path)}"
        arrays[key] = np.asarray(x)
        specs[key] = [list(a) if isinstance(a, tuple) else a for a in x.sharding.spec]
    np.savez(out / f"{name}.npz", **arrays)
    record.update(losses=losses, rollouts=rollouts, specs=specs, devices=int(exp.mesh.size),
                  trainable=exp.param_counts["trainable"])
  except UserError as e:
    record["user_error"] = str(e)
  except Exception:  # pylint: disable=broad-except  (the test of this case reports it)
    record["error"] = traceback.format_exc()
  record["seconds"] = round(time.time() - start, 2)
  (out / f"{name}.json").write_text(json.dumps(record))
  print(f"{name}: {record['seconds']}s", flush=True)


def worker(out: str, assets_json: str) -> None:
  """Runs the cases whose mesh has as many devices as this process has."""
  import jax  # pylint: disable=g-import-not-at-top

  assets = json.loads(assets_json)
  for case in cases():
    if math.prod(mesh_shape(case[2])) == jax.device_count():
      run_case(*case, assets, pathlib.Path(out))


# ------------------------------------------------------------------ comparisons (test process)

def load(out: pathlib.Path, model, method, mesh_name):
  """The case's record and arrays. A BERT-only method on Llama xfails; other errors fail."""
  name = case_id(model, method, mesh_name)
  record = json.loads((out / f"{name}.json").read_text())
  if "error" in record:
    pytest.fail(f"{name} raised:\n{record['error']}")
  if "user_error" in record:
    if REFUSED.get((model, method), "\0") in record["user_error"]:
      return record, None
    if BERT_ONLY in record["user_error"]:
      pytest.xfail(f"{method} on {model}: {record['user_error']}")
    pytest.fail(f"{name} raised UserError: {record['user_error']}")
  with np.load(out / f"{name}.npz") as arrays:
    return record, dict(arrays)


def compare(out, model, method, mesh_name) -> dict:
  """Every step's loss and every final param (trainable and frozen) vs the 1-device run."""
  ref, ref_arrays = load(out, model, method, "one")
  got, got_arrays = load(out, model, method, mesh_name)
  where = f"{method} on {model}, mesh {mesh_name} {MESHES[mesh_name]} vs 1 device"
  if (model, method) in REFUSED:  # refused alike on 1 device and on the mesh, never trained
    assert ref_arrays is None and got_arrays is None, f"{where}: expected a refusal"
    return None
  assert ref["devices"] == 1 and got["devices"] == 8, where
  assert len(got["losses"]) == len(ref["losses"]) == STEPS, where
  for i, (a, b) in enumerate(zip(got["losses"], ref["losses"])):
    assert np.isfinite(a) and abs(a - b) <= ATOL, \
        f"{where}: loss at step {i + 1}: {a} vs {b} (abs diff {abs(a - b):.3g})"
  assert got_arrays.keys() == ref_arrays.keys(), \
      f"{where}: param paths differ: {sorted(got_arrays.keys() ^ ref_arrays.keys())}"
  assert any(k.startswith("params/") for k in ref_arrays) == (ref["trainable"] > 0), where
  # The sharded build (ftjax.train.construct) makes the same initial state on 8 devices as on 1:
  # the frozen variables bit for bit (loaded slice by slice, or derived exactly, e.g. QLoRA's
  # codes), the trainable ones within ATOL (a method's init may reduce over sharded axes).
  for key in [k for k in ref_arrays if k.startswith(("initial/frozen/", "initial/teacher/"))]:
    np.testing.assert_array_equal(got_arrays[key], ref_arrays[key], err_msg=f"{where}: {key}")
  worst = []
  for key, expected in ref_arrays.items():
    actual = got_arrays[key]
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, \
        f"{where}: {key}: {actual.shape} {actual.dtype} vs {expected.shape} {expected.dtype}"
    diff = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)),
                        initial=0.0))
    if not diff <= ATOL:  # also catches NaN
      worst.append((diff, key))
  assert not worst, (f"{where}: {len(worst)} of {len(ref_arrays)} params differ by more than "
                     f"{ATOL}; largest: " + ", ".join(f"{k} (max abs diff {d:.3g})"
                                                      for d, k in sorted(worst, reverse=True)[:5]))
  return got


def sharded_along(specs: dict, axis: str) -> list[str]:
  """The params whose sharding uses mesh axis `axis`."""
  axes = lambda entry: entry if isinstance(entry, list) else [entry]
  return [k for k, spec in specs.items() if any(axis in axes(e) for e in spec)]


def known_bug(model, method, mesh_name):
  reason = KNOWN_BUGS.get((model, method, mesh_name))
  return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


@pytest.mark.parametrize("mesh_name", [pytest.param(n, marks=known_bug("llama", "full", n))
                                       for n in MESHES])
def test_llama_full_fine_tuning_on_8_devices_matches_1(results, mesh_name):
  got = compare(results, "llama", "full", mesh_name)
  # Not vacuous: each rule shards what it names along the mesh axis of size 8.
  specs = got["specs"]
  fsdp, tensor = sharded_along(specs, "fsdp"), sharded_along(specs, "tensor")
  if mesh_name == "data":
    assert not fsdp and not tensor, specs
  if mesh_name in ("fsdp", "mixed", "mixed_logits_chunk"):
    for key in ("params/model.embed_tokens.embedding", "params/model.layers.0.self_attn.q_proj.kernel",
                "params/model.layers.1.mlp.down_proj.kernel"):
      assert key in fsdp, (key, specs)
  if mesh_name in ("tensor", "mixed", "mixed_logits_chunk"):
    for key in ("params/model.embed_tokens.embedding", "params/model.layers.0.self_attn.q_proj.kernel",
                "params/model.layers.0.self_attn.k_proj.bias", "params/model.layers.1.mlp.down_proj.kernel"):
      assert key in tensor, (key, specs)


@pytest.mark.parametrize("method", GEMMA_METHODS)
def test_gemma_on_a_2x2x2_mesh_matches_1_device(results, method):
  got = compare(results, "gemma", method, "mixed")
  specs = got["specs"]
  if method == "full":
    for key in ("params/model.embed_tokens.embedding",
                "params/model.layers.1.self_attn.q_proj.kernel",
                "params/model.layers.0.mlp.down_proj.kernel"):
      assert key in sharded_along(specs, "fsdp") and key in sharded_along(specs, "tensor"), specs
  if method == "lora":
    assert specs["params/model.layers.0.self_attn.q_proj.lora_b"] == [None, "tensor"], specs


@pytest.mark.parametrize("model", ENCODERS)
@pytest.mark.parametrize("method", ENCODER_METHODS)
def test_encoders_on_a_2x2x2_mesh_match_1_device(results, model, method):
  specs = compare(results, model, method, "mixed")["specs"]
  key = {("roberta", "full"): "params/roberta.encoder.layer.0.attention.self_attn.query.kernel",
         ("roberta", "lora"): "params/classifier.dense.kernel",
         ("distilbert", "full"): "params/distilbert.transformer.layer.0.attention.q_lin.kernel",
         ("distilbert", "lora"): "params/pre_classifier.kernel",
         ("modernbert", "full"): "params/model.layers.0.attn.Wqkv.kernel",
         ("modernbert", "lora"): "params/head.dense.kernel",
         ("deberta", "full"): "params/deberta.encoder.layer.0.attention.self_attn.query_proj.kernel",
         ("deberta", "lora"): "params/context_pooler.dense.kernel"}[model, method]
  assert key in sharded_along(specs, "fsdp") or key in sharded_along(specs, "tensor"), specs


@pytest.mark.parametrize("method", EMBEDDING_METHODS)
def test_sentence_embeddings_on_a_2x2x2_mesh_match_1_device(results, method):
  got = compare(results, "bert_embedding", method, "mixed")
  key = "params/encoder.layer.0.attention.self_attn.query.kernel"  # the bare encoder's params
  assert key in sharded_along(got["specs"], "fsdp") + sharded_along(got["specs"], "tensor"), got


@pytest.mark.parametrize("method", PHI3_METHODS)
def test_phi3_on_a_2x2x2_mesh_matches_1_device(results, method):
  specs = compare(results, "phi3", method, "mixed")["specs"]
  if method == "full":
    key = "params/model.layers.0.self_attn.qkv_proj.kernel"
    assert key in sharded_along(specs, "fsdp") and key in sharded_along(specs, "tensor"), specs
  else:  # the default LoRA target is the fused qkv_proj
    assert specs["params/model.layers.0.self_attn.qkv_proj.lora_b"] == [None, "tensor"], specs


@pytest.mark.parametrize("model,method", MOE_CASES)
def test_mixtures_of_experts_on_a_2x2x2_mesh_match_1_device(results, model, method):
  specs = compare(results, model, method, "mixed")["specs"]
  if method == "full":  # the experts along the expert axis (fsdp), their width along tensor
    block = "block_sparse_moe" if model == "mixtral" else "mlp"
    down = "w2" if model == "mixtral" else "down_proj"
    assert specs[f"params/model.layers.0.{block}.experts.{down}"] == ["fsdp", "tensor", None], specs
  else:
    assert specs["params/model.layers.0.self_attn.q_proj.lora_b"] == [None, "tensor"], specs


@pytest.mark.parametrize("model,method", [
    pytest.param(model, method, marks=known_bug(model, method, "mixed"))
    for model in MODELS for method in METHODS])
def test_every_method_on_a_2x2x2_mesh_matches_1_device(results, model, method):
  got = compare(results, model, method, "mixed")
  if got is None:
    return  # refused by design on 1 device and on the mesh (REFUSED)
  specs = got["specs"]
  assert sharded_along(specs, "fsdp") and sharded_along(specs, "tensor"), \
      f"{method} on {model}: nothing sharded along fsdp or tensor: {specs}"
  if method in ("lora", "dora", "qlora"):
    # The adapter follows its kernel's logical axes (embed -> heads on the default q/v targets):
    # A along the kernel's input axis (fsdp), B along its output axis (tensor).
    query = ("params/bert.encoder.layer.0.attention.self_attn.query" if model == "bert"
             else "params/model.layers.0.self_attn.q_proj")
    assert specs[f"{query}.lora_a"] == ["fsdp", None], specs
    assert specs[f"{query}.lora_b"] == [None, "tensor"], specs
  if method == "qlora":  # the quantized base [in / 2 or in / block, out] shards like the kernel
    stored = query.replace("params/", "frozen/", 1)
    assert specs[f"{stored}.q_codes"] == ["fsdp", "tensor"], specs
    assert specs[f"{stored}.q_scales"] == ["fsdp", "tensor"], specs


@pytest.mark.parametrize("method", DPO_METHODS)
def test_dpo_on_a_2x2x2_mesh_matches_1_device(results, method):
  """The reference policy is sharded like the params it copies; the pair axis stays whole."""
  got = compare(results, "llama_dpo", method, "mixed")
  assert sharded_along(got["specs"], "fsdp") and sharded_along(got["specs"], "tensor")
  ref, _ = load(results, "llama_dpo", method, "one")
  assert abs(ref["losses"][0] - math.log(2)) < 1e-6  # step 0: the policy is its own reference


@pytest.mark.parametrize("method", DISTILL_METHODS)
def test_distillation_on_a_2x2x2_mesh_matches_1_device(results, method):
  """The teacher is sharded by the student's rules (bit-identical to 1 device's, compare checks);
  the jsd loss mixed with the task's matches."""
  got = compare(results, "llama_distill", method, "mixed")
  teacher = {k: v for k, v in got["specs"].items() if k.startswith("teacher/")}
  assert sharded_along(teacher, "fsdp") and sharded_along(teacher, "tensor"), teacher
  assert all(np.isfinite(got["losses"])) and got["losses"][0] > 0


@pytest.mark.parametrize("method", GRPO_METHODS)
def test_grpo_on_a_2x2x2_mesh_matches_1_device(results, method):
  """The rollouts (sampled on the sharded policy, the same key) give the same completions and
  rewards; the old policy's log-probs (2 updates per rollout) and the KL to the reference agree."""
  got = compare(results, "llama_grpo", method, "mixed")
  ref, _ = load(results, "llama_grpo", method, "one")
  assert got["rollouts"] == ref["rollouts"]
  assert ref["rollouts"][0]["reward_group_std"] > 0  # advantages that are not all zero
  assert ref["rollouts"][2]["reward"] != ref["rollouts"][0]["reward"]  # step 3: a new rollout


def test_every_case_ran(results):
  """One record per case: a worker that stopped early must not look like a pass."""
  assert {p.stem for p in results.glob("*.json")} == {case_id(*c) for c in cases()}


if __name__ == "__main__":
  sys.path.insert(0, str(pathlib.Path(__file__).parent))  # tiny_assets, for the worker's imports
  worker(*sys.argv[1:3])
