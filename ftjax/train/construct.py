"""The model's initial state, built sharded: no parameter exists whole on one device or host.

1. The model is built abstractly (`nnx.eval_shape`) and the checkpoint's headers are matched
   against its params (names and shapes), then the whole construction below is traced
   abstractly too, so a config error in a method surfaces before any weight is read.
2. Every loaded param is created as a global array directly in its mesh sharding: each process
   reads from the memory-mapped safetensors only the slices its own devices hold
   (`safetensors_io.CheckpointReader`), cast on the host to the param dtype. A param the method
   keeps only transformed (`Method.load_transforms`: QLoRA's kernels) is transformed under jit
   right after its read, its full-precision value donated: QLoRA's full-precision base never
   exists whole.
3. One jitted function, with out_shardings from the logical-axis rules, makes everything else:
   it builds the model (params the checkpoint lacks get their random init in the same draw order
   as an eager build; XLA drops the draws for the loaded ones), puts the loaded arrays in,
   applies the method (new LoRA/adapter params, DoRA magnitudes from the loaded kernels, prompt
   initialisation), casts the trainable params to `model.trainable_dtype`
   and splits trainable from frozen. The loaded arrays are donated, so a frozen param that
   passes through unchanged is not copied.
4. With `model.scan_layers`, the layers are stacked afterwards one stacked leaf at a time (its
   per-layer arrays donated to the jit that stacks them), so the two layouts never coexist for
   more than one leaf.
"""

from __future__ import annotations

import ctypes
import dataclasses
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from ftjax import sharding
from ftjax.models import layer_stack
from ftjax.models.registry import ModelSpec
from ftjax.weights import safetensors_io


@dataclasses.dataclass
class Built:
  graphdef: Any
  params: Any  # trainable nnx.State, sharded
  frozen: Any  # every other variable, sharded
  fresh: list[str]  # NNX paths of params the checkpoint lacked
  bytes_requested: int  # bytes this process read from the checkpoint


@dataclasses.dataclass
class Blueprint:
  """A build planned and checked but not yet done: `abstract` holds the states as
  `jax.ShapeDtypeStruct`s with the shardings the real build gives (nothing read or allocated);
  `load()` reads this process's slices of the checkpoint and builds the real states."""
  abstract: Built
  load: Callable[[], Built]


def _shape_key(index) -> tuple:
  return tuple((s.start, s.stop, s.step) for s in index)


def _read_sharded(reader: safetensors_io.CheckpointReader, name: str, transform: str, abstract,
                  target: jax.sharding.Sharding) -> jax.Array:
  """One param as a global array in `target`, each process reading only its devices' slices
  (a slice that several local devices hold, e.g. a replicated one, is read once). Each slice is
  copied into a buffer XLA owns (`may_alias=False`) and the host copy dropped at once, rather
  than kept alive under a device buffer that aliases it (the 1B build of experiments/scale:
  1.22x -> 1.13x the checkpoint's bytes)."""
  read, shards = {}, []
  for device, index in target.addressable_devices_indices_map(abstract.shape).items():
    key = _shape_key(index)
    if key not in read:
      read[key] = reader.read_param(name, transform, abstract.dtype, index)
    shards.append(jax.device_put(read[key], device, may_alias=False))
  del read
  return jax.make_array_from_single_device_arrays(abstract.shape, target, shards)


def _floating(x) -> bool:
  return jnp.issubdtype(x.dtype, jnp.floating)


def build_state(spec: ModelSpec, reader: safetensors_io.CheckpointReader, *,
                abstract: bool = False, **options) -> Built:
  """`plan_state(spec, reader, **options)`'s abstract states, or (`abstract=False`) its real ones."""
  blueprint = plan_state(spec, reader, **options)
  return blueprint.abstract if abstract else blueprint.load()


