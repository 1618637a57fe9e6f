"""Scanned layer stacks and per-layer rematerialisation, for any model with an `nnx.List` of layers.

Why not `nnx.vmap`/`nnx.scan`: ftjax stacks layers that already exist (HF weights loaded and
methods applied on the per-layer paths `layers.{i}`), which `nnx.vmap` cannot do (it builds new
modules from a function); `nnx.scan` over a stacked layer fails on an `nnx.Rngs` a method's layer
holds unstacked (flax 0.12.8: IndexError), and its `split_rngs` keys are not the list's per-layer
`fold_in` keys that make scanned runs equal unscanned ones; and Orbax restores across layouts need
the path-level conversion below (`plan_conversion`, `convert_leaves`), which nnx has no API for.

A model opts in by running its layer list through `run_layers(self.<list>, body, carry, ...,
remat=self.remat)` from the module that owns the list (`LlamaModel.layers`, `BertEncoder.layer`,
`GPT2Model.h`); that owner takes `remat` (a policy name of `REMAT_POLICIES`, checked by
`check_remat`) as a constructor argument and keeps it, so it survives methods wrapping the layers
and `stack_layers` replacing the list: both layouts run under the policy the model was built with.

Two layouts of the same layers:
  unscanned  an `nnx.List` of L layers, paths `model.layers.{i}.self_attn.q_proj.kernel`; what the
             weight tables, the fine-tuning methods, generation and export work on;
  stacked    one layer module whose variables have a leading L axis (logical sharding axis
             `LAYER_AXIS`, which no mesh rule maps, so it stays replicated), paths
             `model.layers.self_attn.q_proj.kernel`, run with one `jax.lax.scan` whose body is
             the layer: the step compiles the layer once instead of L times.
`stack_layers` / `unstack_layers` convert a model between them (after a method wrapped every
layer alike: the layers must have equal graphdefs). `convert_tree` converts checkpointed arrays
between the layouts by their paths (Orbax restores of the other layout use it).

Randomness is per layer and the same in both layouts: layer i gets an `nnx.Rngs` whose streams are
`fold_in(key, i)` of one key drawn per stream, so a scanned run reproduces an unscanned one.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from flax import nnx
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from ftjax.errors import UserError

LAYER_AXIS = 'layers'  # logical axis name of the stacked dimension (replicated by default)
QKV_NAME = 'qkv_proj'  # `checkpoint_name` of the q/k/v projections (policy `save_qkv_proj`)
STACKED_ATTR = 'stacked_layers'  # static attribute of a stacked layer module: L

_cp = jax.checkpoint_policies
# `model.remat` -> the `jax.checkpoint` policy applied around each layer (None = no remat).
REMAT_POLICIES: dict[str, Any] = {
    'none': None,
    'full': _cp.nothing_saveable,  # keep only each layer's input; recompute the rest
    'nothing_saveable': _cp.nothing_saveable,
    'dots_saveable': _cp.dots_saveable,  # keep matmul outputs, recompute elementwise ops
    'dots_with_no_batch_dims_saveable': _cp.dots_with_no_batch_dims_saveable,
    'save_qkv_proj': _cp.save_only_these_names(QKV_NAME),  # keep q/k/v projections only
}


def name_qkv(x):
  """Tags a q/k/v projection output for the `save_qkv_proj` policy (a no-op otherwise)."""
  return checkpoint_name(x, QKV_NAME)


def check_remat(policy: str, key: str = 'model.remat') -> str:
  """`policy` when it names one of `REMAT_POLICIES`, else a UserError naming `key`."""
  if policy not in REMAT_POLICIES:
    raise UserError(f"config key '{key}' must be one of {', '.join(REMAT_POLICIES)}, "
                    f"got '{policy}'")
  return policy


# --- running the layers -------------------------------------------------------------------


def _layer_rngs(rngs: nnx.Rngs | None) -> Callable[[Any], nnx.Rngs | None]:
  """Layer i's own `nnx.Rngs`: every stream of `rngs` folded with i (i may be traced)."""
  if rngs is None:
    return lambda i: None
  keys = {name: stream() for name, stream in rngs.items()}
  return lambda i: nnx.Rngs(**{name: jax.random.fold_in(key, i) for name, key in keys.items()})


def _module_at(root, path):
  for part in path:
    root = root[part] if isinstance(part, int) else getattr(root, part)
  return root


