"""Typed overrides of an agent's frozen `Config` dataclass: `--config.<field>=<value>` on the command
line, and configs built from layers (defaults, then e.g. budget, dataset preset, command line).

Every value is converted to the field's declared type and every name is checked against the
dataclass, so a typo or a wrong type is a one-line `O2OError`, never a silently ignored setting:

  raw, argv = parse_overrides(["prog", "--config.critic_lr=1e-4", "--seeds=2"])
  config = layered(o2td3.Config, {"hidden_dims": (64, 64)}, raw)     # a later layer wins
  json.dumps(to_dict(config))                                        # config.json
"""
from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from o2o_jax.errors import O2OError

PREFIX = "--config."
_TRUE, _FALSE = ("true", "1"), ("false", "0")


def parse_overrides(argv: Sequence[str]) -> Tuple[Dict[str, str], List[str]]:
  """({field: raw string}, the other arguments) of `argv`: `--config.<field>=<value>` are taken out
  (a later one wins); everything after a bare `--` is left alone, as absl does."""
  raw, rest = {}, []
  for i, arg in enumerate(argv):
    if arg == "--":
      rest.extend(argv[i:])
      break
    if not arg.startswith(PREFIX):
      rest.append(arg)
      continue
    name, eq, value = arg[len(PREFIX):].partition("=")
    if not eq or not name:
      raise O2OError(f"{arg}: write {PREFIX}<field>=<value>, with '=' (e.g. {PREFIX}critic_lr=1e-4)")
    raw[name] = value
  return raw, rest


def field_types(config_cls) -> Dict[str, Any]:
  """{field: resolved annotation} of the dataclass's constructor fields (string annotations, as
  under `from __future__ import annotations`, resolved in each defining class's module)."""
  hints = typing.get_type_hints(config_cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(config_cls) if f.init}


def apply_overrides(config, raw: Mapping[str, Any], source: str = "--config"):
  """`dataclasses.replace(config, ...)` with each value of `raw` converted to its field's type.
  Values may be command-line strings or already-typed Python values (config layers, config.json).
  `source` names where the values came from in the error messages (`<source>.<field>`)."""
  cls = type(config)
  types_ = field_types(cls)
  unknown = sorted(set(raw) - set(types_))
  if unknown:
    raise O2OError(f"{source}.{unknown[0]}: {_describe(cls)} has no field "
                   f"{', '.join(map(repr, unknown))}; valid fields: {', '.join(sorted(types_))}")
  values = {name: _convert_field(cls, name, value, types_[name], source) for name, value in raw.items()}
  return dataclasses.replace(config, **values)


def layered(config_cls, *layers: Mapping[str, Any], names: Sequence[str] = ()):
  """`config_cls()` with the layers applied in order, so a later layer wins. `names` label the
  layers in error messages (default layer1, layer2, ...)."""
  config = config_cls()
  for i, layer in enumerate(layers):
    config = apply_overrides(config, layer, names[i] if i < len(names) else f"layer{i + 1}")
  return config


def to_dict(config) -> Dict[str, Any]:
  """The config as JSON-serialisable values (tuples as lists). A nested dataclass (SAMG's
  `base_config`) becomes a dict, which `layered` does not turn back into a config."""
  return _jsonable(dataclasses.asdict(config))


def _jsonable(value):
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value


def _describe(config_cls) -> str:
  return f"{config_cls.__module__}.{config_cls.__qualname__}"


def _convert_field(config_cls, name: str, value, annotation, source: str):
  try:
    return convert(value, annotation)
  except (TypeError, ValueError) as e:
    shown = value if isinstance(value, str) else repr(value)
    raise O2OError(f"{source}.{name}={shown}: field {name!r} of {_describe(config_cls)} is "
                   f"{type_name(annotation)} ({e})") from None


# ----------------------------------------------------------------------------- conversion

def _optional_part(annotation):
  """X of Optional[X] (typing.Optional or `X | None`), else None."""
  if typing.get_origin(annotation) in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(args) == 1 and len(typing.get_args(annotation)) == 2:
      return args[0]
  return None


def _sequence_parts(annotation):
  """(container, element types, homogeneous) of a tuple/list/Sequence annotation, else None."""
  origin = typing.get_origin(annotation) or annotation
  if origin not in (tuple, list, collections.abc.Sequence):
    return None
  args = typing.get_args(annotation)
  container = list if origin is list else tuple     # tuples keep a frozen Config hashable
  if origin is tuple and args and args[-1] is not Ellipsis:
    return container, args, False
  return container, (args[0] if args else str,), True


def type_name(annotation) -> str:
  """A reader's name for an annotation: 'int', 'float or none', 'comma-separated ints'."""
  inner = _optional_part(annotation)
  if inner is not None:
    return f"{type_name(inner)} or none"
  seq = _sequence_parts(annotation)
  if seq is not None:
    _, elements, homogeneous = seq
    if homogeneous:
      return f"comma-separated {type_name(elements[0])}s"
    return f"{len(elements)} comma-separated values ({', '.join(type_name(e) for e in elements)})"
  return getattr(annotation, "__name__", str(annotation))


def convert(value, annotation):
  """`value` (a command-line string or a Python value) as `annotation`; ValueError/TypeError if it
  does not fit."""
  inner = _optional_part(annotation)
  if inner is not None:
    if value is None or (isinstance(value, str) and value.lower() == "none"):
      return None
    return convert(value, inner)
  seq = _sequence_parts(annotation)
  if seq is not None:
    return _convert_sequence(value, *seq)
  if annotation in _SCALARS:
    return _SCALARS[annotation](value)
  if annotation is Any and not isinstance(value, str):
    return value        # (a layer's Python object, e.g. SAMG's base_config; not settable from text)
  raise TypeError("not settable from the command line")


def _convert_sequence(value, container, elements, homogeneous):
  if isinstance(value, str):
    value = [] if not value.strip() else [v.strip() for v in value.split(",")]
  elif not isinstance(value, (list, tuple)):
    raise TypeError(f"expected a sequence, got {type(value).__name__}")
  if homogeneous:
    elements = elements * len(value)
  elif len(value) != len(elements):
    raise ValueError(f"expected {len(elements)} values, got {len(value)}")
  return container(convert(v, t) for v, t in zip(value, elements))


def _to_bool(value) -> bool:
  if isinstance(value, bool):
    return value
  if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
    return value.strip().lower() in _TRUE
  raise ValueError("expected true, false, 1 or 0")


def _to_int(value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, str)):
    raise TypeError(f"expected an integer, got {type(value).__name__}")
  if isinstance(value, int):
    return value
  try:
    return int(value)
  except ValueError:
    number = _to_float(value)      # '1e5' is an integer too; '2.5' is not
    if not number.is_integer():
      raise ValueError("not an integer") from None
    return int(number)


def _to_float(value) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, str)):
    raise TypeError(f"expected a number, got {type(value).__name__}")
  try:
    return float(value)
  except ValueError:
    raise ValueError("not a number") from None


def _to_str(value) -> str:
  if not isinstance(value, str):
    raise TypeError(f"expected a string, got {type(value).__name__}")
  return value


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}
