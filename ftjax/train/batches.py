"""Where each train step's batch comes from: the data iterator, or an objective's rollouts.

The loop asks its batch source for every step's host batch (`next(state) -> (batch, host
metrics)`) and checkpoints the source's state (`get_state` / `set_state`) as the data position.
`DataBatches` is the data iterator itself (every objective without a rollout phase; its state
is the iterator's, as before sources existed). An objective with a rollout phase (GRPO;
on-policy distillation, whose rollout draws whether a step samples the student) has
`rollout(policy, dataset, prompts, key)` and `updates_per_rollout` (and `token_logps(model,
batch)` when its rollout needs the old policy's log-probs): `RolloutBatches` makes a batch from
the current policy every `updates_per_rollout` steps and serves it to that many updates; the
rollout count, the batch being served and its metrics are in its state, so a run killed between
two updates of one rollout resumes on the same batch, and the next rollout's key
`fold_in(rng, rollout_index)` is the same as without the stop.
"""

from __future__ import annotations

import jax
from jax.experimental import multihost_utils
import numpy as np
from flax import nnx

from ftjax import generate, sharding
from ftjax.data import tokenization
from ftjax.train.restore import model_from_state
from ftjax.train.state import Experiment


class DataBatches:
  """The data iterator as a batch source: no host metrics."""

  def __init__(self, iterator):
    self.iterator = iterator

  def next(self, state) -> tuple[dict, dict]:
    del state
    return next(self.iterator), {}

  def get_state(self):
    return self.iterator.get_state()

  def set_state(self, state) -> None:
    self.iterator.set_state(state)


class Policy:
  """The current policy of a run, for an objective's rollout or generation eval: sampling with
  `ftjax.generate` and token log-probs, on the run's mesh."""

  def __init__(self, exp: Experiment, state, stop_token_ids, logps_fn=None):
    self.exp, self.state = exp, state
    self.model = model_from_state(exp, state)
    self.stop_token_ids = stop_token_ids  # `stop_token_ids(exp)`, read once per run
    self._logps_fn = logps_fn

  def generate(self, prompts, key, *, max_new_tokens: int, temperature: float,
               top_p: float = 1.0, top_k: int = 0) -> list[list[int]]:
    """Completions of token-id prompts (the same on every process); `key`: raw key data."""
    return generate.generate(self.model, prompts, max_new_tokens=max_new_tokens,
                             temperature=temperature, top_p=top_p, top_k=top_k, key=key,
                             stop_token_ids=self.stop_token_ids,
                             pad_token_id=self.exp.dataset.pad_id)

  @staticmethod
  def local_rows(batch: dict) -> dict:
    """This process's rows of a global host batch (process i takes the i-th equal slice)."""
    n = len(next(iter(batch.values()))) // jax.process_count()
    start = jax.process_index() * n
    return {k: v[start:start + n] for k, v in batch.items()}

  def token_logps(self, local_batch: dict) -> np.ndarray:
    """This process's rows' per-token log-probs [n, T] under the current parameters."""
    out = self._logps_fn(self.state.params, self.state.frozen, sharding.put_batch(
        local_batch, sharding.batch_sharding(self.exp.mesh)))
    if not out.is_fully_addressable:
      out = multihost_utils.process_allgather(out, tiled=True)
      return self.local_rows({"x": np.asarray(out)})["x"]
    return np.asarray(out)


def stop_token_ids(exp: Experiment) -> list[int]:
  """Every token that ends a generation of the run's model (its files, read once by a caller)."""
  return tokenization.dataset_stop_token_ids(exp.model_path, exp.dataset)


def _encode(batch: dict | None):
  return None if batch is None else {
      k: {"dtype": str(v.dtype), "shape": list(v.shape), "values": v.reshape(-1).tolist()}
      for k, v in batch.items()}


def _decode(encoded):
  return None if encoded is None else {
      k: np.asarray(e["values"], dtype=e["dtype"]).reshape(e["shape"]) for k, e in encoded.items()}


class RolloutBatches:
  """Rollout batches of the current policy, each served to `updates_per_rollout` steps."""

  def __init__(self, exp: Experiment, iterator):
    self.exp, self.iterator = exp, iterator
    self.task = exp.task
    self.rollouts = 0  # rollouts made so far: the next one's key index
    self.served = 0  # updates the current batch has served
    self.batch, self.metrics = None, {}
    self.stop_token_ids = stop_token_ids(exp)
    self._logps_fn = None
    if hasattr(exp.task, "token_logps"):  # the old policy's, for the ratio of later updates
      task, graphdef = exp.task, exp.graphdef
      self._logps_fn = jax.jit(
          lambda params, frozen, batch: task.token_logps(nnx.merge(graphdef, params, frozen), batch),
          out_shardings=sharding.batch_sharding(exp.mesh))

  def next(self, state) -> tuple[dict, dict]:
    if self.batch is None or self.served >= self.task.updates_per_rollout:
      prompts = next(self.iterator)
      if jax.process_count() > 1:  # every process samples the global batch
        prompts = multihost_utils.process_allgather(prompts, tiled=True)
      key = jax.random.fold_in(jax.random.wrap_key_data(jax.device_get(state.rng)), self.rollouts)
      policy = Policy(self.exp, state, self.stop_token_ids, self._logps_fn)
      self.batch, self.metrics = self.task.rollout(policy, self.exp.dataset, prompts,
                                                   np.asarray(jax.random.key_data(key)))
      self.rollouts, self.served = self.rollouts + 1, 0
      metrics = self.metrics
    else:  # the same rollout's metrics, but its time was spent once
      metrics = {**self.metrics, "rollout_sec": np.float32(0.0)}
    self.served += 1
    return self.batch, metrics

  def get_state(self) -> dict:
    serving = self.batch is not None and self.served < self.task.updates_per_rollout
    return {"iterator": self.iterator.get_state(), "rollouts": self.rollouts,
            "served": self.served if serving else 0,
            "batch": _encode(self.batch) if serving else None,
            "metrics": {k: float(v) for k, v in self.metrics.items()} if serving else {}}

  def set_state(self, state) -> None:
    self.iterator.set_state(state["iterator"])
    self.rollouts, self.served = int(state["rollouts"]), int(state["served"])
    self.batch = _decode(state["batch"])
    self.metrics = {k: np.float32(v) for k, v in state["metrics"].items()}


def batch_source(exp: Experiment, iterator):
  """The run's batch source: rollouts for an objective with a rollout phase, else the data."""
  if hasattr(exp.task, "rollout"):
    return RolloutBatches(exp, iterator)
  return DataBatches(iterator)
