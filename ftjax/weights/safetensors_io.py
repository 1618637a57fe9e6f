"""Hugging Face safetensors files <-> Flax NNX params, driven by a name table.

A `WeightTable` is a list of `Rule(hf, nnx, transform)` with `{i}`-style
integer placeholders shared by both sides, e.g.

  Rule('encoder.layer.{i}.attention.self.query.weight',
       'encoder.layer.{i}.attention.self_attn.query.kernel', 'T')

so one table serves both loading (HF name -> NNX path) and export (NNX path ->
HF name). `transform` 'T' transposes: HF Linear weights are [out, in], NNX
kernels [in, out]. The table also says which HF tensors are buffers to skip,
which NNX params may be absent from a checkpoint (they keep their fresh
initialisation and are reported) and which HF name prefixes to try when a name
matches no rule (e.g. `bert.`).

A placeholder that only the HF side has stacks: `Rule('mlp.experts.{e}.down_proj.weight',
'mlp.experts.down_proj', 'T')` loads the HF tensors e = 0, 1, ... (each transposed) into slice
[e] of one NNX param's first axis, and export writes them back one by one: a mixture of
experts keeps HF's per-expert tensors on disk and one [experts, in, out] array in the model (for
`jax.lax.ragged_dot` and an `expert` mesh axis).
"""

import dataclasses
import json
import os
import pathlib
import re
from typing import NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from ftjax.errors import UserError

SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'


class Rule(NamedTuple):
  """One HF tensor <-> one NNX param (or, stacking, one slice of it: see the module doc).
  Templates share `{name}` integer slots."""
  hf: str
  nnx: str
  transform: str = ''  # '' (as is) or 'T' (transpose a 2-D matrix)

  @property
  def stack_key(self) -> str | None:
    """The placeholder only `hf` has (the stacked axis' index), or None."""
    only_hf = set(re.findall(r'\{(\w+)\}', self.hf)) - set(re.findall(r'\{(\w+)\}', self.nnx))
    if len(only_hf) > 1:
      raise ValueError(f'rule {self.hf!r} -> {self.nnx!r} stacks over more than one placeholder')
    return next(iter(only_hf), None)

  def stacked_names(self, groups: dict[str, str], count: int) -> list[str]:
    """The HF names of slices 0..count-1 of a stacking rule's param."""
    return [self.hf.format(**groups, **{self.stack_key: str(e)}) for e in range(count)]


@dataclasses.dataclass(frozen=True)
class WeightTable:
  """How one model class maps to HF tensor names.

  Attributes:
    rules: the name mapping.
    ignore: regexes of HF names that are not parameters (buffers such as
      `embeddings.position_ids`) or belong to heads this model does not have.
    optional: regexes of NNX paths a checkpoint may lack; they stay freshly
      initialised and `load_params` returns them (e.g. a new `classifier`).
    prefix_aliases: (old, new) rewrites of HF name prefixes tried, in order, on
      names that match no rule (e.g. ('bert.', '') for a task checkpoint loaded
      into the base model).
  """
  rules: tuple[Rule, ...]
  ignore: tuple[str, ...] = ()
  optional: tuple[str, ...] = ()
  prefix_aliases: tuple[tuple[str, str], ...] = ()


def _template_regex(template: str) -> re.Pattern:
  parts = re.split(r'\{(\w+)\}', template)
  pattern = ''.join(re.escape(p) if k % 2 == 0 else rf'(?P<{p}>\d+)'
                    for k, p in enumerate(parts))
  return re.compile(pattern)


class CompiledTable:
  """A table with its templates compiled to regexes, both directions."""

  def __init__(self, table: WeightTable):
    self.table = table
    self.by_hf = [(_template_regex(r.hf), r) for r in table.rules]
    self.by_nnx = [(_template_regex(r.nnx), r) for r in table.rules]
    self.ignore = [re.compile(p) for p in table.ignore]
    self.optional = [re.compile(p) for p in table.optional]

  def to_nnx(self, hf_name: str):
    """Returns (nnx_path, rule) for an HF name, or None."""
    hit = self.to_nnx_slot(hf_name)
    return hit and hit[:2]

  def to_nnx_slot(self, hf_name: str):
    """Returns (nnx_path, rule, slot) for an HF name, or None; `slot` is the index along the
    param's first axis for a stacking rule, else None."""
    for rx, rule in self.by_hf:
      m = rx.fullmatch(hf_name)
      if m:
        groups = m.groupdict()
        key = rule.stack_key
        slot = None if key is None else int(groups.pop(key))
        return rule.nnx.format(**groups), rule, slot
    return None

  def to_hf(self, nnx_path: str):
    """Returns (hf_name, rule) for an NNX path, or None (a stacking rule: slice 0's name)."""
    hit = self.to_hf_groups(nnx_path)
    if hit is None:
      return None
    rule, groups = hit
    return (rule.stacked_names(groups, 1)[0] if rule.stack_key else rule.hf.format(**groups)), rule

  def to_hf_groups(self, nnx_path: str):
    """Returns (rule, placeholder values) for an NNX path, or None."""
    for rx, rule in self.by_nnx:
      m = rx.fullmatch(nnx_path)
      if m:
        return rule, m.groupdict()
    return None

  def is_ignored(self, hf_name: str) -> bool:
    return any(rx.fullmatch(hf_name) for rx in self.ignore)

  def is_optional(self, nnx_path: str) -> bool:
    return any(rx.fullmatch(nnx_path) for rx in self.optional)


