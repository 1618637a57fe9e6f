"""GRPO with verifiable rewards (objective `grpo`): the policy samples, programs score, the
policy moves toward its better-than-its-group completions.

One train step is one optimizer update. Every `objective.grpo.num_iterations` steps the rollout
phase (`rollout`, run by the trainer's batch source `ftjax.train.batches`) takes the next
`train.batch_size` prompts, samples `num_generations` (G) completions of each from the current
policy with `ftjax.generate` (jitted, KV cache; temperature / top-p / top-k; the key
`fold_in(rng, rollout_index)`), scores each with the run's reward functions
(`ftjax.tasks.rewards`, plain Python), and turns the group-relative rewards into advantages:

  A_i = (r_i - mean(r_group)) / (std(r_group) + 1e-4)     scale_rewards = "group" (GRPO)
        (r_i - mean(r_group)) / (std(r_batch) + 1e-4)     "batch"
        r_i - mean(r_group)                               "none" (Dr. GRPO)

The steps then train on that rollout batch ([B*G, T] rows: prompt + completion, the loss mask
on completion tokens), `num_iterations` updates in all (the old policy's token log-probs are
taken when the batch is made, for the ratio of the later updates). Per completion token, with
the ratio rho = pi / pi_old, eps_low = `epsilon`, eps_high = `epsilon_high`:

  l_t = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) + beta KL_t,
  KL_t = exp(ref - logp) - (ref - logp) - 1   (k3, to the step-0 reference; beta = `beta`)

`loss` picks the normalisation: `grpo` (each completion's token mean, then the mean over
completions), `dapo` (the mean over every completion token of the batch: long completions
weigh by their length) or `dr_grpo` (the token sum over B*G*max_new_tokens: no length bias).
`mask_truncated` (DAPO's overlong filtering) leaves completions that hit `max_new_tokens`
without a stop token out of the loss. Evaluation generates greedily for every prompt of the
split and reports the mean reward, each function's mean, `accuracy` (exact_answer's mean, when
it is a reward), completion length and truncation.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.data import packing as packing_lib
from ftjax.errors import UserError
from ftjax.tasks import causal_lm, rewards as rewards_lib

MODEL_TASK = "causal_lm"
LOSSES = ("grpo", "dapo", "dr_grpo")
SCALES = ("group", "batch", "none")
HEADLINE_METRICS = ("reward", "accuracy", "completion_length")
uses_reference = True  # the module's default (beta > 0); `configure` binds the run's


@dataclasses.dataclass(frozen=True)
class Options:
  num_generations: int = 8
  max_new_tokens: int = 64
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  loss: str = "grpo"
  scale_rewards: str = "group"
  epsilon: float = 0.2
  epsilon_high: float = 0.2
  beta: float = 0.04
  num_iterations: int = 1
  mask_truncated: bool = False
  rewards: tuple = ("exact_answer",)
  reward_weights: tuple = ()
  format_pattern: str = r"\s*-?[\d,]+(?:\.\d+)?\s*"
  unit_test_timeout: float = 5.0
  reward_model: str = ""
  reward_model_label: str = ""
  reward_model_with_prompt: bool = False


def _options(cfg) -> Options:
  g = cfg.objective.grpo
  names = tuple(g.rewards)
  weights = tuple(float(w) for w in (g.reward_weights or ())) or (1.0,) * len(names)
  eps_high = float(g.epsilon_high) if g.epsilon_high else float(g.epsilon)
  return Options(num_generations=int(g.num_generations), max_new_tokens=int(g.max_new_tokens),
                 temperature=float(g.temperature), top_p=float(g.top_p), top_k=int(g.top_k),
                 loss=g.loss, scale_rewards=g.scale_rewards, epsilon=float(g.epsilon),
                 epsilon_high=eps_high, beta=float(g.beta), num_iterations=int(g.num_iterations),
                 mask_truncated=bool(g.mask_truncated), rewards=names, reward_weights=weights,
                 format_pattern=str(g.format_pattern),
                 unit_test_timeout=float(g.unit_test_timeout),
                 reward_model=str(g.reward_model), reward_model_label=str(g.reward_model_label),
                 reward_model_with_prompt=bool(g.reward_model_with_prompt))


def check_config(cfg) -> None:
  """Refuses options that name nothing or make the objective meaningless (one line each)."""
  g = cfg.objective.grpo
  def need(ok, key, why):
    if not ok:
      raise UserError(f"config key 'objective.grpo.{key}' {why}")
  need(g.loss in LOSSES, "loss", f"names an unknown loss '{g.loss}'; known: {', '.join(LOSSES)}")
  need(g.scale_rewards in SCALES, "scale_rewards",
       f"must be one of {', '.join(SCALES)}, got '{g.scale_rewards}'")
  need(int(g.num_generations) >= 2, "num_generations",
       f"must be >= 2 (advantages compare a group), got {g.num_generations}")
  need(int(g.max_new_tokens) >= 1, "max_new_tokens", f"must be >= 1, got {g.max_new_tokens}")
  need(float(g.temperature) > 0, "temperature",
       f"must be > 0 (a group of greedy samples is identical), got {g.temperature}")
  need(0 < float(g.top_p) <= 1 and int(g.top_k) >= 0, "top_p",
       f"must be in (0, 1] with top_k >= 0, got top_p={g.top_p}, top_k={g.top_k}")
  need(0 < float(g.epsilon) < 1 and float(g.epsilon_high or 0) >= 0, "epsilon",
       f"must be in (0, 1) (epsilon_high >= 0; 0: epsilon), got {g.epsilon}, {g.epsilon_high}")
  need(float(g.beta) >= 0, "beta", f"must be >= 0, got {g.beta}")
  need(int(g.num_iterations) >= 1, "num_iterations", f"must be >= 1, got {g.num_iterations}")
  need(len(tuple(g.rewards)) > 0, "rewards", "must name at least one reward function")
  need(not g.reward_weights or len(tuple(g.reward_weights)) == len(tuple(g.rewards)),
       "reward_weights", f"must give one weight per reward ({len(tuple(g.rewards))}), got "
       f"{len(tuple(g.reward_weights))}")
  need(cfg.data.max_length > int(g.max_new_tokens), "max_new_tokens",
       f"({g.max_new_tokens}) must leave room for the prompt in data.max_length "
       f"({cfg.data.max_length})")
  rewards_lib.load_modules(tuple(g.reward_modules or ()))


def configure(cfg) -> "Grpo":
  check_config(cfg)
  return Grpo(_options(cfg), logits_chunk=int(cfg.model.get("logits_chunk", 0)))


def model_kwargs(dataset) -> dict:
  del dataset
  return {}


def batch_counts(local_batch) -> tuple[int, int]:
  """Completions and real tokens of a rollout batch."""
  return (int(np.asarray(local_batch["weights"]).sum()),
          int(np.asarray(local_batch["attention_mask"]).sum()))


# --- advantages and the loss (tested against a torch reference) --------------------------------


def advantages(rewards: np.ndarray, group_size: int, scale: str) -> np.ndarray:
  """Group-relative advantages of rewards [N] laid out group after group (G = `group_size`)."""
  grouped = rewards.reshape(-1, group_size)
  centred = grouped - grouped.mean(axis=1, keepdims=True)
  if scale == "group":
    centred = centred / (grouped.std(axis=1, ddof=1, keepdims=True) + 1e-4)
  elif scale == "batch":
    centred = centred / (rewards.std(ddof=1) + 1e-4)
  return centred.reshape(-1)


def token_losses(opt: Options, logps, old_logps, ref_logps, advantage):
  """Per-token losses [N, T] and the clip indicators, from per-token log-probs [N, T] of the
  policy, the old policy (the rollout's) and the reference (None: no KL), advantages [N]."""
  ratio = jnp.exp(logps - old_logps)
  a = advantage[:, None]
  clipped = jnp.clip(ratio, 1 - opt.epsilon, 1 + opt.epsilon_high)
  loss = -jnp.minimum(ratio * a, clipped * a)
  kl = None
  if ref_logps is not None:
    delta = ref_logps - logps
    kl = jnp.exp(delta) - delta - 1
    loss = loss + opt.beta * kl
  low = (ratio < 1 - opt.epsilon) & (a < 0)
  high = (ratio > 1 + opt.epsilon_high) & (a > 0)
  return loss, kl, low, high


def reduce_loss(opt: Options, per_token, mask):
  """The batch loss from per-token losses [N, T] and the completion mask [N, T], and what it
  averages over (`loss_weight`: completions, or tokens for `dapo`)."""
  per_token = jnp.where(mask > 0, per_token, 0.0)
  rows = jnp.float32(mask.shape[0])
  if opt.loss == "grpo":
    per_row = per_token.sum(-1) / jnp.maximum(mask.sum(-1), 1.0)
    return per_row.sum() / rows, rows
  if opt.loss == "dapo":
    tokens = mask.sum()
    return per_token.sum() / jnp.maximum(tokens, 1.0), tokens
  return per_token.sum() / (rows * opt.max_new_tokens), rows  # dr_grpo


def completion_logps(model, batch, *, logits_chunk: int = 0):
  """Per-token log-probs [N, T] of the batch's targets under the model (0 off the mask)."""
  losses, _ = causal_lm.model_token_losses(model, batch, logits_chunk=logits_chunk)
  return jnp.where(batch["loss_mask"] > 0, -losses, 0.0)


class Grpo:
  """The `grpo` objective with its options bound."""

  MODEL_TASK = MODEL_TASK
  HEADLINE_METRICS = HEADLINE_METRICS
  model_kwargs = staticmethod(model_kwargs)
  batch_counts = staticmethod(batch_counts)

  def __init__(self, options: Options, logits_chunk: int = 0):
    self.options = options
    self.logits_chunk = logits_chunk
    self.uses_reference = options.beta > 0
    self.updates_per_rollout = options.num_iterations
    self.functions = {name: rewards_lib.get(name, options) for name in options.rewards}
    self.METRICS = {"reward": "max", "completion_length": "min", "truncated": "min",
                    **{f"reward/{n}": "max" for n in options.rewards}}
    if "exact_answer" in options.rewards:
      self.METRICS["accuracy"] = "max"

  # --- data ---

  def load_data(self, data_cfg, tokenizer, *, seed: int):
    from ftjax.data.prompts import load_prompt_data  # pylint: disable=g-import-not-at-top
    return load_prompt_data(data_cfg, tokenizer, seed=seed,
                            max_prompt_length=data_cfg.max_length - self.options.max_new_tokens)

  def train_batch_template(self, dataset, local_prompts: int) -> dict:
    """Zeros shaped like a rollout batch of `local_prompts` prompts (for the memory plan)."""
    rows = local_prompts * self.options.num_generations
    batch = packing_lib.collate_rows([], length=dataset.max_length, pad_id=0, batch_size=rows)
    batch.update(advantages=np.zeros((rows,), np.float32), weights=np.zeros((rows,), np.float32),
                 old_logps=np.zeros((rows, dataset.max_length), np.float32))
    return batch

  # --- the rollout phase ---

  def rollout(self, policy, dataset, prompt_batch: dict, key) -> tuple[dict, dict]:
    """One rollout batch and its metrics. `policy` (`ftjax.train.batches.Policy`): `generate`
    on the current parameters and `token_logps`; `prompt_batch["example"]`: the global batch's
    prompt indices (every process samples all of them, the model being sharded over all);
    `key`: this rollout's raw key. Returns this process's rows (`policy.local_rows`)."""
    opt = self.options
    g = opt.num_generations
    started = time.time()
    split = dataset.examples(dataset.train_split)
    examples = [split[int(i)] for i in np.asarray(prompt_batch["example"])]
    prompts = [e["input_ids"] for e in examples for _ in range(g)]
    completions = policy.generate(prompts, key, max_new_tokens=opt.max_new_tokens,
                                  temperature=opt.temperature, top_p=opt.top_p, top_k=opt.top_k)
    stops = set(policy.stop_token_ids)
    finished = np.array([bool(c) and c[-1] in stops for c in completions])
    texts = [dataset.tokenizer.decode(c, skip_special_tokens=True) for c in completions]
    per_fn, errors = rewards_lib.score(self.functions,
                                       texts, [e for e in examples for _ in range(g)])
    total = np.asarray(opt.reward_weights) @ per_fn
    adv = advantages(total, g, opt.scale_rewards).astype(np.float32)
    batch = packing_lib.collate_completions(prompts, completions, length=dataset.max_length,
                                            pad_id=dataset.pad_id)
    if opt.mask_truncated:
      batch["loss_mask"] = batch["loss_mask"] * finished[:, None].astype(np.float32)
    batch["advantages"] = adv
    batch["weights"] = np.ones((len(prompts),), np.float32)
    batch = policy.local_rows(batch)
    batch["old_logps"] = (policy.token_logps(batch) if opt.num_iterations > 1
                          else np.zeros(batch["input_ids"].shape, np.float32))
    grouped = total.reshape(-1, g)
    lengths = np.array([len(c) for c in completions], np.float64)
    metrics = {"reward": total.mean(), "reward_std": total.std(),
               "reward_group_std": grouped.std(axis=1, ddof=1).mean(),
               "groups_all_equal": float(np.mean(grouped.std(axis=1) == 0)),
               "completion_length": lengths.mean(), "completion_length_max": lengths.max(),
               "truncated": float(1 - finished.mean()),
               **{f"reward/{n}": per_fn[f].mean() for f, n in enumerate(self.functions)},
               **{f"reward_errors/{n}": float(c) for n, c in errors.items()},
               "rollout_sec": time.time() - started}
    return batch, {k: np.float32(v) for k, v in metrics.items()}

  def token_logps(self, model, batch):
    """Per-token log-probs of a rollout batch's completions (the old policy's, when made)."""
    return completion_logps(model, batch, logits_chunk=self.logits_chunk)

  # --- the steps ---

  def train_loss(self, model, batch, rngs, *, reference=None):
    del rngs  # dropout, if any, comes through the model's bound rngs
    opt = self.options
    logps = completion_logps(model, batch, logits_chunk=self.logits_chunk)
    old = (jax.lax.stop_gradient(logps) if opt.num_iterations == 1 else batch["old_logps"])
    ref = None
    if self.uses_reference:
      if reference is None:
        raise ValueError("grpo with beta > 0 needs a reference model")
      ref = jax.lax.stop_gradient(completion_logps(reference, batch,
                                                   logits_chunk=self.logits_chunk))
    mask = batch["loss_mask"].astype(jnp.float32)
    per_token, kl, low, high = token_losses(opt, logps, old, ref, batch["advantages"])
    loss, weight = reduce_loss(opt, per_token, mask)
    tokens = jnp.maximum(mask.sum(), 1.0)
    mean = lambda x: jnp.where(mask > 0, x, 0.0).sum() / tokens
    aux = {"clip_low": mean(low.astype(jnp.float32)), "clip_high": mean(high.astype(jnp.float32)),
           "clip_fraction": mean((low | high).astype(jnp.float32)), "loss_weight": weight}
    if kl is not None:
      aux["kl"] = mean(kl)
    return loss, aux

  def eval_generations(self, policy, dataset, split: str, batch_size: int, *,
                       per_prompt: bool = False) -> dict:
    """Greedy completions of every prompt of `split`, scored: the eval of a GRPO run.
    `per_prompt=True` adds `per_prompt` (each prompt's completion text and rewards)."""
    opt = self.options
    totals, per_fn_all, lengths, finished, errors = [], [], [], [], dict.fromkeys(self.functions, 0)
    all_texts = []
    stops = set(policy.stop_token_ids)
    for chunk in dataset.eval_batches(split, batch_size):
      completions = policy.generate([e["input_ids"] for e in chunk], None,
                                    max_new_tokens=opt.max_new_tokens, temperature=0.0)
      texts = [dataset.tokenizer.decode(c, skip_special_tokens=True) for c in completions]
      per_fn, errs = rewards_lib.score(self.functions, texts, chunk)
      all_texts += texts
      for n, c in errs.items():
        errors[n] += c
      per_fn_all.append(per_fn)
      totals.append(np.asarray(opt.reward_weights) @ per_fn)
      lengths += [len(c) for c in completions]
      finished += [bool(c) and c[-1] in stops for c in completions]
    if not totals:
      raise UserError(f"split '{split}' has no usable prompt")
    per_fn = np.concatenate(per_fn_all, axis=1)
    out = {"reward": float(np.concatenate(totals).mean()),
           **{f"reward/{n}": float(per_fn[f].mean()) for f, n in enumerate(self.functions)},
           "completion_length": float(np.mean(lengths)),
           "truncated": float(1 - np.mean(finished)),
           "reward_errors": int(sum(errors.values())), "num_prompts": int(per_fn.shape[1])}
    if "exact_answer" in self.functions:
      out["accuracy"] = out["reward/exact_answer"]
    if per_prompt:
      out["per_prompt"] = [{"completion": t, **{n: float(per_fn[f, i])
                                                 for f, n in enumerate(self.functions)}}
                           for i, t in enumerate(all_texts)]
    return out
