"""Configs as pydantic v2 dataclasses: each setting declared once, beside its owner, with its type,
its limits (``Field(ge=...)``) and the docstring under it; checked one way, whether a library user
constructs the config in Python or a run reads it from a JSON document.

Strict: no coercion (``"3"`` is not an int, ``1`` is not ``true``), unknown keys are errors with a
"did you mean", and every error is one line naming the field (``optim.lr=-1: must be > 0``).
"""
from __future__ import annotations

import difflib
import functools
import json
import typing
from typing import Any, Dict, List, Optional, Sequence

import pydantic
from pydantic import ConfigDict, TypeAdapter, ValidationError

from .errors import BadValue

STRICT = ConfigDict(extra='forbid', strict=True, use_attribute_docstrings=True)


class ConfigError(BadValue):
    """A config document or value that cannot be used; its message names the field."""


def section(cls=None, *, frozen: bool = False):
    """``@section`` / ``@section(frozen=True)``: a strict, validated config dataclass."""
    def wrap(c):
        return pydantic.dataclasses.dataclass(c, config=STRICT, frozen=frozen)
    return wrap if cls is None else wrap(cls)


@functools.lru_cache(maxsize=None)
def _adapter(cls) -> TypeAdapter:
    return TypeAdapter(cls)


def from_doc(cls, doc: Any, where: str = '', at: str = '', moved: Optional[Dict[str, str]] = None):
    """``cls`` from a JSON document (a dict as ``json.load`` gives it): arrays become tuples where
    the field is one, objects become sections. An error names ``where`` (e.g. the file) and the
    field's path below ``at`` (the document's place in a larger config, e.g. ``data.transform``);
    an unknown key that ``moved`` maps (an old path -> its new one) says where it went."""
    try:
        return _adapter(cls).validate_json(json.dumps(doc))
    except ValidationError as exc:
        raise ConfigError(describe(exc, cls, where, at, moved)) from None


def checked(cls, where: str = '', **values):
    """``cls(**values)`` with a failure reported as a ``ConfigError`` (for values a user typed:
    ``where`` names the option or file they came from)."""
    try:
        return cls(**values)
    except ValidationError as exc:
        raise ConfigError(describe(exc, cls, where)) from None


def field_docs(cls) -> dict:
    """field -> the docstring under it."""
    return {name: (f.description or '') for name, f in cls.__pydantic_fields__.items()}


def field_default(cls, name: str) -> Any:
    """The default of a field (``pydantic_core.PydanticUndefined`` when it is required)."""
    return cls.__pydantic_fields__[name].get_default(call_default_factory=True)


# --- one line per error ------------------------------------------------------------------
def describe(exc: ValidationError, cls, where: str = '', at: str = '', moved: Optional[Dict[str, str]] = None) -> str:
    lines, unknown = [], {}
    for err in exc.errors():
        loc = (at,) * bool(at) + tuple(err['loc'])
        if err['type'] in ('unexpected_keyword_argument', 'extra_forbidden'):
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
        else:
            lines.append(_one(err, _path(loc)))
    for parent, keys in unknown.items():
        lines.append(_unknown(parent, sorted(keys), _fields_at(cls, parent[bool(at):]), moved or {}))
    text = '; '.join(lines)
    return f'{where}: {text}' if where else text


def _path(loc: Sequence) -> str:
    out = ''
    for part in loc:
        out += f'[{part}]' if isinstance(part, int) else (f'.{part}' if out else str(part))
    return out


def _one(err: dict, path: str) -> str:
    if err['type'] == 'missing' and path.endswith(']'):   # a fixed-length array one short
        return f'{path.rsplit("[", 1)[0]}: too few values (expected one at {path.rsplit("[", 1)[1][:-1]})'
    if err['type'] == 'missing':
        return f'{path}: required'
    msg = err['msg'].removeprefix('Value error, ')
    if err['type'] in ('value_error', 'assertion_error'):
        return f'{path}: {msg}' if path else msg
    shown = repr(err.get('input'))
    shown = shown if len(shown) <= 60 else shown[:57] + '...'
    return f'{path or "config"}={shown}: {msg[0].lower()}{msg[1:]}'


def _unknown(parent: tuple, keys: List[str], known: List[str], moved: Dict[str, str]) -> str:
    hints = []
    for key in keys:
        path = _path(parent + (key,))
        close = difflib.get_close_matches(key, known, n=1)
        if path in moved:
            hints.append(f'; {path} is now {moved[path]}')
        elif close:
            hints.append(f'; did you mean {close[0]!r} for {key!r}?')
    return f'{_path(parent) or "config"}: unknown key(s) {keys}{"".join(hints)} (known: {sorted(known)})'


def _fields_at(cls, loc: Sequence) -> List[str]:
    """The field names of the section at ``loc`` under ``cls`` (for "did you mean")."""
    tp = cls
    for part in loc:
        tp = _optional_inner(tp)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if pydantic.dataclasses.is_pydantic_dataclass(tp) and part in tp.__pydantic_fields__:
            tp = tp.__pydantic_fields__[part].annotation
        elif origin in (list, tuple) and args:
            tp = args[0]
        elif origin is dict and args:
            tp = args[1]
        else:
            return []
    tp = _optional_inner(tp)
    return list(tp.__pydantic_fields__) if pydantic.dataclasses.is_pydantic_dataclass(tp) else []


def _optional_inner(tp):
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        return next(a for a in args if a is not type(None))
    return tp