def _held_rngs(layer) -> list[tuple[tuple, str, nnx.Rngs]]:
  """(module path, attribute, Rngs) of every `nnx.Rngs` the layer's modules hold.

  Methods may hand the train step's rngs to the layers they add (`methods.base.bind_train_rngs`);
  `run_layers` gives each layer its own instead, so the layer state holds no RNG state while it
  is split, scanned or rematerialised.
  """
  return [(tuple(path), name, value) for path, module in nnx.iter_modules(layer)
          for name, value in list(vars(module).items()) if isinstance(value, nnx.Rngs)]


def _set_rngs(layer, held, rngs) -> None:
  for path, name, _ in held:
    setattr(_module_at(layer, path), name, rngs)


def _restore_rngs(layer, held) -> None:
  for path, name, value in held:
    setattr(_module_at(layer, path), name, value)


def run_layers(layers, body: Callable, carry, xs: Sequence[Any] | None = None, *,
               rngs: nnx.Rngs | None = None, remat: str = 'none'):
  """Runs the layers in order: `carry, y_i = body(layer_i, carry, i, x_i, rngs_i)`.

  Args:
    layers: an `nnx.List` of layers (a Python loop; `i` is an int) or a stacked layer from
      `stack_layers` (one `jax.lax.scan`; `i` is a traced int32 scalar, so `body` must read
      per-layer data with it, e.g. `windows[i]`).
    body: the per-layer function; `y_i` may be None.
    carry: e.g. the hidden states.
    xs: None or L per-layer inputs (pytrees of arrays, e.g. a layer's KV-cache slots).
    rngs: None, or an `nnx.Rngs` from which each layer gets its own (see the module doc); an
      `nnx.Rngs` held inside a layer (a method's binding) is replaced by that layer's for the call.
    remat: a `REMAT_POLICIES` name, applied with `jax.checkpoint` around each layer's body.

  Returns:
    (carry, [y_0, ..., y_{L-1}]).
  """
  policy = REMAT_POLICIES[remat]
  layer_rngs = _layer_rngs(rngs)
  if isinstance(layers, nnx.List):
    ys = []
    for i, layer in enumerate(layers):
      x = None if xs is None else xs[i]
      held = _held_rngs(layer)
      if policy is None:
        own = layer_rngs(i)
        _set_rngs(layer, held, own)
        carry, y = body(layer, carry, i, x, own)
      else:
        _set_rngs(layer, held, None)
        graphdef, state = nnx.split(layer)

        def step(state, carry, x, i=i, graphdef=graphdef, held=held):
          layer, own = nnx.merge(graphdef, state), layer_rngs(i)
          _set_rngs(layer, held, own)
          return body(layer, carry, i, x, own)

        carry, y = jax.checkpoint(step, policy=policy)(state, carry, x)
      _restore_rngs(layer, held)
      ys.append(y)
    return carry, ys

  n = num_stacked(layers)
  if n is None:
    raise TypeError(f'{type(layers).__name__} is neither an nnx.List of layers nor a stacked layer')
  held = _held_rngs(layers)
  _set_rngs(layers, held, None)
  graphdef, state = nnx.split(layers)
  _restore_rngs(layers, held)
  stacked_xs = None if xs is None else jax.tree.map(lambda *a: jnp.stack(a), *xs)

  def scan_step(carry, inputs):
    state, i, x = inputs
    layer, own = nnx.merge(graphdef, state), layer_rngs(i)
    _set_rngs(layer, held, own)
    return body(layer, carry, i, x, own)

  if policy is not None:
    scan_step = jax.checkpoint(scan_step, policy=policy, prevent_cse=False)
  carry, ys = jax.lax.scan(scan_step, carry, (state, jnp.arange(n, dtype=jnp.int32), stacked_xs))
  if ys is None:
    return carry, [None] * n
  return carry, [jax.tree.map(lambda a, i=i: a[i], ys) for i in range(n)]


# --- finding the layer lists ------------------------------------------------------------------


def num_stacked(module) -> int | None:
  """L for a stacked layer module, else None."""
  return getattr(module, STACKED_ATTR, None) if isinstance(module, nnx.Module) else None


def _owners(model, *, stacked: bool) -> list[tuple[tuple, nnx.Module, str, Any]]:
  """(path, owner, attribute, layers) of every layer list (or stacked layer) whose owner runs
  it through `run_layers` (has a `remat` attribute)."""
  found = []
  for path, node in nnx.iter_graph(model):
    if stacked:
      hit = num_stacked(node) is not None
    else:
      hit = isinstance(node, nnx.List) and len(node) > 0 and all(
          isinstance(m, nnx.Module) for m in node)
    if not hit or not path or isinstance(path[-1], int):
      continue
    owner = model
    for part in path[:-1]:
      owner = owner[part] if isinstance(part, int) else getattr(owner, part)
    if hasattr(owner, 'remat'):
      found.append((tuple(path), owner, path[-1], node))
  return found


