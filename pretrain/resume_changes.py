"""What a resume may change: the run's config now against the one its checkpoint was written with.

A resume continues a run, so what defines the run (model, data, tasks, batch, precision, the
DeepSpeed setup) must be the same, or the checkpoint would be read into another run; what only
steers it (its length and schedule, the learning rate and weight decay, logging, evaluation and
checkpoint cadence) may change and takes effect, each change logged. Anything not listed as
changeable is refused: a new field is treated as defining the run until someone decides otherwise.
"""
from __future__ import annotations

import json
import logging
from typing import Dict, List, Tuple

from shards.common.errors import BadValue

log = logging.getLogger('pretrain')

# The flattened config keys (or sections) a resume may change.
MAY_CHANGE = ('schedule', 'log', 'eval', 'checkpoint', 'optim.lr', 'optim.weight_decay', 'train.max_nonfinite_steps',
              'data.labels_refresh', 'data.val_sources', 'data.transform.crop_pct', 'data.stream.retry',
              'data.stream.max_corrupt_fraction', 'data.stream.corrupt_window', 'model.grad_checkpointing', 'train.compile',
              'description', 'launch',
              'init')   # a resume takes the checkpoint's weights, not init's
# checkpoint.*: its cadence, keep, lease and signals steer the run; checkpoint.dir is the run itself
# (the same folder, however it is spelled: a moved run folder resumes).


def flatten(doc: dict, prefix: str = '') -> Dict[str, object]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay whole values."""
    out = {}
    for key, value in doc.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f'{prefix}{key}.'))
        else:
            out[f'{prefix}{key}'] = value
    return out


def changeable(key: str) -> bool:
    return any(key == p or key.startswith(p + '.') for p in MAY_CHANGE)


class _Absent:
    def __repr__(self):
        return '(absent)'


ABSENT = _Absent()


def differences(saved: dict, now: dict) -> List[Tuple[str, object, object]]:
    """(key, value then, value now) for every flattened key that differs (both as JSON holds them:
    a tuple now is the list the checkpoint's JSON kept)."""
    a, b = (flatten(json.loads(json.dumps(doc))) for doc in (saved, now))
    return [(k, a.get(k, ABSENT), b.get(k, ABSENT)) for k in sorted(set(a) | set(b))
            if a.get(k, ABSENT) != b.get(k, ABSENT)]


def check_resume_changes(saved: dict, now: dict, tag: str) -> List[str]:
    """Refuse changes to what defines the run, naming each; return one line per allowed change. A
    setting the checkpoint does not know (added by a later version) or no longer used is not a change
    of the run: it is reported, never refused, so an upgrade does not strand a run in progress."""
    diff = differences(saved, now)
    refused = [(k, then, new) for k, then, new in diff
               if not changeable(k) and then is not ABSENT and new is not ABSENT]
    if refused:
        shown = '; '.join(f'{k}: {_show(then)} -> {_show(new)}' for k, then, new in refused[:6])
        raise BadValue(f'resuming {tag} with settings that define the run changed ({len(refused)}): {shown}. Resume '
                         'with the values it was written with, or start a new run (another checkpoint.dir) from its '
                         'weights with init.checkpoint: <this run folder>')
    return [f'{k}: {_show(then)} -> {_show(new)}' for k, then, new in diff]


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + '...'
