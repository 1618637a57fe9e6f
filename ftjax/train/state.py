"""TrainState and the construction of an experiment: config -> mesh, data, model, method,
optimizer and the sharded initial state. Shared by training, evaluation and export."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ftjax import methods, optim, sharding, sources, tasks
from ftjax.config import ConfigDict
from ftjax.data.tokenization import load_tokenizer
from ftjax.errors import UserError
from ftjax.models import moe
from ftjax.models import registry as model_registry
from ftjax.train import construct
from ftjax.train import teacher as teacher_lib
from ftjax.weights import fingerprint, gguf, safetensors_io

log = logging.getLogger("ftjax")


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any  # trainable variables (nnx.State)
  frozen: Any  # every other variable of the model (nnx.State)
  opt_state: Any
  rng: jax.Array  # raw uint32 key; dropout keys are folded in per step
  nonfinite: jax.Array  # updates skipped because the loss or gradients were not finite
  first_nonfinite: jax.Array  # step of the first such update, -1 if none
  # The step-0 trainable parameters, for objectives with a reference policy (DPO); else None.
  # Never checkpointed: like `frozen`, rebuilt at start from the base checkpoint and the seed.
  reference: Any = None
  # A distillation teacher's variables, (empty, frozen) states on the objective's
  # `teacher_graphdef` (`ftjax.train.teacher`); else None. Never checkpointed, rebuilt at start.
  teacher: Any = None


@dataclasses.dataclass
class Experiment:
  """Everything a run builds before its first step; shared by training and evaluation."""
  cfg: ConfigDict
  task: Any  # the objective (`ftjax.tasks.for_config`)
  mesh: jax.sharding.Mesh
  dataset: Any
  graphdef: Any
  state: TrainState
  state_shardings: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  method: methods.base.Method
  model_path: pathlib.Path
  param_counts: dict
  checkpoint_bytes_read: int = 0  # bytes this process requested from the checkpoint
  base_fingerprint: dict | None = None  # of the base checkpoint (`weights.fingerprint`)
  blueprint: Any = None  # a planned experiment's `construct.Blueprint`; None once loaded
  teacher: Any = None  # a planned distillation teacher (`teacher.PlannedTeacher`); None once loaded

  @property
  def abstract(self) -> bool:
    """Planned (`plan_experiment`): the state's leaves are shapes with shardings, no weight read."""
    return self.blueprint is not None


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _check_vocab(model_path: pathlib.Path, tokenizer) -> None:
  """A tokenizer that emits ids past the embedding table would index out of range silently."""
  vocab_size = model_registry.read_hf_config(model_path).get("vocab_size")
  if vocab_size is not None and len(tokenizer) > vocab_size:
    raise UserError(f"tokenizer in '{model_path}' has {len(tokenizer)} tokens but the model's "
                    f"config.json has vocab_size {vocab_size}")


def moe_options(cfg: ConfigDict) -> moe.MoeOptions:
  """`model.moe` as the model's `moe` constructor argument (a negative aux-loss weight: the
  checkpoint's)."""
  coef = cfg.model.moe.router_aux_loss_coef
  return moe.MoeOptions(capacity_factor=float(cfg.model.moe.capacity_factor),
                        router_aux_loss_coef=None if coef < 0 else float(coef))


def trainable_filter(method, freeze: str):
  """The method's trainable variables, minus any matching the `method.freeze` regex."""
  if not freeze:
    return method.trainable()
  return nnx.All(method.trainable(), nnx.Not(methods.base.path_matches(freeze)))


def build_experiment(cfg: ConfigDict, *, optimizer: bool = True, abstract: bool = False) -> Experiment:
  """Builds the run `cfg` describes: `load_experiment(plan_experiment(cfg))`. `optimizer=False`
  (evaluation, export) builds no optimizer state: `state.opt_state` is None and restores read
  the parameters alone. `abstract=True` (`ftjax.plan`) stops at the plan: no weight is read."""
  exp = plan_experiment(cfg, optimizer=optimizer)
  return exp if abstract else load_experiment(exp)


