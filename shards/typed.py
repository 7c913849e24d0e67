"""Dataclasses built from JSON, strictly: unknown keys, missing keys and wrong types are errors
naming the field (``optim.lr: expected float, got str 'fast'``). Shared by every config loader."""
from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, Dict, List, Tuple

from .common.errors import BadValue


class ConfigError(BadValue):
    pass


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Literal:  # a choice: the field's type lists what it may be
        if not any(value == a and type(value) is type(a) for a in args):
            raise ConfigError(f'{where}: {value!r} is not one of {args}')
        return value
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError(f'{where}: expected a list, got {value!r}')
        return [_convert(v, args[0], f'{where}[{i}]') for i, v in enumerate(value)]
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f'{where}: expected {len(args)} values, got {value!r}')
        return tuple(_convert(v, a, f'{where}[{i}]') for i, (v, a) in enumerate(zip(value, args)))
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f'{where}: expected an object, got {value!r}')
        return {k: _convert(v, args[1], f'{where}.{k}') for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f'{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}')
    return value


def build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f'{where}: expected an object, got {type(data).__name__}')
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        close = {k: difflib.get_close_matches(k, list(fields), n=1) for k in unknown}
        hint = ''.join(f'; did you mean {c[0]!r} for {k!r}?' for k, c in close.items() if c)
        raise ConfigError(f'{where or "config"}: unknown key(s) {unknown}{hint} (known: {sorted(fields)})')
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f'{where}.{name}' if where else name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f'{where}.{name}: required' if where else f'{name}: required')
    return cls(**kwargs)
