"""The labeling job's JSON config, strictly checked: unknown keys and wrong types name the field."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from shards.stream import SourceSpec

from .teachers import TeacherSpec

PRECISIONS = ('fp32', 'bf16', 'fp16')


@dataclass(frozen=True)
class JobConfig:
    task: str
    store: str                                   # label store root: local folder or s3://...
    sources: List[SourceSpec]                    # image shards to label: {"name", "url"}
    teachers: List[TeacherSpec]
    topk: int = 10
    batch_size: int = 64
    workers: int = 4
    precision: str = 'bf16'                      # autocast dtype on GPU; CPU runs in fp32
    tasks_file: Optional[str] = None             # user tasks, see labeling/tasks.py
    description: str = ''
    launch: str = ''                             # how to run it (documentation only)

    def __post_init__(self):
        if self.topk < 1:
            raise ValueError(f'topk: must be >= 1, got {self.topk}')
        if self.batch_size < 1 or self.workers < 0:
            raise ValueError('batch_size must be >= 1 and workers >= 0')
        if self.precision not in PRECISIONS:
            raise ValueError(f'precision: {self.precision!r} is not one of {PRECISIONS}')
        if not self.sources or not self.teachers:
            raise ValueError('sources and teachers: give at least one of each')


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ValueError(f'{where}: expected an object, got {type(data).__name__}')
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f'{where}: unknown key(s) {unknown}; known: {sorted(fields)}')
    required = [n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in data]
    if missing:
        raise ValueError(f'{where}: missing key(s) {missing}')
    return data


def load_job_config(path: str) -> JobConfig:
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f'{path}: not valid JSON ({exc})') from None
    _build(JobConfig, doc, path)
    sources = [SourceSpec(**_build(SourceSpec, s, f'{path}: sources[{i}]')) for i, s in enumerate(doc['sources'])]
    teachers = [TeacherSpec(**_build(TeacherSpec, t, f'{path}: teachers[{i}]')) for i, t in enumerate(doc['teachers'])]
    for name, kind in (('topk', int), ('batch_size', int), ('workers', int), ('task', str), ('store', str)):
        if name in doc and not isinstance(doc[name], kind):
            raise ValueError(f'{path}: {name} must be {kind.__name__}, got {doc[name]!r}')
    return JobConfig(**{**doc, 'sources': sources, 'teachers': teachers})
