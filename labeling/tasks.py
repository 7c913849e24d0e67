"""The task registry: name -> classes and a class-map version.

The version is a hash of the ordered class names, so two stores (or a store and a
config) agree on a task only when their class indices mean the same classes.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from shards.common.errors import BadValue, UnknownName
from shards.common.tasks_file import class_names


@dataclass(frozen=True)
class Task:
    name: str
    class_names: Tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_map_version(self) -> str:
        return class_map_version(self.class_names)


def class_map_version(class_names) -> str:
    return hashlib.sha256('\n'.join(class_names).encode()).hexdigest()[:16]


def _imagenet(info_name: str) -> Tuple[str, ...]:
    from timm.data import ImageNetInfo  # synset lists ship with timm: no download

    return tuple(ImageNetInfo(info_name).label_names())


def _places365() -> Tuple[str, ...]:
    # Places365's category file is not shipped with any dependency; classes are identified by
    # index. Users with the official names register the task from a JSON file instead.
    return tuple(f'places365/{i:03d}' for i in range(365))


_BUILTIN = {
    'in1k': lambda: _imagenet('imagenet-1k'),       # 1000
    'in22k': lambda: _imagenet('imagenet-22k'),     # 21841, as the released checkpoints use
    'places365': _places365,
}


class TaskRegistry:
    """Built-in tasks plus user tasks; no module-level mutable state."""

    def __init__(self, extra: Optional[Dict[str, Task]] = None):
        self._extra = dict(extra or {})

    def get(self, name: str) -> Task:
        if name in self._extra:
            return self._extra[name]
        if name in _BUILTIN:
            return Task(name, _BUILTIN[name]())
        raise UnknownName(f'unknown task {name!r}: built in are {sorted(_BUILTIN)}, '
                       f'registered here {sorted(self._extra)}; add it with a tasks JSON file')

    def names(self) -> List[str]:
        return sorted(set(_BUILTIN) | set(self._extra))

    def register(self, task: Task) -> None:
        if task.name in _BUILTIN:
            raise BadValue(f'task {task.name!r} is built in and cannot be redefined')
        self._extra[task.name] = task

    @classmethod
    def from_json(cls, path: Optional[str]) -> 'TaskRegistry':
        """``{"task": ["class0", "class1", ...]}`` or ``{"task": {"num_classes": N}}``."""
        registry = cls()
        if not path:
            return registry
        for name, names in class_names(path).items():
            registry.register(Task(name, names))
        return registry
