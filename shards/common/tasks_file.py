"""The tasks file's format, read in one place (``labeling.tasks`` builds its registry from it; ``adopt``
checks human labels against it): ``{"task": ["class0", ...]}`` or ``{"task": {"num_classes": N}}``."""
from __future__ import annotations

from typing import Dict, Tuple

from .errors import BadValue
from .safe_files import check_name, read_json


def class_names(path: str) -> Dict[str, Tuple[str, ...]]:
    """{task: its class names in index order}; numbered names for a task given only a class count."""
    doc = read_json(path, 'tasks file')
    out = {}
    for name, spec in doc.items():
        check_name(name, f'{path}: task')
        if isinstance(spec, list):
            names = tuple(str(x) for x in spec)
        elif isinstance(spec, dict) and isinstance(spec.get('num_classes'), int):
            names = tuple(f'{name}/{i}' for i in range(spec['num_classes']))
        else:
            raise BadValue(f'{path}: task {name!r} needs a list of class names or {{"num_classes": N}}')
        if not names or len(set(names)) != len(names):
            raise BadValue(f'{path}: task {name!r} has no classes or repeated class names')
        out[name] = names
    return out
