"""Prompt and prefix tuning on a tiny Llama (tied LM head, grouped-query attention).

- The shared method checks (`method_harness.check_common`) through the trainer's own step.
- PEFT parity: `export_peft` loads with `peft.PeftModel.from_pretrained` onto the transformers
  Llama and gives our logits (PEFT's prompt-tuning logits include the virtual positions; ours
  are the real tokens' only), and our cached generation equals greedy decoding with PEFT's
  forward. (PEFT 0.21's own `.generate` is not the oracle: with transformers 5 it hands its
  prefix over as `past_key_values`, which transformers now ignores in favour of `cache`.)
- A run through `train_and_evaluate` (checkpoints, eval, generated samples) exported with
  `ftjax.export` in PEFT's format.
"""

import json

import jax
import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx

from ftjax import export, generate, methods, train
from ftjax.errors import UserError
from ftjax.methods import prefix_tuning, prompt_layers, prompt_tuning
from ftjax.models import registry
from method_harness import check_common, run_method, tiny_llama_config
from tiny_assets import make_conversations, make_tiny_llama, write_jsonl

HIDDEN, LAYERS, KV_DIM = 32, 2, 16  # make_tiny_llama: 4 heads, 2 kv heads of 8
N = 3
IDS = np.array([[1, 5, 9, 14, 3, 7], [2, 7, 6, 11, 20, 8]])
MASK = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])  # right padding, as HF positions it
PROJECTION = dict(prefix_projection=True, encoder_hidden_size=8)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
  return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="module")
def chat_files(tmp_path_factory):
  root = tmp_path_factory.mktemp("chat")
  return {"train": write_jsonl(root / "train.jsonl", make_conversations(32, 0)),
          "validation": write_jsonl(root / "dev.jsonl", make_conversations(8, 1))}


def build(path, name, **options):
  model, _ = registry.build_model(path, task="causal_lm", rngs=nnx.Rngs(0))
  method = methods.registry._METHODS[name](dict(methods.get(name).defaults, **options))
  return method, method.apply(model, rngs=nnx.Rngs(1))


def randomize(model, method):
  """Trainables to N(0, 1): far enough from the init that the method visibly matters."""
  _, params, _ = nnx.split(model, method.trainable(), ...)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  nnx.update(model, jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype)
                                                 for x, k in zip(leaves, keys)]))


def peft_logits(peft_model, ids, mask=None):
  with torch.no_grad():
    mask = None if mask is None else torch.tensor(mask)
    logits = peft_model(input_ids=torch.tensor(ids), attention_mask=mask).logits.numpy()
  return logits[:, -ids.shape[1]:]  # prompt tuning also returns the virtual positions


@pytest.mark.parametrize("name,options,count,own", [
    ("prompt_tuning", {}, N * HIDDEN, r"^model\.embed_tokens\.prompt_embeddings$"),
    ("prefix_tuning", {}, N * LAYERS * 2 * KV_DIM, r"^prefix\.embedding$"),
    ("prefix_tuning", PROJECTION,
     N * KV_DIM + KV_DIM * 8 + 8 + 8 * LAYERS * 2 * KV_DIM + LAYERS * 2 * KV_DIM,
     r"^prefix\.(embedding|mlp_(in|out)(_bias)?)$"),
])
def test_harness_checks(llama_dir, chat_files, name, options, count, own):
  run = run_method(tiny_llama_config(llama_dir, chat_files, method=name, num_virtual_tokens=N,
                                     **options))
  check_common(run, expected_trainable=count, own=own, identity_atol=None)
  model = train.model_from_state(run.exp, run.final)
  assert isinstance(model, prompt_layers.PrefilledDecoder)
  assert run.exp.method.merge(model) is None
  # Logits for the real tokens only: the causal-LM loss never sees a virtual token.
  assert model(IDS).shape == IDS.shape + (model.config.vocab_size,)


@pytest.mark.parametrize("name,options", [("prompt_tuning", {}), ("prefix_tuning", {}),
                                          ("prefix_tuning", PROJECTION)])
