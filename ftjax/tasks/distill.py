"""Knowledge distillation (objective `distill`): the student matches a frozen teacher's output
distribution on the task's own data, optionally mixed with the task's loss.

Works on either head (`model.task`): a sequence classifier matches the teacher's distribution
over labels per example (`classification` data), a causal LM the teacher's next-token
distribution at every loss position (assistant tokens of `sft` chat data). The teacher
(`objective.distill.teacher`, any `model.checkpoint` source: an HF directory, an ftjax export,
`pypi:`, a `.gguf`) is built with the student's head, dtype and mesh sharding, frozen, and held in
`TrainState.teacher`; like the frozen base it is rebuilt from its checkpoint at every start, never
checkpointed (`ftjax.train.teacher`). Teacher and student must share a tokenizer.

Per position (or example), with s = log_softmax(z_student / T), t = log_softmax(z_teacher / T)
and T = `temperature`, the divergence `objective.distill.divergence` is

  forward_kl   KL(t || s)                  mean-seeking: the classic (Hinton) distillation loss
  reverse_kl   KL(s || t)                  mode-seeking (MiniLLM)
  jsd          b KL(t || m) + (1 - b) KL(s || m),   m = b t + (1 - b) s,   b = `jsd_beta`

TRL's `GKDTrainer.generalized_jsd_loss` (its beta 0 / 1 / b), with no T^2 factor, as TRL. The loss
is `(1 - task_weight) * divergence + task_weight * task loss` (cross-entropy on the labels or
targets), each a mean over the batch's real examples or loss tokens, so gradient accumulation
stays exact. Eval reports the head's own metrics (accuracy, perplexity, ...) and `divergence`:
model selection on the task metric needs no teacher at test time.

On-policy distillation (GKD, Agarwal et al. 2024; a causal LM on unpacked chat data):
with `on_policy_fraction` = GKD's lambda, each step is, with that probability (drawn from the
step's rollout key `fold_in(rng, rollout_index)`, one rollout per step), taken on the student's own replies instead of the dataset's:
the trainer's batch source (`ftjax.train.batches`) samples a reply to every prompt of the batch
from the current student (`on_policy_max_new_tokens`, `on_policy_temperature`) and the same loss
is computed on those tokens, the teacher scoring the student's samples. The task loss on such a
step is the student's NLL of its own sample (GKD uses the divergence alone: keep task_weight 0).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.data import packing as packing_lib
from ftjax.errors import UserError
from ftjax.tasks import causal_lm, classification

MODEL_TASKS = ("classification", "causal_lm")  # either head: the loss follows `model.task`
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
_BASE = {"classification": classification, "causal_lm": causal_lm}


def divergence(student_logits, teacher_logits, *, kind: str = "forward_kl", beta: float = 0.5,
               temperature: float = 1.0):
  """Per-row divergence [...] of the student's distribution from the teacher's over the last
  axis (labels or vocabulary), in fp32; see the module docstring."""
  if student_logits.shape[-1] != teacher_logits.shape[-1]:
    raise UserError(f"objective.distill.teacher gives {teacher_logits.shape[-1]} logits per "
                    f"position, the student {student_logits.shape[-1]}: they must share the "
                    "label set or vocabulary")
  s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  kl = lambda p, q: jnp.sum(jnp.exp(p) * (p - q), axis=-1)  # KL(p || q) from log-probs
  if kind == "forward_kl":
    return kl(t, s)
  if kind == "reverse_kl":
    return kl(s, t)
  m = jnp.logaddexp(s + math.log1p(-beta), t + math.log(beta))  # log of the mixture
  return beta * kl(t, m) + (1.0 - beta) * kl(s, m)


@dataclasses.dataclass(frozen=True)
class Options:
  teacher: str
  divergence: str = "forward_kl"
  jsd_beta: float = 0.5
  temperature: float = 1.0
  task_weight: float = 0.0
  on_policy_fraction: float = 0.0
  on_policy_max_new_tokens: int = 64
  on_policy_temperature: float = 0.9


def check_config(cfg) -> Options:
  d = cfg.objective.distill
  if not d.teacher:
    raise UserError("objective 'distill' needs config key 'objective.distill.teacher' (a model "
                    "source: a directory, pypi:, hf: or .gguf)")
  if d.divergence not in DIVERGENCES:
    raise UserError(f"config key 'objective.distill.divergence' is '{d.divergence}'; known: "
                    f"{', '.join(DIVERGENCES)}")
  if d.divergence == "jsd" and not 0.0 < d.jsd_beta < 1.0:
    raise UserError(f"config key 'objective.distill.jsd_beta' must be in (0, 1), got {d.jsd_beta}"
                    " (0 and 1 are divergence forward_kl and reverse_kl)")
  if not d.temperature > 0:
    raise UserError(f"config key 'objective.distill.temperature' must be > 0, got {d.temperature}")
  if not 0.0 <= d.task_weight < 1.0:
    raise UserError("config key 'objective.distill.task_weight' must be in [0, 1), got "
                    f"{d.task_weight} (1 would ignore the teacher: use the head's own objective)")
  lam = float(d.get("on_policy_fraction", 0.0))
  if not 0.0 <= lam <= 1.0:
    raise UserError("config key 'objective.distill.on_policy_fraction' must be in [0, 1], got "
                    f"{lam}")
  if lam and cfg.model.task != "causal_lm":
    raise UserError("config key 'objective.distill.on_policy_fraction' needs model.task="
                    f"causal_lm (the student samples replies), got '{cfg.model.task}'")
  if lam and cfg.data.get("packing", False):
    raise UserError("on-policy distillation (objective.distill.on_policy_fraction > 0) samples "
                    "one reply per row; set data.packing=False")
  if lam and not (0 < int(d.on_policy_max_new_tokens) < cfg.data.max_length
                  and float(d.on_policy_temperature) >= 0):
    raise UserError("config keys 'objective.distill.on_policy_max_new_tokens' (in [1, "
                    "data.max_length)) and 'on_policy_temperature' (>= 0) are out of range: "
                    f"{d.on_policy_max_new_tokens}, {d.on_policy_temperature}")
  return Options(teacher=str(d.teacher), divergence=d.divergence, jsd_beta=float(d.jsd_beta),
                 temperature=float(d.temperature), task_weight=float(d.task_weight),
                 on_policy_fraction=lam,
                 on_policy_max_new_tokens=int(d.get("on_policy_max_new_tokens", 64)),
                 on_policy_temperature=float(d.get("on_policy_temperature", 0.9)))


def configure(cfg) -> "Distill":
  options = check_config(cfg)
  base = _BASE[cfg.model.task]
  kind = OnPolicyDistill if options.on_policy_fraction else Distill
  return kind(options, cfg.model.task, base.configure(cfg), max_length=int(cfg.data.max_length))


@dataclasses.dataclass(frozen=True)
class Distill:
  """The objective bound to its options, the head's own objective (`base`: data, eval metrics,
  task loss) and, once the trainer has planned the teacher, the teacher's graphdef."""
  options: Options
  MODEL_TASK: str
  base: Any
  teacher_graphdef: Any = None
  max_length: int = 0
  uses_reference = False

  @property
  def teacher_checkpoint(self) -> str:
    return self.options.teacher

  def bind_teacher(self, graphdef) -> "Distill":
    return dataclasses.replace(self, teacher_graphdef=graphdef)

  @property
  def HEADLINE_METRICS(self):  # pylint: disable=invalid-name
    return (*self.base.HEADLINE_METRICS, "divergence")

  @property
  def METRICS(self):  # pylint: disable=invalid-name
    return {**self.base.METRICS, "divergence": "min"}

  def load_data(self, data_cfg, tokenizer, *, seed: int):
    return self.base.load_data(data_cfg, tokenizer, seed=seed)

  def model_kwargs(self, dataset) -> dict:
    return self.base.model_kwargs(dataset)

  def batch_counts(self, local_batch):
    return self.base.batch_counts(local_batch)

  def _divergence(self, student, teacher):
    o = self.options
    return divergence(student, teacher, kind=o.divergence, beta=o.jsd_beta,
                      temperature=o.temperature)

  def _per_row(self, model, batch, teacher, rngs=None):
    """(divergence, task loss, correct) per example [B] or per position [B, T], and weights."""
    if teacher is None:
      raise ValueError("the distill objective's losses need teacher= (TrainState.teacher)")
    if self.MODEL_TASK == "classification":
      student = classification.logits(model, batch, rngs).astype(jnp.float32)
      target = jax.lax.stop_gradient(classification.logits(teacher, batch).astype(jnp.float32))
      task, correct = causal_lm.token_losses(student, batch["labels"])
      return self._divergence(student, target), task, correct, batch["weights"]
    chunk = getattr(self.base, "logits_chunk", 0)
    weights = batch["loss_mask"]
    if not chunk:
      student = causal_lm.logits(model, batch, rngs)
      target = jax.lax.stop_gradient(causal_lm.logits(teacher, batch))
      task, correct = causal_lm.token_losses(student, batch["targets"])
      return self._divergence(student, target), task, correct, weights
    hidden = causal_lm.logits(model, batch, rngs, return_hidden=True)
    teacher_hidden = jax.lax.stop_gradient(causal_lm.logits(teacher, batch, return_hidden=True))
    return (*self._chunked(hidden, teacher_hidden, batch["targets"], model.lm_logits,
                           teacher.lm_logits, chunk), weights)

  def _chunked(self, hidden, teacher_hidden, targets, lm_logits, teacher_lm_logits, chunk):
    """`_per_row`'s causal-LM values with only [B, chunk, V] logits of each model live at a time
    (as `causal_lm.chunked_token_losses`: a `lax.map` over position chunks, each recomputed in
    the backward pass)."""
    b, t, _ = hidden.shape
    n = -(-t // chunk)
    cut = lambda x: jnp.pad(x, ((0, 0), (0, n * chunk - t)) + ((0, 0),) * (x.ndim - 2)).reshape(
        b, n, chunk, *x.shape[2:]).swapaxes(0, 1)

    def one_chunk(xs):
      h, th, y = xs
      student = lm_logits(h)
      target = jax.lax.stop_gradient(teacher_lm_logits(th))
      return (self._divergence(student, target), *causal_lm.token_losses(student, y))

    out = jax.lax.map(jax.checkpoint(one_chunk), (cut(hidden), cut(teacher_hidden), cut(targets)))
    return tuple(z.swapaxes(0, 1).reshape(b, n * chunk)[:, :t] for z in out)

  def train_loss(self, model, batch, rngs, *, teacher=None):
    """(1 - task_weight) x mean divergence + task_weight x mean task loss over real rows."""
    div, task, correct, weights = self._per_row(model, batch, teacher, rngs)
    weights = weights.astype(jnp.float32)
    denominator = jnp.maximum(weights.sum(), 1.0)
    mean = lambda v: jnp.where(weights > 0, v * weights, 0.0).sum() / denominator
    w = self.options.task_weight
    loss = (1.0 - w) * mean(div) + w * mean(task) if w else mean(div)
    accuracy = "accuracy" if self.MODEL_TASK == "classification" else "token_accuracy"
    return loss, {"divergence": mean(div), "task_loss": mean(task), accuracy: mean(correct),
                  "loss_weight": weights.sum()}

  def eval_sums(self, model, batch, dataset, *, teacher=None):
    """The head's own eval sums, and the summed divergence (`divergence_sum`)."""
    sums = self.base.eval_sums(model, batch, dataset)
    div, _, _, weights = self._per_row(model, batch, teacher)
    weights = weights.astype(jnp.float32)
    sums["divergence_sum"] = jnp.where(weights > 0, div * weights, 0.0).sum()
    sums["divergence_weight"] = weights.sum()
    return sums

  def finalize(self, sums) -> dict:
    sums = dict(sums)
    total, weight = float(sums.pop("divergence_sum")), float(sums.pop("divergence_weight"))
    return {**self.base.finalize(sums), "divergence": total / max(weight, 1.0)}


class OnPolicyDistill(Distill):
  """Distillation with a share of the steps on the student's own samples (GKD's lambda)."""

  updates_per_rollout = 1  # every step draws whether it is on-policy

  def rollout(self, policy, dataset, batch: dict, key) -> tuple[dict, dict]:
    """This process's rows of the global chat `batch`, or, with probability
    `on_policy_fraction`, the same prompts with replies the current student sampled."""
    o = self.options
    started = time.time()
    on_policy = float(jax.random.uniform(jax.random.wrap_key_data(key))) < o.on_policy_fraction
    if not on_policy:
      return policy.local_rows(batch), {"on_policy": np.float32(0.0),
                                        "rollout_sec": np.float32(time.time() - started)}
    mask = np.asarray(batch["loss_mask"]) > 0
    rows = [i for i in range(len(mask)) if mask[i].any()]  # padding rows stay out
    budget = min(o.on_policy_max_new_tokens, self.max_length - 1)
    # The prompt of row i: its tokens through the position whose target is the first reply token.
    prompts = [np.asarray(batch["input_ids"][i][:int(np.argmax(mask[i])) + 1]) for i in rows]
    prompts = [p[-(self.max_length - budget):] for p in prompts]  # room for the reply
    sample_key = jax.random.split(jax.random.wrap_key_data(key))[1]  # the key itself drew the kind
    completions = policy.generate(
        [p.tolist() for p in prompts], np.asarray(jax.random.key_data(sample_key)),
        max_new_tokens=budget, temperature=o.on_policy_temperature)
    sampled = packing_lib.collate_completions(prompts, completions, length=self.max_length,
                                              pad_id=dataset.pad_id, batch_size=len(mask))
    return policy.local_rows(sampled), {"on_policy": np.float32(1.0),
                                        "rollout_sec": np.float32(time.time() - started)}
