"""Method registry: `config.method.name` -> method class."""

from __future__ import annotations

from ftjax.errors import UserError
from ftjax.methods.base import Method

_METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
  """Class decorator: makes a method selectable by its `name`."""
  if not cls.name or cls.name in _METHODS:
    raise ValueError(f"method name '{cls.name}' is empty or already registered")
  _METHODS[cls.name] = cls
  return cls


def names() -> list[str]:
  return sorted(_METHODS)


def get(name: str, options=None) -> Method:
  if name not in _METHODS:
    raise UserError(f"unknown method '{name}' (config key method.name); known: {', '.join(names())}")
  return _METHODS[name](options)