def apply_transform(transform: str, array):
  """Applies a rule's transform; each is its own inverse, so one function
  serves loading and export."""
  if transform == '':
    return array
  if transform == 'T':
    return array.T
  raise ValueError(f'unknown weight transform {transform!r}')


def _hf_shape(transform: str, shape) -> tuple[int, ...]:
  return tuple(reversed(shape)) if transform == 'T' else tuple(shape)


def param_vars(model: nnx.Module) -> dict[str, nnx.Variable]:
  """The model's `nnx.Param` variables keyed by dotted path."""
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  return {'.'.join(str(k) for k in path): var for path, var in flat}


def _shown(names: list[str]) -> str:
  more = f' (and {len(names) - 1} more)' if len(names) > 1 else ''
  return f"'{names[0]}'{more}"


def match_tensors(param_shapes: dict[str, tuple[int, ...]],
                  tensor_shapes: dict[str, tuple[int, ...]], table: WeightTable, *,
                  source: str = 'checkpoint') -> tuple[dict[str, tuple[str, str]], list[str]]:
  """Maps a checkpoint's tensors onto a model's params by name and shape; reads no values.

  Every tensor must map to a param of matching shape and every param must get a tensor, except
  the table's `ignore`d tensors and `optional` params.

  Args:
    param_shapes: NNX param path -> shape (of real or abstract params).
    tensor_shapes: HF tensor name -> shape (from a file's header, or of arrays in memory).
    table: the model class's weight table.
    source: the file or directory the tensors come from, for error messages.

  Returns:
    (NNX path -> (HF name, transform) of every loaded param, NNX paths the checkpoint lacks:
    they keep their fresh initialisation). A stacked param's HF name is the tuple of its
    slices' names, in order.

  Raises:
    UserError: naming the first unexpected, missing or mis-shaped tensor.
  """
  compiled = CompiledTable(table)
  assigned: dict[str, tuple[str, str]] = {}  # nnx path -> (hf name, transform)
  stacked: dict[str, dict[int, str]] = {}  # nnx path -> slot -> hf name
  unexpected = []
  for name in sorted(tensor_shapes):
    candidates = [name] + [new + name[len(old):]
                           for old, new in table.prefix_aliases
                           if name.startswith(old)]
    if any(compiled.is_ignored(c) for c in candidates):
      continue
    hit = None
    for candidate in candidates:
      hit = compiled.to_nnx_slot(candidate)
      if hit and hit[0] in param_shapes:
        break
      hit = None
    if hit is None:
      unexpected.append(name)
      continue
    path, rule, slot = hit
    if slot is not None:
      _match_slice(name, tensor_shapes[name], path, param_shapes[path], rule, slot,
                   stacked.setdefault(path, {}), source)
      continue
    if path in assigned:
      raise UserError(
          f"tensors '{assigned[path][0]}' and '{name}' in {source} both map to "
          f"parameter '{path}'")
    want = _hf_shape(rule.transform, param_shapes[path])
    if tuple(tensor_shapes[name]) != want:
      raise UserError(
          f"tensor '{name}' in {source} has shape {tuple(tensor_shapes[name])}, "
          f'model expects {want}')
    assigned[path] = (name, rule.transform)
  if unexpected:
    raise UserError(
        f'unexpected tensor {_shown(unexpected)} in {source}: '
        'the model has no parameter for it')
  for path, slots in stacked.items():
    rule, groups = compiled.to_hf_groups(path)
    names = rule.stacked_names(groups, param_shapes[path][0])
    absent = [n for e, n in enumerate(names) if e not in slots]
    if absent:
      raise UserError(f'missing tensor {_shown(absent)} in {source}')
    assigned[path] = (tuple(names), rule.transform)

  missing, fresh = [], []
  for path in sorted(param_shapes):
    if path in assigned:
      continue
    if compiled.is_optional(path):
      fresh.append(path)
    else:
      hit = compiled.to_hf(path)
      missing.append(hit[0] if hit else path)
  if missing:
    raise UserError(f'missing tensor {_shown(missing)} in {source}')
  return assigned, fresh


