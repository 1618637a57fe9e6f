"""A distillation teacher: a second model, frozen, built beside the student and never trained.

An objective that names a teacher (`teacher_checkpoint`, e.g. `distill`) gets it planned here with
the student's head, head size, dtypes and logical-axis sharding (so a teacher larger than one
device is split by the same `mesh.rules`), every variable frozen. The state holds its variables
(`TrainState.teacher`); like the frozen base they are rebuilt from the checkpoint at every start
and never written to the run's checkpoints, and its fingerprint joins the base's so a resume on a
changed teacher is refused like one on a changed base.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax.numpy as jnp
from flax import nnx

from ftjax import methods, sharding, sources
from ftjax.data.tokenization import load_tokenizer
from ftjax.errors import UserError
from ftjax.models import registry as model_registry
from ftjax.train import construct
from ftjax.weights import fingerprint, gguf, safetensors_io

KEY = "objective.distill.teacher"


@dataclasses.dataclass
class PlannedTeacher:
  graphdef: Any
  abstract: tuple  # (empty trainable, frozen) states as ShapeDtypeStructs, sharded
  blueprint: construct.Blueprint
  path: pathlib.Path
  fingerprint: dict


def plan(cfg, task, dataset, student_tokenizer, mesh) -> PlannedTeacher:
  """Plans the teacher `task.teacher_checkpoint` names; checks it shares the student's tokenizer
  and has every weight of the head (a teacher with a fresh head would teach noise)."""
  source = task.teacher_checkpoint
  path = sharding.process_zero_first(
      lambda: gguf.resolve_checkpoint_dir(sources.resolve(source)), "teacher")
  _check_tokenizer(path, load_tokenizer(path), student_tokenizer, source)
  spec = model_registry.model_spec(
      path, task=task.MODEL_TASK, dtype=jnp.dtype(cfg.model.dtype),
      param_dtype=jnp.dtype(cfg.model.param_dtype), remat="none",
      attention=cfg.model.get("attention", "xla"), **task.model_kwargs(dataset))
  blueprint = construct.plan_state(
      spec, safetensors_io.CheckpointReader(path), seed=cfg.seed,
      method=methods.get("full", cfg.method), trainable=lambda m: nnx.Nothing,
      scan_layers=False, mesh=mesh, rules=tuple(tuple(r) for r in cfg.mesh.rules))
  built = blueprint.abstract
  if built.fresh:
    raise UserError(f"{KEY} '{source}' lacks {', '.join(built.fresh)}: a teacher must be a "
                    f"trained {task.MODEL_TASK} model (with its head)")
  prints = fingerprint.fingerprint(path, safetensors_io.checkpoint_files(path), source)
  return PlannedTeacher(built.graphdef, (built.params, built.frozen), blueprint, path, prints)


def load(planned: PlannedTeacher) -> tuple:
  """The teacher's (empty trainable, frozen) states, read in their shardings."""
  built = planned.blueprint.load()
  return built.params, built.frozen


def join_fingerprints(base: dict, teacher: dict) -> dict:
  """The base's fingerprint with the teacher's files under `teacher/`: a changed teacher is then
  a changed base (`restore.check_base`)."""
  files = {**base.get("files", {}), **{f"teacher/{k}": v for k, v in teacher["files"].items()}}
  return {**base, "files": files, "teacher_source": teacher["source"]}


def _check_tokenizer(path, tokenizer, student_tokenizer, source) -> None:
  """Distillation compares distributions position by position: the vocabularies must match."""
  theirs, ours = tokenizer.get_vocab(), student_tokenizer.get_vocab()
  if theirs != ours:
    differ = sorted(set(theirs.items()) ^ set(ours.items()), key=lambda kv: kv[1])[:3]
    raise UserError(f"{KEY} '{source}' has another tokenizer than the student ({len(theirs)} vs "
                    f"{len(ours)} tokens; e.g. {', '.join(repr(t) for t, _ in differ)} differ in "
                    f"'{path}'): teacher and student must share one")
