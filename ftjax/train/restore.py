"""A workdir's checkpoint back as a train state or a model: `latest`, `best`, `base` or a step."""

from __future__ import annotations

from flax import nnx

from ftjax import checkpoint as ckpt_lib
from ftjax import config as config_lib
from ftjax.errors import UserError
from ftjax.models import layer_stack
from ftjax.paths import as_path
from ftjax.train.state import Experiment, TrainState
from ftjax.weights import fingerprint

CHECKPOINTS = ("latest", "best", "base")


# What an evaluation or export restores of a checkpointed train state (no optimizer state).
PART_FIELDS = ("step", "params", "rng", "nonfinite", "first_nonfinite")


def load_workdir_config(workdir):
  """The resolved config a run wrote to `WORKDIR/config.json`, validated like a config file."""
  file = as_path(workdir) / "config.json"
  if not file.is_file():
    raise UserError(f"no config.json in workdir '{workdir}' (is it a ftjax run?)")
  return config_lib.load_json(file)


def checkpointed(state: TrainState) -> TrainState:
  """What a checkpoint holds of a train state: all but the frozen variables, which never change
  and are rebuilt from the base checkpoint (its fingerprint, `Experiment.base_fingerprint`, is
  saved beside them and checked on restore). A LoRA run's checkpoint is its adapter, optimizer
  state, step, rng and data state. A reference policy (`TrainState.reference`, the step-0
  trainable parameters) and a distillation teacher (`TrainState.teacher`) are rebuilt the same
  way."""
  return state.replace(frozen={}, reference=None, teacher=None)


def check_base(exp: Experiment, loop_state: dict | None, where: str) -> None:
  """Refuses a checkpoint written on another base checkpoint (`checkpoint.accept_base_change`)."""
  saved = (loop_state or {}).get("base")
  fingerprint.check_same(saved, exp.base_fingerprint, where=where,
                         accept=bool(exp.cfg.checkpoint.get("accept_base_change", False)))


def parse_checkpoint(text: str) -> str | int:
  """A `--checkpoint` flag's value: one of CHECKPOINTS or a step number."""
  if text in CHECKPOINTS:
    return text
  try:
    step = int(text)
  except ValueError:
    raise UserError(f"--checkpoint must be one of {', '.join(CHECKPOINTS)} or a step number, "
                    f"got '{text}'") from None
  if step < 0:
    raise UserError(f"--checkpoint step must be >= 0, got {step}")
  return step

def restore_state(exp: Experiment, workdir, checkpoint: str | int = "latest",
                  live: TrainState | None = None) -> tuple[TrainState, int]:
  """The train state of a workdir's checkpoint: `latest`, `best`, `base` or a step number.

  `base` is the untouched pretrained model (with its freshly initialised head), i.e. step 0.
  `best` takes the trainable parameters from `checkpoints/best` (the frozen ones never change)
  and the rest from `live`, the training loop's current state (whose buffers are alive, unlike
  `exp.state`'s once a step has donated them), or from `exp.state` outside a training loop.
  Returns the state and its step.
  """
  if checkpoint == "base":
    return exp.state, 0
  directory = as_path(workdir) / "checkpoints"
  if checkpoint == "best":
    best = ckpt_lib.BestCheckpointer(directory / ckpt_lib.BEST_DIR, metric=exp.cfg.eval.metric,
                                     mode=exp.cfg.eval.mode, keep=max(exp.cfg.checkpoint.keep_best, 1))
    try:
      step = best.best_step()
      if step is None:
        raise UserError(f"no best checkpoint in {directory / ckpt_lib.BEST_DIR}")
      params = best.restore(step, ckpt_lib.abstract_like((live or exp.state).params))
    finally:
      best.close()
    return (live if live is not None else exp.state).replace(params=params), int(step)
  checkpointer = ckpt_lib.Checkpointer(directory, every_steps=1, keep=1 << 30)
  try:
    available = checkpointer.all_steps()
    step = checkpointer.latest_step() if checkpoint == "latest" else int(checkpoint)
    if step is None or step not in available:
      raise UserError(f"checkpoint '{checkpoint}' not found in {directory}; available steps: {available}")
    try:
      if exp.state.opt_state is None:  # an evaluation or export: no optimizer state to read
        part = {k: getattr(exp.state, k) for k in PART_FIELDS}
        restored, loop_state = checkpointer.restore_part(step, ckpt_lib.abstract_like(part))
        saved = exp.state.replace(**restored)
      else:
        saved, loop_state = checkpointer.restore(step, ckpt_lib.abstract_like(checkpointed(exp.state)))
    except ckpt_lib.CorruptCheckpointError as e:
      raise UserError(str(e)) from None
  finally:
    checkpointer.close()
  check_base(exp, loop_state, f"checkpoint step {step} in {directory}")
  return saved.replace(frozen=exp.state.frozen, reference=exp.state.reference,
                       teacher=exp.state.teacher), int(step)


def model_from_state(exp: Experiment, state: TrainState) -> nnx.Module:
  """The NNX model (method applied) holding the state's parameters, its layers unscanned (a list,
  as methods, generation, weight tables and export expect) whatever `model.scan_layers` is."""
  return layer_stack.unstack_layers(nnx.merge(exp.graphdef, state.params, state.frozen))