def plan_experiment(cfg: ConfigDict, *, optimizer: bool = True) -> Experiment:
  """Everything of the run but its arrays: mesh, data, tokenizer, method, optimizer, and the
  state as `jax.ShapeDtypeStruct`s with the shardings a real build gives. Every config error
  (a method's included) surfaces here, before any weight is read; the trainer compiles its step
  and checks that it fits on this (`memory_plan`) before `load_experiment`."""
  task = tasks.for_config(cfg)  # the objective, its options bound
  mesh = sharding.make_mesh(cfg.mesh.shape)
  # A .gguf file is converted once into a cached HF-style directory (dequantized weights,
  # tokenizer and chat template from its metadata); directories pass through.
  model_path = sharding.process_zero_first(
      lambda: gguf.resolve_checkpoint_dir(sources.resolve(cfg.model.checkpoint)), "checkpoint")
  tokenizer = load_tokenizer(model_path)
  _check_vocab(model_path, tokenizer)
  dataset = sharding.process_zero_first(
      lambda: task.load_data(cfg.data, tokenizer, seed=cfg.seed), "data")

  method = methods.get(cfg.method.name, cfg.method)
  method.check_config(cfg)
  rules = tuple(tuple(r) for r in cfg.mesh.rules)
  spec = model_registry.model_spec(
      model_path, task=task.MODEL_TASK, dtype=jnp.dtype(cfg.model.dtype),
      param_dtype=jnp.dtype(cfg.model.param_dtype), remat=cfg.model.remat,
      attention=cfg.model.get("attention", "xla"), num_layers=cfg.model.get("num_layers", 0),
      moe=moe_options(cfg), **task.model_kwargs(dataset))
  # Built sharded from the checkpoint, the method applied on the unscanned model, the layers
  # stacked afterwards when asked (`construct`).
  why = f"method '{cfg.method.name}'" + (f", method.freeze '{cfg.method.freeze}'"
                                         if cfg.method.freeze else "")
  trainable_dtype = cfg.model.get("trainable_dtype", "")
  blueprint = construct.plan_state(
      spec, safetensors_io.CheckpointReader(model_path), seed=cfg.seed, method=method,
      trainable=lambda m: trainable_filter(m, cfg.method.freeze),
      scan_layers=cfg.model.scan_layers, mesh=mesh, rules=rules,
      trainable_dtype=jnp.dtype(trainable_dtype) if trainable_dtype else None, why=why)
  built = blueprint.abstract
  if built.fresh:
    log.info("Newly initialised (not in the checkpoint): %s", ", ".join(built.fresh))
  graphdef, params, frozen = built.graphdef, built.params, built.frozen
  if not jax.tree.leaves(params):  # e.g. linear_probe on a causal LM: no classifier head
    raise UserError(f"method '{cfg.method.name}' trains no parameters of this "
                    f"{task.MODEL_TASK} model" + (f" after method.freeze '{cfg.method.freeze}'"
                                                  if cfg.method.freeze else ""))

  planned_teacher = None
  if getattr(task, "teacher_checkpoint", ""):  # distillation: a frozen second model
    planned_teacher = teacher_lib.plan(cfg, task, dataset, tokenizer, mesh)
    task = task.bind_teacher(planned_teacher.graphdef)

  schedule = optim.make_schedule(cfg.optimizer, cfg.train.steps)
  tx = optim.make_optimizer(cfg.optimizer, cfg.train.steps)
  opt_state = None
  if optimizer:
    shapes = jax.eval_shape(tx.init, params)
    opt_shardings = sharding.follow_params(shapes, params, jax.tree.map(lambda x: x.sharding, params),
                                           mesh)
    opt_state = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                             shapes, opt_shardings)
  scalar = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh))
  state = TrainState(step=scalar(jnp.zeros((), jnp.int32)), params=params, frozen=frozen,
                     opt_state=opt_state, rng=scalar(jax.random.key_data(jax.random.key(cfg.seed + 1))),
                     nonfinite=scalar(jnp.zeros((), jnp.int32)),
                     first_nonfinite=scalar(jnp.full((), -1, jnp.int32)),
                     reference=params if task.uses_reference else None,
                     teacher=planned_teacher.abstract if planned_teacher else None)
  shardings = jax.tree.map(lambda x: x.sharding, state)
  counts = {"trainable": count_params(params), "frozen": count_params(frozen)}
  counts["total"] = counts["trainable"] + counts["frozen"]
  base = fingerprint.fingerprint(model_path, safetensors_io.checkpoint_files(model_path),
                                 cfg.model.checkpoint)
  if planned_teacher:
    base = teacher_lib.join_fingerprints(base, planned_teacher.fingerprint)
  return Experiment(cfg, task, mesh, dataset, graphdef, state, shardings, tx, schedule, method,
                    model_path, counts, 0, base, blueprint, planned_teacher)


def load_experiment(exp: Experiment) -> Experiment:
  """`exp` (planned) with its state built: this process's slices of the checkpoint read, new
  parameters initialised, the optimizer state made, each directly in its sharding."""
  if not exp.abstract:
    return exp
  built = exp.blueprint.load()
  log.info("Read %.1f MiB of the checkpoint on this process (the slices its devices hold)",
           built.bytes_requested / 2**20)
  opt_state = None
  if exp.state.opt_state is not None:
    opt_shardings = jax.tree.map(lambda x: x.sharding, exp.state.opt_state)
    opt_state = jax.jit(exp.tx.init, out_shardings=opt_shardings)(built.params)
  cfg, replicated = exp.cfg, sharding.replicated(exp.mesh)
  put = lambda x: sharding.put_global(x, replicated)
  state = TrainState(step=put(jnp.zeros((), jnp.int32)), params=built.params, frozen=built.frozen,
                     opt_state=opt_state, rng=put(jax.random.key_data(jax.random.key(cfg.seed + 1))),
                     nonfinite=put(jnp.zeros((), jnp.int32)),
                     first_nonfinite=put(jnp.full((), -1, jnp.int32)),
                     reference=_copy(built.params) if exp.state.reference is not None else None,
                     teacher=teacher_lib.load(exp.teacher) if exp.teacher else None)
  return dataclasses.replace(exp, graphdef=built.graphdef, state=state,
                             checkpoint_bytes_read=built.bytes_requested, blueprint=None,
                             teacher=None)


def _copy(tree):
  """A copy of `tree` in new buffers with the same shardings: the train step donates `params`,
  and the reference must outlive that."""
  return jax.jit(lambda t: jax.tree.map(jnp.copy, t),
                 out_shardings=jax.tree.map(lambda x: x.sharding, tree))(tree)


def local_batch_size(global_batch: int, mesh, accum_steps: int = 1) -> int:
  divisor = sharding.batch_divisor(mesh) * accum_steps
  if global_batch % divisor:
    raise UserError(f"batch size {global_batch} is not divisible by the {divisor} data-parallel "
                    f"devices x microbatches of mesh {dict(mesh.shape)}")
  return global_batch // jax.process_count()
