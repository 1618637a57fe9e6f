"""`model.logits_chunk`: the causal-LM loss over chunks of positions equals the whole-batch loss.

The chunk is an option of the task's loss (`causal_lm.with_logits_chunk`), not of the model."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from ftjax import methods, sharding, train
from ftjax.config import base_config, validate
from ftjax.errors import UserError
from ftjax.models import registry
from ftjax.tasks import causal_lm
from tiny_assets import make_conversations, make_tiny_llama, write_jsonl


def _batch(b=3, t=13, vocab=64, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (b, t + 1)).astype(np.int32)
  segments = np.ones((b, t), np.int32)
  segments[1, 7:] = 2  # a packed second sequence
  segments[2, 10:] = 0  # right padding
  positions = np.where(segments == 2, np.arange(t) - 7, np.arange(t)).astype(np.int32)
  return {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:],
          "attention_mask": (segments > 0).astype(np.int32), "positions": positions,
          "segment_ids": segments,
          "loss_mask": ((rng.random((b, t)) > 0.3) & (segments > 0)).astype(np.int32)}


def _tiny_decoder(path, family):
  torch.manual_seed(0)
  if family == "gpt2":
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(path))
  else:  # untied head, grouped-query attention
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(path))
  model, _ = registry.build_model(path, task="causal_lm", rngs=nnx.Rngs(0))
  if family == "llama_prompt_tuning":  # the method's wrapper passes `return_hidden` through
    options = base_config().method
    options.name = "prompt_tuning"
    options.prompt_tuning.num_virtual_tokens = 3
    model = methods.get("prompt_tuning", options).apply(model, rngs=nnx.Rngs(1))
  return model


@pytest.mark.parametrize("family", ["llama", "gpt2", "llama_prompt_tuning"])
def test_chunked_loss_and_gradients_equal_the_whole_batch(tmp_path, family):
  model = _tiny_decoder(tmp_path / family, family)
  batch = _batch()

  def run(chunk):
    task = causal_lm.with_logits_chunk(chunk)
    (loss, aux), grads = nnx.value_and_grad(
        lambda m: task.train_loss(m, batch, None), has_aux=True)(model)
    return loss, aux, grads, task.eval_sums(model, batch, None)

  loss, aux, grads, sums = run(0)
  assert float(aux["loss_weight"]) == batch["loss_mask"].sum()
  for chunk in (1, 5, 13, 64):  # one position, uneven, exactly T, more than T
    c_loss, c_aux, c_grads, c_sums = run(chunk)
    np.testing.assert_allclose(c_loss, loss, rtol=1e-6, err_msg=f"chunk {chunk}")
    np.testing.assert_allclose(c_aux["token_accuracy"], aux["token_accuracy"], rtol=1e-6)
    for key in sums:
      np.testing.assert_allclose(c_sums[key], sums[key], rtol=1e-6, err_msg=key)
    flat, c_flat = jax.tree.leaves(grads), jax.tree.leaves(c_grads)
    assert len(flat) == len(c_flat) > 0
    for g, c in zip(flat, c_flat):
      np.testing.assert_allclose(c, g, rtol=1e-5, atol=1e-7, err_msg=f"chunk {chunk}")


def test_config_checks():
  cfg = base_config()
  cfg.model.checkpoint = "/some/model"
  cfg.model.logits_chunk = -1
  with pytest.raises(UserError, match="model.logits_chunk"):
    validate(cfg)
  cfg.model.logits_chunk = 128  # the base config's task is classification
  with pytest.raises(UserError, match="model.logits_chunk.*causal_lm"):
    validate(cfg)
  cfg.model.task = "causal_lm"
  cfg.eval.metric, cfg.eval.mode = "loss", "min"  # a metric the causal-LM task reports
  validate(cfg)


def _sft_config(tmp_path, chunk, scan_layers):
  c = base_config()
  c.model.checkpoint = str(make_tiny_llama(tmp_path / "llama"))
  c.model.task = "causal_lm"
  c.model.logits_chunk = chunk
  c.model.scan_layers = scan_layers
  c.data.name = "chat_files"
  c.data.files.train = str(write_jsonl(tmp_path / "train.jsonl", make_conversations(16, 0)))
  c.data.files.validation = str(write_jsonl(tmp_path / "dev.jsonl", make_conversations(4, 1)))
  c.data.test_split = ""
  c.data.max_length = 16
  c.train.batch_size = 3
  c.optimizer.lr = 1e-2
  c.eval.metric, c.eval.mode = "loss", "min"
  return c


def test_trainer_steps_equal_with_and_without_chunks(tmp_path):
  """The config key reaches the jitted train step (also through `scan_layers`)."""
  losses = {}
  for chunk, scan in ((0, False), (5, False), (5, True)):
    exp = train.build_experiment(_sft_config(tmp_path / f"{chunk}{scan}", chunk, scan))
    assert getattr(exp.task, "logits_chunk", 0) == chunk and exp.task.MODEL_TASK == "causal_lm"
    assert not hasattr(nnx.merge(exp.graphdef, exp.state.params, exp.state.frozen),
                       "logits_chunk")  # a loss option, not a model attribute
    batch_sharding = sharding.batch_sharding(exp.mesh)
    step = jax.jit(train.make_train_step(exp.graphdef, exp.tx, exp.schedule, exp.task, 1),
                   out_shardings=(exp.state_shardings, sharding.replicated(exp.mesh)))
    state, batch = exp.state, sharding.put_batch(_batch(t=16), batch_sharding)
    run = []
    for _ in range(3):
      state, metrics = step(state, batch)
      run.append(float(metrics["loss"]))
    losses[(chunk, scan)] = run
  reference = losses.pop((0, False))
  assert reference[-1] < reference[0]
  for key, run in losses.items():
    np.testing.assert_allclose(run, reference, rtol=1e-5, err_msg=str(key))