def per_layer_ndim(leaf) -> int:
  """Dimensions of one layer's slice: a variable stacked by `stack_layers` (leading sharding axis
  `LAYER_AXIS`) has one fewer than its array."""
  ndim = len(leaf.shape)
  if isinstance(leaf, nnx.Variable):
    axes = leaf.get_metadata().get('out_sharding')
    if axes and axes[0] == LAYER_AXIS:
      return ndim - 1
  return ndim


def is_stacked(model) -> bool:
  return bool(_owners(model, stacked=True))


def _dotted(path) -> str:
  return '.'.join(str(p) for p in path)


def _check_identical(model, lists, why: str = '') -> None:
  """Every layer of a list must have layer 0's graphdef and share no variable with another."""
  if not lists:
    raise UserError(f'{type(model).__name__} has no layer list that can be scanned '
                    '(model.scan_layers needs an nnx.List run through layer_stack.run_layers)')
  for path, _, _, layers in lists:
    first = nnx.graphdef(layers[0])
    seen: dict[int, int] = {}
    for i, layer in enumerate(layers):
      if nnx.graphdef(layer) != first:
        raise UserError(
            f"model.scan_layers needs identical layers, but '{_dotted(path + (i,))}' differs from "
            f"'{_dotted(path + (0,))}' ({f'{why}: ' if why else ''}e.g. targets that match some "
            'layers only, or a per-layer index); set model.scan_layers=False')
      for _, variable in nnx.iter_graph(layer):
        if isinstance(variable, nnx.Variable):
          other = seen.setdefault(id(variable), i)
          if other != i:
            raise UserError(
                f"model.scan_layers needs layers that share no variable, but '{_dotted(path)}' "
                f"{other} and {i} share one{f' ({why})' if why else ''}; set "
                'model.scan_layers=False')


# --- converting a model ---------------------------------------------------------------------


def _stack_variables(*variables: nnx.Variable) -> nnx.Variable:
  first = variables[0]
  stacked = first.replace(jnp.stack([v.get_value() for v in variables]))
  axes = first.get_metadata().get('out_sharding') or (None,) * first.get_value().ndim
  stacked.set_metadata(out_sharding=(LAYER_AXIS,) + tuple(axes), eager_sharding=False)
  return stacked


def _slice_variable(variable: nnx.Variable, i: int) -> nnx.Variable:
  sliced = variable.replace(variable.get_value()[i])
  axes = variable.get_metadata().get('out_sharding')
  if axes and axes[0] == LAYER_AXIS:
    sliced.set_metadata(out_sharding=tuple(axes[1:]))
  return sliced


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def stack_layers(model: nnx.Module) -> nnx.Module:
  """A copy of `model` whose layer lists are stacked (arrays are copied into the stacks).

  Raises a UserError when the layers are not identical (a method changed some of them only).
  """
  model = nnx.clone(model)
  lists = _owners(model, stacked=False)
  _check_identical(model, lists)
  for _, owner, attr, layers in lists:
    graphdef = nnx.graphdef(layers[0])
    states = [nnx.state(layer) for layer in layers]
    stacked = nnx.merge(graphdef, jax.tree.map(_stack_variables, *states, is_leaf=_is_variable))
    setattr(stacked, STACKED_ATTR, len(layers))
    setattr(owner, attr, stacked)
  return model


def unstack_layers(model: nnx.Module) -> nnx.Module:
  """`model` itself when nothing is stacked, else a copy with every stack back as an `nnx.List`
  (slices of the stacked arrays)."""
  if not is_stacked(model):
    return model
  model = nnx.clone(model)
  for _, owner, attr, stacked in _owners(model, stacked=True):
    n = num_stacked(stacked)
    graphdef, state = nnx.split(stacked)
    layers = []
    for i in range(n):
      layer = nnx.merge(graphdef, jax.tree.map(lambda v, i=i: _slice_variable(v, i), state,
                                               is_leaf=_is_variable))
      delattr(layer, STACKED_ATTR)
      layers.append(layer)
    setattr(owner, attr, nnx.List(layers))
  return model


