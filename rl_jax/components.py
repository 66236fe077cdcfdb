"""Components named in a config: a registered name or an import path, with keyword arguments
that the component's own signature validates.

  task.name=countdown                          a registered name
  task.name=my_pkg.tasks:make_task             an import path "module:attribute"
  task.max_digits=4                            a keyword argument of the component

A key the component does not take fails with a message naming the config field (and the
closest name it does take); a value is converted to the parameter's annotated type (command
line values arrive as strings) or rejected, naming the field. Nothing here knows any specific
component: adding one never edits the central config schema.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any


class ComponentError(ValueError):
  """A component name or argument is wrong; the message names the config field."""


@dataclasses.dataclass(frozen=True)
class Component:
  """A config section naming a component: `name` plus free keyword arguments."""

  name: str
  kwargs: tuple[tuple[str, Any], ...] = ()

  @classmethod
  def of(cls, name: str, **kwargs) -> Component:
    return cls(name, tuple(sorted(kwargs.items())))

  @property
  def args(self) -> dict[str, Any]:
    return dict(self.kwargs)

  def to_dict(self) -> dict[str, Any]:
    return {"name": self.name, **self.args}


def resolve(field: str, name: str, registry: Mapping[str, Any]) -> Any:
  """The object a config names: `registry[name]`, or the attribute of an import path
  "module:attribute" (or "module.attribute")."""
  if name in registry:
    return registry[name]
  if ":" not in name and "." not in name:
    raise ComponentError(
      f"config field {field!r}={name!r} is neither a registered name "
      f"({', '.join(sorted(registry))}) nor an import path like 'my_pkg.module:attribute'"
    )
  module_name, _, attr = name.partition(":") if ":" in name else name.rpartition(".")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ComponentError(
      f"config field {field!r}={name!r}: cannot import {module_name!r}: {e}"
    ) from None
  if not hasattr(module, attr):
    raise ComponentError(f"config field {field!r}={name!r}: module {module_name!r} has no {attr!r}")
  return getattr(module, attr)


def _parameters(fn: Callable) -> dict[str, inspect.Parameter]:
  """The parameters of `fn` (of a class: its constructor), string annotations evaluated."""
  target = fn.__init__ if inspect.isclass(fn) else fn
  try:
    params = dict(inspect.signature(target, eval_str=True).parameters)
  except (NameError, TypeError, SyntaxError):  # an annotation that does not evaluate
    params = dict(inspect.signature(target).parameters)
  params.pop("self", None)
  return params


def check_kwargs(
  section: str, fn: Callable, kwargs: Mapping[str, Any], *, skip: int = 0
) -> dict[str, Any]:
  """`kwargs` checked against `fn`'s signature (its first `skip` positional parameters are
  supplied by the caller) and converted to the annotated types. Raises ComponentError naming
  `section.key` for an unknown key, a bad value or a missing required argument."""
  params = list(_parameters(fn).values())[skip:]
  by_name = {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
  takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
  out = {}
  for key, value in kwargs.items():
    if key not in by_name:
      if takes_any:
        out[key] = value
        continue
      close = difflib.get_close_matches(key, list(by_name), n=1)
      hint = f" (did you mean {section}.{close[0]!r}?)" if close else ""
      raise ComponentError(
        f"unknown config field '{section}.{key}'{hint}; {_describe(fn)} takes: "
        f"{', '.join(by_name) or 'no arguments'}"
      )
    out[key] = convert(f"{section}.{key}", value, by_name[key].annotation)
  missing = [n for n, p in by_name.items() if p.default is p.empty and n not in out]
  if missing:
    raise ComponentError(
      f"config field(s) {', '.join(f'{section}.{m}' for m in missing)} are required by "
      f"{_describe(fn)}"
    )
  return out


def _describe(fn) -> str:
  return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def convert(field: str, value: Any, hint: Any) -> Any:
  """`value` as the annotated type `hint` (str values from the command line are parsed);
  unannotated parameters take the value as it is."""
  if hint is inspect.Parameter.empty or hint is Any:
    return value
  args = typing.get_args(hint)
  optional = type(None) in args
  if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
    if optional or hint is type(None):
      return None
    raise ComponentError(f"config field {field!r} must not be None")
  bases = [a for a in args if a is not type(None)] or [hint]
  base = (typing.get_origin(bases[0]) or bases[0]) if len(bases) == 1 else None
  if base is None or not isinstance(base, type):
    return value  # a union of several types or a typing construct: left to the component
  try:
    if base is bool:
      if isinstance(value, bool):
        return value
      if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
      raise ValueError
    if base is int:
      if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError
      return int(value)
    if base is float:
      if isinstance(value, bool):
        raise ValueError
      return float(value)
    if base is str:
      if not isinstance(value, str):
        raise ValueError
      return value
    if not isinstance(value, base):
      raise ValueError
    return value
  except (TypeError, ValueError):
    raise ComponentError(
      f"config field {field!r} must be {base.__name__}, got {type(value).__name__} {value!r}"
    ) from None


def build(
  section: str, component: Component, registry: Mapping[str, Any], *args, skip: int = 0
) -> Any:
  """Resolves `component.name` and calls it with `*args` and its checked keyword arguments."""
  fn = resolve(f"{section}.name", component.name, registry)
  if not callable(fn):
    if component.kwargs:
      raise ComponentError(f"{section}.name={component.name!r} is not callable: it takes no keys")
    return fn
  return fn(*args, **check_kwargs(section, fn, component.args, skip=skip))
