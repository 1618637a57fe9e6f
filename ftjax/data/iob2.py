"""IOB2 tag sequences: checking them and reading their entities (seqeval's strict IOB2 mode).

A tag is `O`, `B-TYPE` (an entity starts) or `I-TYPE` (it continues). In IOB2 every entity
starts with `B-`: an `I-TYPE` is valid only after `B-TYPE` or `I-TYPE` of the same type. Gold
data must be valid (`check`); a model's predictions may not be, and in strict mode an invalid
`I-` opens no entity, as seqeval's `mode="strict", scheme=IOB2` counts them.
"""

from collections.abc import Sequence


def check(tags: Sequence[str], where: str) -> None:
  """Raises ValueError naming `where` and the first tag at fault."""
  previous = "O"
  for i, tag in enumerate(tags):
    if tag != "O" and (tag[:2] not in ("B-", "I-") or len(tag) < 3):
      raise ValueError(f"{where}: tag {i} {tag!r} is not IOB2 (O, B-TYPE or I-TYPE)")
    if tag.startswith("I-") and previous[2:] != tag[2:]:
      raise ValueError(f"{where}: tag {i} {tag!r} follows {previous!r}: an IOB2 entity starts "
                       f"with B-{tag[2:]}")
    previous = tag


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
  """The strict-mode entities of one sequence as (type, first index, end index)."""
  out, start, kind = set(), None, None
  for i, tag in enumerate(list(tags) + ["O"]):
    if kind is not None and tag != f"I-{kind}":
      out.add((kind, start, i))
      start = kind = None
    if tag.startswith("B-"):
      start, kind = i, tag[2:]
  return out


def label_names(tag_sets) -> list[str]:
  """Label order for a tag set: `O` first, then each type's B- and I- tags by type name."""
  tags = set().union(*tag_sets) | {"O"}
  kinds = sorted({t[2:] for t in tags if t != "O"})
  return ["O"] + [f"{p}-{k}" for k in kinds for p in ("B", "I")]
