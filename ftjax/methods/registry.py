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


def defaults() -> dict[str, dict]:
  """Each method's own options, for the base config (`method.<name>.<option>`)."""
  return {name: dict(cls.defaults) for name, cls in sorted(_METHODS.items()) if cls.defaults}


def get(name: str, method_cfg=None) -> Method:
  """The method `name`, given its options from `config.method.<name>` when present."""
  if name not in _METHODS:
    raise UserError(f"unknown method '{name}' (config key method.name); known: {', '.join(names())}")
  options = method_cfg.get(name) if method_cfg is not None else None
  return _METHODS[name](options)