def test_peft_parity_and_generation(llama_dir, tmp_path, name, options):
  method, model = build(llama_dir, name, num_virtual_tokens=N, **options)
  randomize(model, method)
  ours = np.asarray(model(IDS, MASK))
  base, _ = registry.build_model(llama_dir, task="causal_lm", rngs=nnx.Rngs(0))
  assert np.abs(ours - np.asarray(base(IDS, MASK)))[MASK > 0].max() > 0.1  # it does something

  out = method.export_peft(model, tmp_path / "peft", base_path=str(llama_dir))
  config = json.loads((out / "adapter_config.json").read_text())
  assert config["task_type"] == "CAUSAL_LM" and config["num_virtual_tokens"] == N
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(llama_dir))
  peft_model = peft.PeftModel.from_pretrained(hf, str(out)).eval()
  np.testing.assert_allclose(peft_logits(peft_model, IDS, MASK)[MASK > 0], ours[MASK > 0],
                             atol=1e-4, rtol=0)

  # Greedy generation through our KV cache (the virtual entries come from `init_cache`) equals
  # greedy decoding with PEFT's forward, and left padding in a batch changes nothing.
  short, long = IDS[0, :4].tolist(), IDS[1].tolist()
  got = generate.generate(model, [short, long], max_new_tokens=5)
  for prompt, tokens in zip((short, long), got):
    sequence = np.array([prompt])
    for _ in range(5):
      sequence = np.append(sequence, [[peft_logits(peft_model, sequence)[0, -1].argmax()]], axis=1)
    assert tokens == sequence[0, len(prompt):].tolist()


def test_packing_is_refused(llama_dir, chat_files):
  cfg = tiny_llama_config(llama_dir, chat_files, method="prompt_tuning")
  cfg.data.packing = True
  for name in ("prompt_tuning", "prefix_tuning"):
    with pytest.raises(UserError, match=r"data\.packing.*" + name):
      methods.get(name, cfg.method).check_config(cfg)
  methods.get("lora", cfg.method).check_config(cfg)  # others don't mind
  with pytest.raises(UserError, match=r"data\.packing.*prompt_tuning"):  # the trainer asks
    train.build_experiment(cfg)


def test_trained_run_exports_to_peft(llama_dir, chat_files, tmp_path):
  """Checkpoints, eval and generated samples of the trainer, then `ftjax.export --format peft`."""
  cfg = tiny_llama_config(llama_dir, chat_files, method="prefix_tuning", steps=2,
                          num_virtual_tokens=N, **PROJECTION)
  cfg.eval.every_steps = 2
  cfg.eval.num_samples = 2
  cfg.eval.sample_max_new_tokens = 3
  cfg.checkpoint.every_steps = 2
  workdir = tmp_path / "run"
  summary = train.train_and_evaluate(cfg, str(workdir))
  assert summary["final_eval"]["loss"] < summary["initial_eval"]["loss"]
  assert (workdir / "samples.jsonl").read_text().count('"final"') == 2

  exp = train.build_experiment(export.load_workdir_config(workdir))
  state, _ = train.restore_state(exp, str(workdir))
  model = train.model_from_state(exp, state)
  out = export.export(str(workdir), str(tmp_path / "peft"), "peft")
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(llama_dir))
  peft_model = peft.PeftModel.from_pretrained(hf, str(out)).eval()
  np.testing.assert_allclose(peft_logits(peft_model, IDS, MASK)[MASK > 0],
                             np.asarray(model(IDS, MASK))[MASK > 0], atol=1e-4, rtol=0)


def test_methods_find_their_hooks(llama_dir):
  _, model = build(llama_dir, "prompt_tuning", num_virtual_tokens=N)
  assert isinstance(model, prompt_tuning.PromptTunedDecoder)
  assert isinstance(model.model.embed_tokens, prompt_tuning.PromptEmbed)
  # The tied head still reads the unchanged vocabulary table at its path.
  assert model.model.embed_tokens.embedding[...].shape == (model.config.vocab_size, HIDDEN)
  _, model = build(llama_dir, "prefix_tuning", num_virtual_tokens=N)
  assert isinstance(model, prefix_tuning.PrefixTunedDecoder) and model.layout == (LAYERS, 2, 8)
  cache = model.init_cache(2, 5)
  assert cache.max_length == 5 + N and int(cache.index) == N
  np.testing.assert_array_equal(np.asarray(cache.segment_ids)[:, :N], 1)


def test_a_method_that_trains_nothing_is_refused(llama_dir, chat_files):
  # A causal LM has no classifier head, so a linear probe would train no parameter at all.
  cfg = tiny_llama_config(llama_dir, chat_files, method="linear_probe")
  with pytest.raises(UserError, match=r"method 'linear_probe' trains no parameters of this "
                                      r"causal_lm model"):
    train.build_experiment(cfg)
