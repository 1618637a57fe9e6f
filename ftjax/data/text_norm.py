"""Text normalisation and de-duplication shared by the dataset builders."""

import collections
from collections.abc import Callable, Iterable
import re
from typing import TypeVar

T = TypeVar("T")

_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
  """Lowercases and collapses whitespace; the key under which texts count as duplicates."""
  return _SPACE.sub(" ", text).strip().lower()


def deduplicate(
    rows: Iterable[T], text_of: Callable[[T], str], label_of: Callable[[T], object]
) -> tuple[list[T], dict[str, int]]:
  """Drops rows whose normalised text was seen before.

  Duplicates that agree on the label keep their first occurrence; texts that appear with
  different labels are dropped entirely, since no label for them can be trusted.

  Returns:
    The kept rows in input order, and counts: `exact` (repeats removed, first kept),
    `conflicting` (rows removed because their text has conflicting labels) and `total`.
  """
  rows = list(rows)
  labels = collections.defaultdict(set)
  for row in rows:
    labels[normalize(text_of(row))].add(label_of(row))
  kept, seen = [], set()
  exact = conflicting = 0
  for row in rows:
    key = normalize(text_of(row))
    if len(labels[key]) > 1:
      conflicting += 1
    elif key in seen:
      exact += 1
    else:
      seen.add(key)
      kept.append(row)
  return kept, {"exact": exact, "conflicting": conflicting, "total": exact + conflicting}
