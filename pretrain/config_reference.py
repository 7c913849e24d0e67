"""The run config reference, generated from the typed sections of ``pretrain/config.py`` (their
defaults and the docstring under each field), so the README's table cannot drift from the code.

    python -m pretrain.config_reference        # the markdown table the README holds
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
import typing
from typing import Dict, List

from . import config as C

SECTIONS = [('model', C.ModelConfig), ('data', C.DataConfig), ('data.sources[]', C.SourceConfig),
            ('tasks.<name>', C.TaskConfig), ('optim', C.OptimConfig), ('schedule', C.ScheduleConfig),
            ('train', C.TrainConfig), ('init', C.InitConfig), ('eval', C.EvalConfig),
            ('checkpoint', C.CheckpointConfig), ('log', C.LogConfig), ('log.wandb', C.WandbConfig),
            ('log.mlflow', C.MlflowConfig)]


def field_docs(cls) -> Dict[str, str]:
    """The docstring under each field of a dataclass (``name: type = default`` then ``\"\"\"doc\"\"\"``)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    out = {}
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) and \
                isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
            out[node.target.id] = following.value.value.strip()
    return out


def _type_name(tp) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return 'one of ' + ', '.join(str(a) for a in typing.get_args(tp))
    return re.sub(r'typing\.|pretrain\.\w+\.|<class \'(\w+)\'>', r'\1', str(tp)).replace('NoneType', 'None')


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f'`{f.default!r}`'
    if f.default_factory is not dataclasses.MISSING:
        return f'`{f.default_factory()!r}`'
    return 'required'


def reference() -> str:
    rows: List[str] = ['| field | type | default | meaning |', '|---|---|---|---|']
    for section, cls in SECTIONS:
        hints, comments = typing.get_type_hints(cls), field_docs(cls)
        for f in dataclasses.fields(cls):
            rows.append(f'| `{section}.{f.name}` | {_type_name(hints[f.name])} | {_default(f)} | '
                        f'{comments.get(f.name, "").replace("|", "/")} |')
    rows.append('| `deepspeed` | dict | `{}` | passed to deepspeed.initialize, with batch sizes, precision '
                '(torch_autocast) and bucket sizes filled in (pretrain/ds_config.py) |')
    return '\n'.join(rows)


if __name__ == '__main__':
    print(reference())