def _match_slice(name, shape, path, param_shape, rule, slot, slots, source) -> None:
  """Checks HF tensor `name` as slice `slot` of stacked param `path` and records it."""
  if slot >= param_shape[0]:
    raise UserError(f"unexpected tensor '{name}' in {source}: parameter '{path}' stacks "
                    f'{param_shape[0]}, so its slots are 0..{param_shape[0] - 1}')
  if slot in slots:
    raise UserError(f"tensors '{slots[slot]}' and '{name}' in {source} both map to slice "
                    f"{slot} of parameter '{path}'")
  want = _hf_shape(rule.transform, param_shape[1:])
  if tuple(shape) != want:
    raise UserError(f"tensor '{name}' in {source} has shape {tuple(shape)}, model expects {want}")
  slots[slot] = name


def _value(tensors, name, transform):
  """The param value of HF tensor `name`, or of the stacked slices a tuple of names holds."""
  if isinstance(name, tuple):
    return np.stack([apply_transform(transform, tensors[n]) for n in name])
  return apply_transform(transform, tensors[name])


def load_params(model: nnx.Module, tensors: dict[str, np.ndarray],
                table: WeightTable, *, source: str = 'checkpoint') -> list[str]:
  """Copies HF-named tensors into the model's params in place (eagerly, whole tensors).

  Checked as `match_tensors` checks; values are cast to each param's dtype (its `param_dtype`).
  Training builds its models sharded instead (`ftjax.weights.sharded_load`); this serves
  in-memory tensors (tests, small tools).

  Args:
    model: the NNX model; its params are overwritten.
    tensors: HF name -> array, as from `read_safetensors_dir`.
    table: the model class's weight table.
    source: the file or directory the tensors came from, for error messages.

  Returns:
    The NNX paths of params the checkpoint lacked (left freshly initialised).

  Raises:
    UserError: naming the first unexpected, missing or mis-shaped tensor.
  """
  params = param_vars(model)
  assigned, fresh = match_tensors({p: tuple(v[...].shape) for p, v in params.items()},
                                  {n: tuple(t.shape) for n, t in tensors.items()}, table,
                                  source=source)
  for path, (name, transform) in assigned.items():
    var = params[path]
    old = var[...]
    value = jnp.asarray(_value(tensors, name, transform), dtype=old.dtype)
    sharding = getattr(old, 'sharding', None)
    var[...] = jax.device_put(value, sharding) if sharding else value
  return fresh


def export_params(model: nnx.Module, table: WeightTable) -> dict[str, np.ndarray]:
  """Returns the model's params as HF-named numpy arrays (in param dtype).

  Raises:
    UserError: if a param has no HF name, e.g. an unmerged adapter.
  """
  compiled = CompiledTable(table)
  out = {}
  for path, var in param_vars(model).items():
    hit = compiled.to_hf_groups(path)
    if hit is None:
      raise UserError(
          f"parameter '{path}' has no Hugging Face name; merge or drop it "
          'before exporting')
    rule, groups = hit
    array = np.asarray(jax.device_get(var[...]))
    if rule.stack_key:  # one HF tensor per slice of the first axis
      for name, part in zip(rule.stacked_names(groups, array.shape[0]), array):
        out[name] = np.ascontiguousarray(apply_transform(rule.transform, part))
    else:
      out[rule.hf.format(**groups)] = np.ascontiguousarray(apply_transform(rule.transform, array))
  return out


def _load_file(file: pathlib.Path) -> dict[str, np.ndarray]:
  if not file.is_file():
    raise UserError(f'safetensors file {file} does not exist')
  try:
    return safetensors.numpy.load_file(str(file))
  except Exception as e:  # SafetensorError, OSError: truncated or corrupt.
    raise UserError(f'cannot read safetensors file {file}: {e}') from e


def checkpoint_files(path: str | os.PathLike) -> list[pathlib.Path]:
  """The safetensors files of an HF checkpoint: one `.safetensors` file, a directory's
  `model.safetensors`, or the shards its `model.safetensors.index.json` names."""
  path = pathlib.Path(path)
  if path.is_file():
    return [path]
  if not path.is_dir():
    raise UserError(f'checkpoint directory {path} does not exist')
  index = path / INDEX_FILE
  if index.is_file():
    try:
      weight_map = json.loads(index.read_text())['weight_map']
      return [path / shard for shard in sorted(set(weight_map.values()))]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise UserError(f'invalid safetensors index {index}: {e}') from e
  if (path / SINGLE_FILE).is_file():
    return [path / SINGLE_FILE]
  raise UserError(f'no {SINGLE_FILE} or {INDEX_FILE} in {path}')


