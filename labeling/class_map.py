"""Human labels map to a task by class *name*, not by index.

A shard's human label is an index into the class list its build recorded (``build.json``'s
``classes``: an ImageFolder's sorted folder names); the task's indices follow its tasks file. When
both name the classes, a label is carried over by name — the same classes in another order are
remapped, different classes are an error naming both lists; when the task names no classes (a
``{"num_classes": N}`` entry), the counts must agree.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

from shards.common.errors import BadValue

from .tasks import Task


def names_classes(task: Task) -> bool:
    """Whether the task's classes have names (a tasks file with ``{"num_classes": N}`` gives none)."""
    return any(n != f'{task.name}/{i}' for i, n in enumerate(task.class_names))


def human_index_map(task: Task, built: Optional[Sequence[str]], where: str) -> Optional[List[int]]:
    """task index of each built index, or None when they are the same (or the build named no classes)."""
    if not built:
        return None
    built = [str(n) for n in built]
    if not names_classes(task):
        if len(built) != task.num_classes:
            raise BadValue(f'{where}: its build has {len(built)} classes for task {task.name!r} ({built}), the '
                             f'task has {task.num_classes}; fix num_classes or the tasks file')
        return None
    ours = list(task.class_names)
    if built == ours:
        return None
    if sorted(built) != sorted(ours):
        raise BadValue(f'{where}: its build names the classes of task {task.name!r} {built}, the tasks file '
                         f'{ours}; they must be the same classes (in any order): fix the tasks file')
    return [ours.index(n) for n in built]