def stack_with_filter(model: nnx.Module, trainable, *, why: str) -> tuple[nnx.Module, Any]:
  """`stack_layers(model)` and an NNX filter that selects, on the stacked model, exactly the
  variables `trainable` selects on `model` (evaluated on the unscanned paths, so path regexes
  such as `method.freeze` mean what they say).

  Raises a UserError naming `why` (the method and freeze regex) when the layers would train
  different variables (e.g. only the top layers).
  """
  lists = _owners(model, stacked=False)
  _check_identical(model, lists, why)
  chosen = {tuple(p) for p, _ in nnx.to_flat_state(nnx.state(model, trainable))}
  prefixes = {path: len(layers) for path, _, _, layers in lists}
  selected = set()
  for path in chosen:
    prefix = next((p for p in prefixes if path[:len(p)] == p and len(path) > len(p)
                   and isinstance(path[len(p)], int)), None)
    if prefix is None:
      selected.add(path)
      continue
    rest = path[len(prefix) + 1:]
    for i in range(prefixes[prefix]):
      if prefix + (i,) + rest not in chosen:
        raise UserError(
            f"model.scan_layers needs every layer to train the same variables, but "
            f"'{_dotted(path)}' trains and '{_dotted(prefix + (i,) + rest)}' does not ({why}); "
            'set model.scan_layers=False')
    selected.add(prefix + rest)

  def in_selected(path, unused_variable) -> bool:
    return tuple(path) in selected

  return stack_layers(model), in_selected


# --- converting checkpointed arrays -------------------------------------------------------------


def _plan_leaf(name: tuple[str, ...], shape, saved: dict[tuple[str, ...], tuple]):
  """How to build the target leaf `name` from the saved leaves, or None."""
  if name in saved:
    return ('copy', name) if tuple(saved[name]) == tuple(shape) else None
  # Target stacked, saved unscanned: `a.b.rest` <- `a.b.{i}.rest` for i < L.
  for k in range(1, len(name)):
    pieces = []
    while (piece := name[:k] + (str(len(pieces)),) + name[k:]) in saved:
      pieces.append(piece)
    if pieces and len(shape) >= 1 and shape[0] == len(pieces) and all(
        tuple(saved[p]) == tuple(shape[1:]) for p in pieces):
      return ('stack', tuple(pieces))
  # Target unscanned, saved stacked: `a.b.{i}.rest` <- `a.b.rest`[i].
  for k, part in enumerate(name):
    whole = name[:k] + name[k + 1:]
    if part.isdigit() and whole in saved:
      s = tuple(saved[whole])
      if s and s[0] > int(part) and s[1:] == tuple(shape):
        return ('slice', whole, int(part))
  return None


def key_name(key) -> str:
  """One JAX key-path entry as the string `plan_conversion`'s names are made of."""
  return jax.tree_util.keystr((key,), simple=True, separator='')


def named_leaves(tree, is_leaf=None):
  """(each leaf's name, a tuple of `key_name`s; the leaves; the treedef) of a pytree: the names
  `plan_conversion` and `convert_leaves` take."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return [tuple(key_name(k) for k in path) for path, _ in leaves], [x for _, x in leaves], treedef


def plan_conversion(target: dict[tuple[str, ...], tuple],
                    saved: dict[tuple[str, ...], tuple]) -> dict | None:
  """Maps every target leaf (name -> shape) to saved leaves of the other layer layout.

  Returns None when the layouts agree already or when the saved tree is not the target's in
  the other layout (then the caller restores as usual and reports a mismatch).
  """
  if set(target) == set(saved):
    return None
  plan, used = {}, set()
  for name, shape in target.items():
    step = _plan_leaf(name, shape, saved)
    if step is None:
      return None
    plan[name] = step
    used.update(step[1] if step[0] == 'stack' else (step[1],))
  return plan if used == set(saved) else None


def saved_sharding(step, target_sharding):
  """The sharding to restore a saved leaf with, from the target leaf it feeds."""
  if not isinstance(target_sharding, jax.sharding.NamedSharding) or step[0] == 'copy':
    return target_sharding
  spec = tuple(target_sharding.spec)
  P = jax.sharding.PartitionSpec  # pylint: disable=invalid-name
  if step[0] == 'stack':  # a per-layer piece of a stacked target
    return jax.sharding.NamedSharding(target_sharding.mesh, P(*spec[1:]))
  return jax.sharding.NamedSharding(target_sharding.mesh, P(None, *spec))  # a whole stack


def convert_leaves(plan: dict, saved: dict[tuple[str, ...], Any], names: list[tuple[str, ...]]):
  """The target leaves (in `names` order) built from the restored saved leaves."""
  out = []
  for name in names:
    step = plan[name]
    if step[0] == 'copy':
      out.append(saved[step[1]])
    elif step[0] == 'stack':
      out.append(jnp.stack([saved[p] for p in step[1]]))
    else:
      out.append(saved[step[1]][step[2]])
  return out
