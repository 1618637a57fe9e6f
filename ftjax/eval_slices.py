"""Which eval slice each example belongs to: token-length buckets and metadata columns.

`config.eval.slice_by` names the slicings: `length` (token length after truncation, in
`eval.length_buckets` quantile buckets of `data.eval_split`, or at fixed `eval.length_boundaries`)
and any other name is a metadata column of the local data files (`data.name = "files"`).
Every slicing puts each example in exactly one of its slices; several slicings concatenate
their slices. The result is a 0/1 membership matrix [examples, slices] per split, which the
data pipeline adds to eval batches as `slices`; the eval step turns it into per-slice sums.

Metadata columns are not part of the prepared TFDS records, so they are read back from the raw
files and matched to records by content (text, pair, label). Records with identical content get
identical predictions, so which of several identical records gets which value does not change
any slice's metrics.
"""

from __future__ import annotations

import collections

import numpy as np

from ftjax.data import files_reader
from ftjax.errors import UserError

LENGTH = "length"
MAX_VALUES = 30  # a metadata column's most frequent values; the rest share one slice
OTHER = "(other)"
MISSING = "(missing)"


def quantile_boundaries(lengths: np.ndarray, buckets: int) -> tuple[int, ...]:
  """Inclusive upper bounds splitting `lengths` into about equal-count buckets (deduplicated)."""
  if buckets <= 1 or len(lengths) == 0:
    return ()
  cuts = np.quantile(lengths, [i / buckets for i in range(1, buckets)], method="lower")
  return tuple(sorted({int(c) for c in cuts if c < lengths.max()}))


def length_slices(lengths: np.ndarray, boundaries) -> tuple[np.ndarray, list[str]]:
  """One-hot buckets of token lengths; bucket i holds (boundaries[i-1], boundaries[i]]."""
  boundaries = list(boundaries)
  index = np.searchsorted(np.asarray(boundaries, np.int64), lengths, side="left")
  edges = [0] + boundaries
  names = [f"{LENGTH}:{edges[i] + 1}-{edges[i + 1]}" for i in range(len(boundaries))]
  names.append(f"{LENGTH}:>{boundaries[-1]}" if boundaries else f"{LENGTH}:all")
  return _one_hot(index, len(names)), names


def value_slices(values: list[str], column: str) -> tuple[np.ndarray, list[str]]:
  """One-hot slices of a metadata column's values (the MAX_VALUES most frequent, then OTHER)."""
  counts = collections.Counter(values)
  kept = sorted(v for v, _ in counts.most_common(MAX_VALUES))
  lookup = {v: i for i, v in enumerate(kept)}
  names = [f"{column}={v}" for v in kept]
  if len(counts) > len(kept):
    names.append(f"{column}={OTHER}")
  index = np.array([lookup.get(v, len(kept)) for v in values], np.int64)
  return _one_hot(index, len(names)), names


def _one_hot(index: np.ndarray, size: int) -> np.ndarray:
  out = np.zeros((len(index), size), np.float32)
  out[np.arange(len(index)), index] = 1.0
  return out


def column_values(data_cfg, split: str, rows: list[dict], label_names, column: str) -> list[str]:
  """The metadata `column` of each record of `split`, read from the raw file of `data.files`.

  `rows` are the split's records (`ClassificationData.rows`), `label_names` its classes.
  """
  check_fields(data_cfg, (column,))
  path = files_reader.check_file(data_cfg.files[split], f"data file for split {split!r}")
  by_content = collections.defaultdict(list)
  seen_column = False
  for line_no, row in files_reader.read_rows(path):
    where = f"{path}:{line_no}"
    seen_column |= column in row
    key = (files_reader.get_text(row, data_cfg.text_field, where),
           files_reader.get_text(row, data_cfg.text_pair_field, where)
           if data_cfg.text_pair_field else None,
           files_reader.label_index(files_reader.get_raw_label(row, data_cfg.label_field, where),
                                    label_names, where))
    value = row.get(column)
    by_content[key].append(MISSING if value is None or str(value) == "" else str(value))
  if not seen_column:
    raise UserError(f"config key 'eval.slice_by' names column '{column}', which {path} does not have")
  for values in by_content.values():
    values.reverse()  # pop() from the end hands out values in file order
  out = []
  for r in rows:
    values = by_content.get((r["text"], r.get("text_pair"), r["label"]))
    if not values:
      raise ValueError(f"record not found in {path}: {r['text'][:80]!r}")
    out.append(values.pop())
  return out


class Slicer:
  """Per-split slice membership for a dataset; `slicer(split)` is what `eval_batches` uses."""

  def __init__(self, dataset, eval_cfg, data_cfg):
    """`dataset` needs `split_sizes`, `label_names`, `token_lengths(split)` and `rows(split)`."""
    check_fields(data_cfg, eval_cfg.slice_by)
    self._dataset = dataset
    self._eval_cfg = eval_cfg
    self._data_cfg = data_cfg
    self._cache: dict[str, tuple[np.ndarray, list[str]]] = {}
    self._boundaries = None

  @property
  def fields(self) -> tuple[str, ...]:
    return tuple(self._eval_cfg.slice_by)

  def length_boundaries(self) -> tuple[int, ...]:
    """Fixed `eval.length_boundaries`, else quantiles of `data.eval_split` (same for every split)."""
    if self._boundaries is None:
      fixed = tuple(int(b) for b in self._eval_cfg.length_boundaries)
      if fixed:
        self._boundaries = fixed
      else:
        reference = self._data_cfg.eval_split
        if reference not in self._dataset.split_sizes:
          reference = sorted(self._dataset.split_sizes)[0]
        self._boundaries = quantile_boundaries(self._dataset.token_lengths(reference),
                                               int(self._eval_cfg.length_buckets))
    return self._boundaries

  def _build(self, split: str) -> tuple[np.ndarray, list[str]]:
    if split not in self._cache:
      parts, names = [], []
      rows = None
      for field in self.fields:
        if field == LENGTH:
          matrix, field_names = length_slices(self._dataset.token_lengths(split), self.length_boundaries())
        else:
          if rows is None:
            rows = self._dataset.rows(split)
          values = column_values(self._data_cfg, split, rows, self._dataset.label_names, field)
          matrix, field_names = value_slices(values, field)
        parts.append(matrix)
        names.extend(field_names)
      size = self._dataset.split_sizes[split]
      self._cache[split] = (np.concatenate(parts, 1) if parts else np.zeros((size, 0), np.float32),
                            names)
    return self._cache[split]

  def __call__(self, split: str) -> np.ndarray:
    return self._build(split)[0]

  def names(self, split: str) -> list[str]:
    return self._build(split)[1]


def check_fields(data_cfg, fields) -> None:
  """Metadata slicing needs local files; fail early, naming the config key."""
  columns = [f for f in fields if f != LENGTH]
  if columns and data_cfg.name != "files":
    raise UserError(f"config key 'eval.slice_by' names column(s) {columns}, but metadata columns "
                    f"need data.name='files' (got '{data_cfg.name}'); use 'length' instead")
