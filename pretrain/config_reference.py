"""The run config reference, generated from the typed sections of ``pretrain/config.py`` (their
defaults and the comment beside each field), so the README's table cannot drift from the code.

    python -m pretrain.config_reference        # the markdown table the README holds
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Dict, List

from . import config as C

SECTIONS = [('model', C.ModelConfig), ('data', C.DataConfig), ('data.sources[]', C.SourceConfig),
            ('tasks.<name>', C.TaskConfig), ('optim', C.OptimConfig), ('schedule', C.ScheduleConfig),
            ('train', C.TrainConfig), ('init', C.InitConfig), ('eval', C.EvalConfig),
            ('checkpoint', C.CheckpointConfig), ('log', C.LogConfig)]
FIELD_LINE = re.compile(r'^\s+(\w+):[^#]*?(?:#\s*(.*))?$')


def field_comments(cls) -> Dict[str, str]:
    """``name: type = default  # comment`` lines of a dataclass's source."""
    out = {}
    for line in inspect.getsource(cls).splitlines():
        m = FIELD_LINE.match(line)
        if m and m.group(2):
            out[m.group(1)] = m.group(2).strip()
    return out


def _type_name(tp) -> str:
    return re.sub(r'typing\.|pretrain\.config\.|<class \'(\w+)\'>', r'\1', str(tp)).replace('NoneType', 'None')


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f'`{f.default!r}`'
    if f.default_factory is not dataclasses.MISSING:
        return f'`{f.default_factory()!r}`'
    return 'required'


def reference() -> str:
    rows: List[str] = ['| field | type | default | meaning |', '|---|---|---|---|']
    for section, cls in SECTIONS:
        hints, comments = typing.get_type_hints(cls), field_comments(cls)
        for f in dataclasses.fields(cls):
            rows.append(f'| `{section}.{f.name}` | {_type_name(hints[f.name])} | {_default(f)} | '
                        f'{comments.get(f.name, "").replace("|", "/")} |')
    rows.append('| `deepspeed` | dict | `{}` | passed to deepspeed.initialize, with batch sizes, precision '
                '(torch_autocast) and bucket sizes filled in (pretrain/ds_config.py) |')
    return '\n'.join(rows)


if __name__ == '__main__':
    print(reference())
