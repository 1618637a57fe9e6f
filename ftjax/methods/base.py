"""The fine-tuning method protocol.

A method says three things about a model (DESIGN.md, principle 3):
  (a) `apply`: how it rewrites the model (wrap or replace submodules, add parameters);
  (b) `trainable`: which variables train, as an NNX filter; everything else is frozen;
  (c) `merge`: how to fold itself back into plain weights for export, when it can.
The trainer, optimizer, sharding and checkpointing only ever see the split into trainable and
frozen state, so a new method needs no edits anywhere else.

Randomness: layers a method adds that draw their own (LoRA's dropout) subclass `TrainRngs`. They
hold no RNG state (it would be checkpointed, and repeat its mask unless reseeded every step):
the train step hands them its per-step `rngs` with `bind_train_rngs` on the model it merged, so
they are random only there, with a fresh mask every step derived from the train state's rng and
step, and deterministic everywhere else (eval, generation, merge, export). Inside a layer list
(`models.layer_stack.run_layers`, scanned or not) a bound stream is swapped for that layer's own
one, derived from the `rngs` the model is called with (none: no randomness).
"""

from __future__ import annotations

import re
from typing import Any

import jax
from flax import nnx

# Heads that a task adds on top of the base model; methods that train "the head" match these.
# DistilBERT's head has two layers, DeBERTa's (`context_pooler`: HF's `pooler`, new on a base
# checkpoint, unlike BERT's pretrained one) too; ModernBERT's task classes put `head` (dense,
# act, norm) at the root before `classifier` (anchored: no encoder module is a root `head`).
HEAD_PATTERN = (r"(^|\.)(pre_classifier|context_pooler|classifier|score|qa_outputs)(\.|$)"
                r"|^head(\.|$)")


def path_string(path: tuple[Any, ...]) -> str:
  """('encoder', 'layer', 3, 'query', 'kernel') -> 'encoder.layer.3.query.kernel'."""
  return ".".join(str(p) for p in path)


def keypath_string(keypath) -> str:
  """A JAX key path over an NNX state -> 'encoder.layer.3.query.kernel' (no trailing '.value')."""
  name = jax.tree_util.keystr(tuple(keypath), simple=True, separator=".")
  return name[: -len(".value")] if name.endswith(".value") else name


def path_matches(pattern: str):
  """An NNX filter selecting variables whose dotted path matches `pattern` (re.search)."""
  regex = re.compile(pattern)

  def matches(path, unused_variable) -> bool:
    return regex.search(path_string(path)) is not None

  return matches


class TrainRngs:
  """Mixin for method layers that draw randomness of their own; see the module docstring.

  `train_rngs` is the train step's `nnx.Rngs` while the step runs, None everywhere else. A plain
  class attribute, so an unbound layer adds nothing to the model's state or graph.
  """

  train_rngs = None


def bind_train_rngs(model: nnx.Module, rngs: nnx.Rngs) -> nnx.Module:
  """Hands `rngs` (the train step's, with a `dropout` stream) to every `TrainRngs` layer of
  `model`, in place, and returns it. Call it only on a model merged inside the step."""
  for _, module in nnx.iter_modules(model):
    if isinstance(module, TrainRngs):
      module.train_rngs = rngs
  return model


class Method:
  """Base class: subclasses set `name` and override what differs from full fine-tuning.

  `defaults` are the method's own options; they appear in every config as
  `config.method.<name>.<option>` (so `--config.method.lora.rank=16` is validated like any key)
  and reach the instance as `self.options`.
  """

  name: str = ""
  defaults: dict[str, Any] = {}

  def __init__(self, options=None):
    self.options = options if options is not None else dict(self.defaults)

  def apply(self, model: nnx.Module, *, rngs: nnx.Rngs) -> nnx.Module:
    """Rewrites `model` for this method and returns it. Default: unchanged."""
    del rngs
    return model

  def trainable(self):
    """An NNX filter for the variables that train."""
    return nnx.Param

  def merge(self, model: nnx.Module) -> nnx.Module | None:
    """Returns a plain model with the method folded in, or None if this method cannot merge."""
    return model

  def load_transforms(self, model: nnx.Module) -> dict[str, Any]:
    """{dotted param path: fn(value) -> pytree} for params this method keeps only transformed
    (QLoRA: the kernels it quantizes). `model` is the abstract, unapplied model. The sharded
    build (`train.construct`) applies each fn under jit to its param right after reading it, so
    the untransformed values never exist together, and hands the results to `adopt` after
    `apply`. Default: none."""
    del model
    return {}

  def adopt(self, model: nnx.Module, transformed: dict[str, Any]) -> None:
    """Puts `load_transforms`' results (by the same paths) into the applied `model`, in place,
    where `apply` made its own from the placeholders the build passed it."""
    if transformed:
      raise NotImplementedError(f"method '{self.name}' declares load transforms but no adopt")

  def check_config(self, cfg) -> None:
    """Raises a UserError naming the key when the rest of `cfg` asks for something this method
    cannot honour (e.g. prompt tuning with packed sequences). Default: everything goes."""
    del cfg
