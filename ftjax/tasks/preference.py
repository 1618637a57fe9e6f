"""Preference optimisation (objective `preference`): DPO and its family on chosen/rejected pairs.

Batches come from `ftjax.data.preference` ([B, 2, T] rows: the chosen reply at index 0 of the
pair axis, the rejected one at 1). The log-probability of a reply is the sum of its reply
tokens' log-probs (the SFT loss mask); `n` is its reply token count. One config key,
`objective.preference.loss`, picks the loss (beta = `objective.preference.beta`, eps =
`label_smoothing`; pi / ref: the policy's and the reference's reply log-probs, c / r: chosen /
rejected; d = (pi_c - ref_c) - (pi_r - ref_r)):

  sigmoid  -(1-eps) log s(beta d) - eps log s(-beta d)        DPO (eps > 0: conservative DPO)
  robust   (-(1-eps) log s(beta d) + eps log s(-beta d)) / (1-2 eps)   robust DPO (Chowdhury+ 2024)
  ipo      ((pi_c-ref_c)/n_c - (pi_r-ref_r)/n_r - 1/(2 beta))^2        IPO, per-token (as TRL)
  hinge    max(0, 1 - beta d)                                   SLiC-HF
  simpo    -(1-eps) log s(z) - eps log s(-z), z = beta (pi_c/n_c - pi_r/n_r) - gamma   no reference
  orpo     NLL(chosen) - beta log s(log odds(pi_c/n_c) - log odds(pi_r/n_r))         no reference

Rewards (what `reward_accuracy` and `reward_margin` compare): beta (pi - ref) for the
reference-based losses, beta pi/n for SimPO and ORPO. `sft_weight` adds that multiple of the
chosen reply's per-token NLL (RPO; ORPO's own NLL has weight 1). Every term is a mean over
pairs (the NLL a per-pair token mean), so gradient accumulation weights microbatches by their
pair count exactly. The reference policy is the step-0 trainable parameters with the same frozen
weights (`TrainState.reference`): the base model for adapter methods (LoRA's B is 0), a copy of
the trainable weights for full fine-tuning.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.errors import UserError
from ftjax.tasks import causal_lm

MODEL_TASK = "causal_lm"
LOSSES = ("sigmoid", "robust", "ipo", "hinge", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")
HEADLINE_METRICS = ("loss", "reward_accuracy", "reward_margin", "logp_accuracy")
# eval.metric -> mode. logp_accuracy: the policy gives the chosen reply the higher mean per-token
# log-prob (reference-free, so it also scores the base model before training).
METRICS = {"loss": "min", "reward_accuracy": "max", "reward_margin": "max",
           "logp_accuracy": "max"}
uses_reference = True  # the module's default loss, sigmoid; `configure` binds the run's
_LM_KEYS = ("input_ids", "targets", "loss_mask", "segment_ids", "positions", "attention_mask")


def check_config(cfg) -> None:
  """Refuses options that name no loss or would make it meaningless (one line each)."""
  p = cfg.objective.preference
  if p.loss not in LOSSES:
    raise UserError(f"config key 'objective.preference.loss' names an unknown loss '{p.loss}'; "
                    f"known: {', '.join(LOSSES)}")
  if not p.beta > 0:
    raise UserError(f"config key 'objective.preference.beta' must be > 0, got {p.beta}")
  if not 0 <= p.label_smoothing < 0.5:
    raise UserError("config key 'objective.preference.label_smoothing' must be in [0, 0.5), got "
                    f"{p.label_smoothing}")
  if p.sft_weight < 0 or (p.loss == "orpo" and p.sft_weight):
    raise UserError("config key 'objective.preference.sft_weight' must be >= 0, and 0 with loss "
                    f"'orpo' (its NLL term is built in), got {p.sft_weight}")


@dataclasses.dataclass(frozen=True)
class Options:
  loss: str = "sigmoid"
  beta: float = 0.1
  label_smoothing: float = 0.0
  simpo_gamma: float = 0.5
  sft_weight: float = 0.0


def configure(cfg) -> "Preference":
  check_config(cfg)
  p = cfg.objective.preference
  return Preference(Options(loss=p.loss, beta=float(p.beta),
                            label_smoothing=float(p.label_smoothing),
                            simpo_gamma=float(p.simpo_gamma), sft_weight=float(p.sft_weight)),
                    logits_chunk=int(cfg.model.get("logits_chunk", 0)))


def load_data(data_cfg, tokenizer, *, seed: int):
  from ftjax.data.preference import load_preference_data  # pylint: disable=g-import-not-at-top
  return load_preference_data(data_cfg, tokenizer, seed=seed)


def model_kwargs(dataset) -> dict:
  del dataset
  return {}


def batch_counts(local_batch) -> tuple[int, int]:
  """Real pairs and non-padding tokens (both sides) in a host batch."""
  return int(np.asarray(local_batch["weights"]).sum()), int(np.asarray(
      local_batch["attention_mask"]).sum())


# --- the losses, on per-pair log-probs (tested against TRL's) ---------------------------------


def log1mexp(x):
  """log(1 - exp(x)) for x < 0, without cancellation on either side of -log 2."""
  return jnp.where(x < -np.log(2.0), jnp.log1p(-jnp.exp(x)), jnp.log(-jnp.expm1(x)))


def pair_losses(opt: Options, logps, counts, ref_logps=None, chosen_nll=None):
  """Per-pair losses and rewards: `(loss [B], chosen_reward [B], rejected_reward [B])`.

  `logps` / `ref_logps`: summed reply log-probs [B, 2] of the policy / reference (chosen, rejected);
  `counts`: reply token counts [B, 2]; `chosen_nll`: the chosen reply's mean token NLL [B]
  (for `orpo` and `sft_weight`).
  """
  beta, eps = opt.beta, opt.label_smoothing
  counts = jnp.maximum(counts, 1.0)
  if opt.loss in REFERENCE_FREE:
    mean = logps / counts
    rewards = beta * mean
    if opt.loss == "simpo":
      z = beta * (mean[:, 0] - mean[:, 1]) - opt.simpo_gamma
      loss = -(1 - eps) * jax.nn.log_sigmoid(z) - eps * jax.nn.log_sigmoid(-z)
    else:  # orpo
      log_odds = (mean[:, 0] - mean[:, 1]) - (log1mexp(mean[:, 0]) - log1mexp(mean[:, 1]))
      loss = chosen_nll - beta * jax.nn.log_sigmoid(log_odds)
  else:
    ratios = logps - ref_logps
    rewards = beta * ratios
    d = ratios[:, 0] - ratios[:, 1]
    if opt.loss == "sigmoid":
      loss = -(1 - eps) * jax.nn.log_sigmoid(beta * d) - eps * jax.nn.log_sigmoid(-beta * d)
    elif opt.loss == "robust":
      loss = ((-(1 - eps) * jax.nn.log_sigmoid(beta * d) + eps * jax.nn.log_sigmoid(-beta * d))
              / (1 - 2 * eps))
    elif opt.loss == "ipo":
      per_token = ratios / counts
      loss = (per_token[:, 0] - per_token[:, 1] - 1 / (2 * beta)) ** 2
    elif opt.loss == "hinge":
      loss = jax.nn.relu(1 - beta * d)
    else:
      raise ValueError(f"unknown preference loss {opt.loss!r}")
  if opt.sft_weight:
    loss = loss + opt.sft_weight * chosen_nll
  return loss, rewards[:, 0], rewards[:, 1]


# --- the objective -----------------------------------------------------------------------------


def reply_logps(model, batch, *, logits_chunk: int = 0):
  """Summed reply log-probs [B, 2], reply token counts [B, 2] and the chosen reply's mean token
  NLL [B]: both sides of every pair in one forward pass over [2B, T] rows."""
  b, _, t = batch["input_ids"].shape
  flat = {k: batch[k].reshape(2 * b, t) for k in _LM_KEYS}
  losses, _ = causal_lm.model_token_losses(model, flat, logits_chunk=logits_chunk)
  mask = flat["loss_mask"].astype(jnp.float32)
  # `where`, not a product: a non-finite logit at a masked position must not poison the sum.
  nll = jnp.where(mask > 0, losses, 0.0).sum(-1).reshape(b, 2)
  counts = mask.sum(-1).reshape(b, 2)
  return -nll, counts, nll[:, 0] / jnp.maximum(counts[:, 0], 1.0)


class Preference:
  """The `preference` objective with its options bound (the rest is the module's)."""

  MODEL_TASK = MODEL_TASK
  HEADLINE_METRICS = HEADLINE_METRICS
  METRICS = METRICS
  load_data = staticmethod(load_data)
  model_kwargs = staticmethod(model_kwargs)
  batch_counts = staticmethod(batch_counts)

  def __init__(self, options: Options, logits_chunk: int = 0):
    self.options = options
    self.logits_chunk = logits_chunk
    self.uses_reference = options.loss not in REFERENCE_FREE

  def _per_pair(self, model, batch, reference):
    logps, counts, chosen_nll = reply_logps(model, batch, logits_chunk=self.logits_chunk)
    ref_logps = None
    if self.uses_reference:
      if reference is None:
        raise ValueError(f"preference loss '{self.options.loss}' needs a reference model")
      ref_logps, _, _ = reply_logps(reference, batch, logits_chunk=self.logits_chunk)
      ref_logps = jax.lax.stop_gradient(ref_logps)
    loss, chosen_reward, rejected_reward = pair_losses(self.options, logps, counts, ref_logps,
                                                       chosen_nll)
    mean = logps / jnp.maximum(counts, 1.0)
    return {"loss": loss, "reward_correct": (chosen_reward > rejected_reward).astype(jnp.float32),
            "reward_margin": chosen_reward - rejected_reward, "chosen_reward": chosen_reward,
            "rejected_reward": rejected_reward, "logp_chosen": logps[:, 0],
            "logp_rejected": logps[:, 1], "logp_correct": (mean[:, 0] > mean[:, 1]).astype(
                jnp.float32), "chosen_nll": chosen_nll}

  def train_loss(self, model, batch, rngs, *, reference=None):
    """Mean loss over real pairs; reward accuracy/margin and log-probs for the progress bar."""
    del rngs  # dropout, if any, comes through the model's bound rngs
    per = self._per_pair(model, batch, reference)
    weights = batch["weights"].astype(jnp.float32)
    denominator = jnp.maximum(weights.sum(), 1.0)
    mean = {k: jnp.where(weights > 0, v * weights, 0.0).sum() / denominator for k, v in per.items()}
    loss = mean.pop("loss")
    aux = {"reward_accuracy": mean["reward_correct"], "reward_margin": mean["reward_margin"],
           "chosen_reward": mean["chosen_reward"], "rejected_reward": mean["rejected_reward"],
           "logp_chosen": mean["logp_chosen"], "logp_rejected": mean["logp_rejected"],
           "loss_weight": weights.sum()}
    return loss, aux

  def eval_sums(self, model, batch, dataset, *, reference=None):
    """Sums over the batch's real pairs of the loss, rewards, margins and log-probs."""
    del dataset
    return pair_sums(self._per_pair(model, batch, reference), batch["weights"])

  @staticmethod
  def finalize(sums) -> dict:
    return finalize(sums)


def pair_sums(per_pair: dict, weights) -> dict:
  """Weighted sums over a batch's real pairs of each per-pair value, and their count `pairs`."""
  weights = weights.astype(jnp.float32)
  sums = {k: jnp.where(weights > 0, v * weights, 0.0).sum() for k, v in per_pair.items()}
  sums["pairs"] = weights.sum()
  return sums


def finalize(sums) -> dict:
  """Means over the split's pairs: loss, reward accuracy / margin, rewards, log-probs."""
  pairs = float(sums["pairs"])
  n = max(pairs, 1.0)
  out = {"loss": float(sums["loss"]) / n,
         "reward_accuracy": float(sums["reward_correct"]) / n,
         "reward_margin": float(sums["reward_margin"]) / n,
         "chosen_reward": float(sums["chosen_reward"]) / n,
         "rejected_reward": float(sums["rejected_reward"]) / n,
         "logp_chosen": float(sums["logp_chosen"]) / n,
         "logp_rejected": float(sums["logp_rejected"]) / n,
         "logp_accuracy": float(sums["logp_correct"]) / n,
         "chosen_nll": float(sums["chosen_nll"]) / n,
         "num_pairs": int(round(pairs))}
  return out