def read_safetensors_dir(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads all tensors of an HF checkpoint into memory.

  Args:
    path: as for `checkpoint_files`.

  Returns:
    Tensor name -> numpy array (bf16 as `ml_dtypes.bfloat16`).
  """
  tensors = {}
  for file in checkpoint_files(path):
    tensors.update(_load_file(file))
  return tensors


_DTYPE_BYTES = {'BOOL': 1, 'U8': 1, 'I8': 1, 'F8_E4M3': 1, 'F8_E5M2': 1, 'I16': 2, 'U16': 2,
                'F16': 2, 'BF16': 2, 'I32': 4, 'U32': 4, 'F32': 4, 'I64': 8, 'U64': 8, 'F64': 8}


def _itemsize(dtype: str) -> int:
  return _DTYPE_BYTES.get(dtype, 0)


class CheckpointReader:
  """Reads slices of an HF checkpoint's tensors on demand, from memory-mapped files; holds no
  open file between reads, so it needs no closing.

  Opening reads only the files' headers (names, shapes, dtypes). Each `read` maps the tensor's
  file, copies one slice out and unmaps it again, so a process that needs a quarter of each
  tensor touches a quarter of the checkpoint, and the mapped file pages (which count in the
  process's resident set while mapped) never add up to more than one slice. `bytes_requested`
  counts the bytes every `read` returned: how much a process asked for, independent of the OS's
  page cache.
  """

  def __init__(self, path: str | os.PathLike):
    self.source = str(path)
    self._files: dict[str, pathlib.Path] = {}  # tensor name -> its file
    self.shapes: dict[str, tuple[int, ...]] = {}
    self.bytes_requested = 0
    self.total_bytes = 0  # of every tensor's data
    for file in checkpoint_files(path):
      if not file.is_file():
        raise UserError(f'safetensors file {file} does not exist')
      try:
        with safetensors.safe_open(str(file), framework='numpy') as handle:
          slices = {n: handle.get_slice(n) for n in handle.keys()}
          shapes = {n: tuple(s.get_shape()) for n, s in slices.items()}
          self.total_bytes += sum(int(np.prod(shapes[n])) * _itemsize(s.get_dtype())
                                  for n, s in slices.items())
      except Exception as e:  # SafetensorError, OSError: truncated or corrupt header.
        raise UserError(f'cannot read safetensors file {file}: {e}') from e
      for name in shapes:
        if name in self._files:
          raise UserError(f"tensor '{name}' appears in two files of {path}")
        self._files[name] = file
      self.shapes.update(shapes)

  def read(self, name: str, index: tuple[slice, ...] = ()) -> np.ndarray:
    """The slice `index` (a tuple of slices, as `jax.make_array_from_callback` passes) of tensor
    `name`, as a numpy array."""
    file = self._files[name]
    try:
      with safetensors.safe_open(str(file), framework='numpy') as handle:
        array = np.array(handle.get_slice(name)[index] if index else handle.get_tensor(name))
    except Exception as e:  # a truncated data section shows up only when read
      raise UserError(f"cannot read tensor '{name}' from {file}: {e}") from e
    self.bytes_requested += array.nbytes
    return array

  def read_param(self, name: str | tuple[str, ...], transform: str, dtype,
                 index: tuple[slice, ...] = ()) -> np.ndarray:
    """The slice `index` of the NNX param that tensor `name` loads into through `transform`,
    cast on the host to the param's `dtype` (bf16 <-> fp32 casts round as XLA's do). A tuple of
    names is a stacked param (`match_tensors`): only the slices `index[0]` selects are read."""
    if isinstance(name, tuple):
      chosen = name[index[0]] if index else name
      return np.stack([self.read_param(n, transform, dtype, index[1:]) for n in chosen])
    hf_index = tuple(reversed(index)) if transform == 'T' else index
    value = apply_transform(transform, self.read(name, hf_index))
    return np.ascontiguousarray(value.astype(dtype, copy=False))


def write_safetensors(tensors: dict[str, np.ndarray],
                      path: str | os.PathLike) -> None:
  """Writes one safetensors file atomically (a temp file, then a rename)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
  try:
    # transformers requires the `format` metadata key.
    safetensors.numpy.save_file(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp),
        metadata={'format': 'pt'})
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
