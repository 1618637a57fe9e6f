"""Reward models (objective `reward`): a pairwise Bradley-Terry loss on chosen/rejected pairs.

The model is a sequence classifier with one label (`model.task = "classification"`: BERT, or a
decoder's `score` on its last real token, `LlamaForSequenceClassification`), read as the scalar
reward r of a whole rendered conversation (prompt + reply + end-of-turn token). Batches are the
preference data's ([B, 2, T]: chosen at index 0, rejected at 1; `ftjax.data.preference`); both
sides of every pair run in one forward pass over [2B, T] rows. Per pair, as TRL's
`RewardTrainer` computes it:

  loss = -log s(r_c - r_r) + center * (r_c + r_r)^2     center = objective.reward.center_rewards

`center_rewards` (TRL's `center_rewards_coefficient`, Eisenstein et al. 2023) keeps the rewards
near 0, so a downstream RL reward needs no offset. Every term is a mean over real pairs, so
gradient accumulation weights microbatches by their pair count exactly. The trained model
exports as an HF sequence classifier with one label (`ftjax.export --format hf`), which
transformers loads as a reward model.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ftjax.errors import UserError
from ftjax.tasks import preference

MODEL_TASK = "classification"
uses_reference = False
HEADLINE_METRICS = ("loss", "reward_accuracy", "reward_margin")
METRICS = {"loss": "min", "reward_accuracy": "max", "reward_margin": "max"}  # eval.metric -> mode

load_data = preference.load_data
batch_counts = preference.batch_counts


def check_config(cfg) -> None:
  center = cfg.objective.reward.center_rewards
  if not center >= 0:
    raise UserError(f"config key 'objective.reward.center_rewards' must be >= 0, got {center}")


@dataclasses.dataclass(frozen=True)
class Options:
  center_rewards: float = 0.0


def configure(cfg) -> "Reward":
  check_config(cfg)
  return Reward(Options(center_rewards=float(cfg.objective.reward.center_rewards)))


def model_kwargs(dataset) -> dict:
  del dataset
  return {"num_labels": 1}  # one scalar reward per sequence


def pair_rewards(model, batch, rngs=None):
  """Rewards [B, 2] (chosen, rejected) of a [B, 2, T] preference batch, in fp32."""
  b, _, t = batch["input_ids"].shape
  out = model(batch["input_ids"].reshape(2 * b, t), batch["attention_mask"].reshape(2 * b, t),
              rngs=rngs)
  return out.astype(jnp.float32).reshape(b, 2)


def pair_losses(opt: Options, rewards):
  """Per-pair Bradley-Terry losses [B] of rewards [B, 2] (tested against TRL's)."""
  loss = -jax.nn.log_sigmoid(rewards[:, 0] - rewards[:, 1])
  if opt.center_rewards:
    loss = loss + opt.center_rewards * jnp.square(rewards.sum(-1))
  return loss


class Reward:
  """The `reward` objective with its options bound."""

  MODEL_TASK = MODEL_TASK
  HEADLINE_METRICS = HEADLINE_METRICS
  METRICS = METRICS
  uses_reference = False
  load_data = staticmethod(load_data)
  model_kwargs = staticmethod(model_kwargs)
  batch_counts = staticmethod(batch_counts)

  def __init__(self, options: Options):
    self.options = options

  def _per_pair(self, model, batch, rngs=None):
    rewards = pair_rewards(model, batch, rngs)
    margin = rewards[:, 0] - rewards[:, 1]
    return {"loss": pair_losses(self.options, rewards),
            "reward_correct": (margin > 0).astype(jnp.float32), "reward_margin": margin,
            "chosen_reward": rewards[:, 0], "rejected_reward": rewards[:, 1],
            "reward_sq": jnp.square(rewards).sum(-1)}

  def train_loss(self, model, batch, rngs):
    """Mean loss over real pairs; reward accuracy, margin and rewards for the progress bar."""
    per = self._per_pair(model, batch, rngs)
    weights = batch["weights"].astype(jnp.float32)
    denominator = jnp.maximum(weights.sum(), 1.0)
    mean = {k: jnp.where(weights > 0, v * weights, 0.0).sum() / denominator for k, v in per.items()}
    return mean["loss"], {"reward_accuracy": mean["reward_correct"],
                          "reward_margin": mean["reward_margin"],
                          "chosen_reward": mean["chosen_reward"],
                          "rejected_reward": mean["rejected_reward"], "loss_weight": weights.sum()}

  def eval_sums(self, model, batch, dataset):
    """Sums over the batch's real pairs of the loss, correct pairs, margins and rewards."""
    del dataset
    return preference.pair_sums(self._per_pair(model, batch), batch["weights"])

  @staticmethod
  def finalize(sums) -> dict:
    return finalize(sums)


def finalize(sums) -> dict:
  """Means over the split's pairs; `reward_mean` / `reward_std` over all 2 x pairs rewards."""
  pairs = float(sums["pairs"])
  n = max(pairs, 1.0)
  mean = (float(sums["chosen_reward"]) + float(sums["rejected_reward"])) / (2 * n)
  variance = max(float(sums["reward_sq"]) / (2 * n) - mean * mean, 0.0)
  return {"loss": float(sums["loss"]) / n,
          "reward_accuracy": float(sums["reward_correct"]) / n,
          "reward_margin": float(sums["reward_margin"]) / n,
          "chosen_reward": float(sums["chosen_reward"]) / n,
          "rejected_reward": float(sums["rejected_reward"]) / n,
          "reward_mean": mean, "reward_std": variance ** 0.5,
          "num_pairs": int(round(pairs))}