def plan_state(spec: ModelSpec, reader: safetensors_io.CheckpointReader, *, seed: int,
               method, trainable: Callable[[Any], Any], scan_layers: bool, mesh, rules,
               trainable_dtype=None, why: str = "") -> Blueprint:
  """Plans the sharded (trainable, frozen) states of `spec`'s model with `method` applied:
  matches the checkpoint's headers, traces the whole construction abstractly (a method's config
  error surfaces here, before any weight is read) and returns the `Blueprint` that builds it.

  Args:
    spec: the model to build (`registry.model_spec`).
    reader: the checkpoint's tensors (`spec.source`).
    seed: seeds `nnx.Rngs(params=seed)`, which initialises what the checkpoint lacks and what
      the method adds, in that order.
    method: a `methods.base.Method`.
    trainable: method -> the NNX filter of the variables that train (on unscanned paths).
    scan_layers: stack the layers (`layer_stack.stack_with_filter`) after the method.
    mesh, rules: the device mesh and logical-axis rules the states are sharded by.
    trainable_dtype: the dtype of floating trainable params (and so of their optimizer state);
      None keeps the param dtype.
    why: names the method and freeze regex in the error of a stacking that cannot be done.
  """
  abstract_model = nnx.eval_shape(lambda: spec.build(nnx.Rngs(params=seed)))
  abstract_params = safetensors_io.param_vars(abstract_model)
  abstract_values = {p: v.get_value() for p, v in abstract_params.items()}
  assigned, fresh = safetensors_io.match_tensors(
      {p: tuple(v.shape) for p, v in abstract_values.items()}, reader.shapes, spec.table,
      source=spec.source)
  held = {}  # static results of the traced construction
  # Params the method keeps only transformed (QLoRA's quantized kernels): each is transformed
  # under jit as soon as it is read, so their untransformed values never exist together.
  transforms = {p: fn for p, fn in method.load_transforms(abstract_model).items() if p in assigned}
  jitted = {fn: jax.jit(fn, donate_argnums=0) for fn in set(transforms.values())}

  def cast(train):
    if trainable_dtype is None:
      return train
    return jax.tree.map(lambda x: x.astype(trainable_dtype) if _floating(x) else x, train)

  # Loaded arrays keyed by their path tuples, so they flatten in the order of the state they
  # pass into (layer 2 before layer 10): jit pairs donated inputs with outputs of the same shape
  # in order, and a pairing out of order costs a copy of every such param.
  keys = {".".join(map(str, k)): tuple(k) for k, _ in
          nnx.to_flat_state(nnx.state(abstract_model, nnx.Param))}

  def construct(loaded: dict[tuple, jax.Array]):
    rngs = nnx.Rngs(params=seed)
    model = spec.build(rngs)
    params = safetensors_io.param_vars(model)
    for path in assigned:
      if path in transforms:  # a placeholder the method's own transform of it replaces (dead code)
        params[path].set_value(jnp.zeros(abstract_values[path].shape, abstract_values[path].dtype))
      else:
        params[path].set_value(loaded[keys[path]])
    model = method.apply(model, rngs=rngs)
    method.adopt(model, {p: loaded[keys[p]] for p in transforms})
    chosen = trainable(method)
    if scan_layers and "stacked" not in held:  # the abstract pass: check it can be stacked and
      # keep the stacked tree's structure (shapes, dtypes, logical axes), not its values
      stacked, stacked_chosen = layer_stack.stack_with_filter(nnx.clone(model), chosen, why=why)
      graph, *states = nnx.split(stacked, stacked_chosen, ...)
      states[0] = cast(states[0])
      held["stacked"] = (graph, *(jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), t) for t in states))
    graphdef, train, frozen = nnx.split(model, chosen, ...)
    held["graphdef"] = graphdef
    return cast(train), frozen

  # Loaded params' shardings, by the logical axes of the model they load into.
  base_shardings = {p: sharding.variable_sharding(v, mesh, rules)
                    for p, v in abstract_params.items()}
  abstract_read = {keys[p]: jax.ShapeDtypeStruct(abstract_values[p].shape, abstract_values[p].dtype,
                                                 sharding=base_shardings[p]) for p in assigned}
  abstract_loaded = {keys[p]: jax.eval_shape(transforms[p], abstract_read[keys[p]])
                     if p in transforms else abstract_read[keys[p]] for p in assigned}
  abstract_out = jax.eval_shape(construct, abstract_loaded)  # method errors surface here
  out_shardings = tuple(sharding.variable_shardings(s, mesh, rules) for s in abstract_out)

  attach = lambda tree, shardings: jax.tree.map(
      lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), tree, shardings)
  if scan_layers:
    graphdef, *states = held["stacked"]
    states = [attach(t, sharding.variable_shardings(t, mesh, rules)) for t in states]
  else:
    graphdef, states = held["graphdef"], [attach(t, sh) for t, sh in zip(abstract_out,
                                                                        out_shardings)]

  def load() -> Built:
    before = reader.bytes_requested
    loaded = {}
    with warnings.catch_warnings():  # a donated input of another shape is freed, not reused
      warnings.filterwarnings("ignore", "Some donated buffers were not usable")
      for p, (name, transform) in assigned.items():
        value = _read_sharded(reader, name, transform, abstract_read[keys[p]], base_shardings[p])
        loaded[keys[p]] = jitted[transforms[p]](value) if p in transforms else value
        del value
      requested = reader.bytes_requested - before
      train, frozen = jax.jit(construct, out_shardings=out_shardings, donate_argnums=0)(loaded)
    del loaded
    graphdef = held["graphdef"]
    if scan_layers:
      graphdef, stacked_train, stacked_frozen = held["stacked"]
      train = _stack_leaf_by_leaf(train, stacked_train, mesh, rules)
      frozen = _stack_leaf_by_leaf(frozen, stacked_frozen, mesh, rules)
    return Built(graphdef, train, frozen, fresh, requested)

  return Blueprint(Built(graphdef, states[0], states[1], fresh, 0), load)


