"""The run config reference, generated from the config sections (their types, limits, defaults
and the docstring under each field, as pydantic reads them), so the README's table cannot drift
from the code.

    python -m pretrain.config_reference        # the markdown table the README holds
"""
from __future__ import annotations

import re
import typing
from typing import List

import annotated_types
from pydantic.dataclasses import is_pydantic_dataclass
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from shards.common.config import field_default, field_docs
from shards.storage import RetryPolicy
from shards.stream import SourceSpec, StreamConfig
from shards.transforms import TransformConfig

from . import config as C

SECTIONS = [('', C.RunConfig), ('model', C.ModelConfig), ('data', C.DataConfig), ('data.sources[]', SourceSpec),
            ('data.transform', TransformConfig), ('data.stream', StreamConfig), ('data.stream.retry', RetryPolicy),
            ('tasks.<name>', C.TaskConfig), ('optim', C.OptimConfig), ('schedule', C.ScheduleConfig),
            ('train', C.TrainConfig), ('init', C.InitConfig), ('eval', C.EvalConfig),
            ('checkpoint', C.CheckpointConfig), ('log', C.LogConfig), ('log.wandb', C.WandbConfig),
            ('log.mlflow', C.MlflowConfig)]
LIMITS = {annotated_types.Ge: ('>=', 'ge'), annotated_types.Gt: ('>', 'gt'), annotated_types.Le: ('<=', 'le'),
          annotated_types.Lt: ('<', 'lt')}


def _limits(metadata) -> str:
    """'>= 0, < 1' from a field's constraints (``Field(ge=0, lt=1)`` or ``Annotated`` ones)."""
    out = []
    for m in metadata:
        if isinstance(m, FieldInfo):
            out.append(_limits(m.metadata))
        elif type(m) in LIMITS:
            symbol, attr = LIMITS[type(m)]
            out.append(f'{symbol} {getattr(m, attr)}')
    return ', '.join(x for x in out if x)


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        limits = _limits(tp.__metadata__)
        return _type_name(args[0]) + (f' ({limits})' if limits else '')
    if origin is typing.Literal:
        return 'one of ' + ', '.join(str(a) for a in args)
    if origin is typing.Union and type(None) in args:
        return f'Optional[{_type_name(next(a for a in args if a is not type(None)))}]'
    if origin is not None:
        return f'{origin.__name__.capitalize()}[{", ".join(_type_name(a) for a in args)}]'
    return re.sub(r'typing\.|<class \'(\w+)\'>', r'\1', getattr(tp, '__name__', str(tp)))


def _default(cls, name: str) -> str:
    value = field_default(cls, name)
    if value is PydanticUndefined:
        return 'required'
    return 'its fields below' if is_pydantic_dataclass(type(value)) else f'`{value!r}`'


def reference() -> str:
    rows: List[str] = ['| field | type | default | meaning |', '|---|---|---|---|']
    for section, cls in SECTIONS:
        docs = field_docs(cls)
        for name, f in cls.__pydantic_fields__.items():
            kind = _type_name(f.annotation)
            limits = _limits(f.metadata)
            kind += f' ({limits})' if limits else ''
            rows.append(f'| `{f"{section}." if section else ""}{name}` | {kind} | {_default(cls, name)} | '
                        f'{docs.get(name, "").replace("|", "/")} |')
    return '\n'.join(rows)


if __name__ == '__main__':
    print(reference())
