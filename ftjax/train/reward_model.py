"""The `reward_model` reward function: a classifier trained by ftjax scores each completion.

`objective.grpo.reward_model = "WORKDIR"` (or `"WORKDIR:CHECKPOINT"`, `best` by default when the
run kept one, else `latest`) names a classification run: a sentiment judge (the quickstart), or a
reward model (`objective.name=reward`, one label). The reward of a completion is the judge's
probability of the label `objective.grpo.reward_model_label` (by name, e.g. `pos`), or its raw
score for a one-label reward model. The completion alone is scored, or prompt text + completion
with `objective.grpo.reward_model_with_prompt`. Built once, on first use, on one device, and run
in batches of fixed rows, padded to a multiple of 16 tokens (few compilations); registered when `ftjax.train` is imported, since it
restores a workdir (a training-layer service) while the reward registry sits below.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ftjax.data.tokenization import load_tokenizer
from ftjax.errors import UserError
from ftjax.tasks import rewards
from ftjax.train.restore import load_workdir_config, model_from_state, restore_state
from ftjax.train.state import build_experiment

_ROWS = 32  # the judge's batch: completions are scored in chunks of this many


class Judge:
  """A classification workdir's model, scoring texts in fixed-shape batches."""

  def __init__(self, spec: str, label: str):
    workdir, _, checkpoint = spec.partition(":")
    cfg = load_workdir_config(workdir)
    if cfg.model.task != "classification":
      raise UserError(f"objective.grpo.reward_model '{workdir}' is a {cfg.model.task} run; it "
                      "must be a classifier (a judge or a reward model)")
    with cfg.unlocked():
      cfg.mesh.shape = (1, 1, 1)  # beside the policy's mesh: one device is enough for a judge
    exp = build_experiment(cfg, optimizer=False)
    checkpoint = checkpoint or ("best" if cfg.checkpoint.keep_best else "latest")
    state, self.step = restore_state(exp, workdir, checkpoint)
    model = model_from_state(exp, state)
    self.tokenizer = load_tokenizer(exp.model_path)
    self.max_length = int(cfg.data.max_length)
    names = list(getattr(exp.dataset, "label_names", None) or [])
    if len(names) <= 1:
      self.index = None  # a one-label reward model: its raw score
    elif label not in names:
      raise UserError(f"objective.grpo.reward_model_label '{label}' is not a label of "
                      f"'{workdir}' (labels: {', '.join(names)})")
    else:
      self.index = names.index(label)
    graphdef, params = nnx.split(model)
    index = self.index

    def score(params, ids, mask, types):
      logits = nnx.merge(graphdef, params)(ids, mask, types).astype(jnp.float32)
      return logits[:, 0] if index is None else jax.nn.softmax(logits, -1)[:, index]

    self._score = jax.jit(score)
    self._params = params

  def __call__(self, texts: list[str]) -> list[float]:
    out = []
    for start in range(0, len(texts), _ROWS):
      chunk = texts[start:start + _ROWS]
      enc = self.tokenizer(chunk + [""] * (_ROWS - len(chunk)), truncation=True,
                           max_length=self.max_length, padding="longest",
                           pad_to_multiple_of=16, return_tensors="np")
      types = enc.get("token_type_ids", np.zeros_like(enc["input_ids"]))
      values = self._score(self._params, enc["input_ids"].astype(np.int32),
                           enc["attention_mask"].astype(np.int32), types.astype(np.int32))
      out += np.asarray(values)[:len(chunk)].tolist()
    return out


@rewards.register("reward_model", factory=True, batched=True)
def _reward_model(options):
  if not options.reward_model:
    raise UserError("reward function 'reward_model' needs objective.grpo.reward_model (a "
                    "classification workdir)")
  judge = []  # built on first use: config validation only checks the name and the key

  def run(completions: list[str], examples: list[dict]) -> list[float]:
    if not judge:
      judge.append(Judge(options.reward_model, options.reward_model_label))
    texts = completions
    if options.reward_model_with_prompt:
      texts = [" ".join(m["content"] for m in e.get("messages", [])) + "\n" + c
               for c, e in zip(completions, examples)]
    return judge[0](texts)

  return run