def _return_freed_memory() -> None:
  """Hands freed heap memory back to the system (glibc's `malloc_trim`; a no-op elsewhere): the
  per-layer buffers that stacking frees otherwise stay in the process's heap (the scanned 1B
  build of experiments/scale: 2.77x -> 2.32x the checkpoint's bytes)."""
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def _stack_leaf_by_leaf(state, abstract_stacked, mesh, rules):
  """`state` (unscanned layers) in the stacked layout of `abstract_stacked`, one stacked leaf
  at a time: each leaf's per-layer arrays are donated to the jit that stacks them, so the two
  layouts coexist for one leaf only, never for the whole model."""
  names, leaves, _ = layer_stack.named_leaves(state)
  target_shardings = sharding.variable_shardings(abstract_stacked, mesh, rules)
  target_names, targets, treedef = layer_stack.named_leaves(abstract_stacked)
  plan = layer_stack.plan_conversion({n: tuple(x.shape) for n, x in zip(target_names, targets)},
                                     {n: tuple(x.shape) for n, x in zip(names, leaves)})
  if plan is None:  # nothing to stack (the layouts agree)
    return state
  by_name = dict(zip(names, leaves))
  del leaves, state
  out = []
  for name, target in zip(target_names, jax.tree.leaves(target_shardings)):
    step = plan[name]
    pieces = step[1] if step[0] == "stack" else (step[1],)
    inputs = {p: by_name.pop(p) for p in pieces}
    convert = lambda values, name=name: layer_stack.convert_leaves(plan, values, [name])[0]
    with warnings.catch_warnings():  # per-layer pieces cannot hold the stack: freed, not reused
      warnings.filterwarnings("ignore", "Some donated buffers were not usable")
      out.append(jax.jit(convert, out_shardings=target, donate_argnums=0)(inputs))
    for piece in inputs.values():  # free them now: the caller's unscanned tree still refers to them
      piece.delete()
    _return_freed_memory()
  return jax.tree_util.tree_unflatten(treedef, out)
