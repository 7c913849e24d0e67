"""The labeling job's JSON config, strictly checked: unknown keys and wrong types name the field."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Literal, Optional

from shards.common.errors import BadValue
from shards.common.safe_files import read_json
from shards.stream import SourceSpec
from shards.typed import build

from .teachers import TeacherSpec


@dataclass(frozen=True)
class JobConfig:
    task: str
    """the task the teachers label (a built-in task or one of tasks_file)"""
    store: str
    """label store root: local folder or s3://..."""
    sources: List[SourceSpec]
    """image shards to label: {"name", "url"}"""
    teachers: List[TeacherSpec]
    """an ensemble: their probabilities are averaged"""
    topk: int = 10
    """classes kept per pseudo-label"""
    batch_size: int = 64
    workers: int = 4
    precision: Literal['fp32', 'bf16', 'fp16'] = 'bf16'
    """autocast dtype of the teacher forward (any device)"""
    decode: Literal['workers', 'device'] = 'workers'
    """workers: JPEGs decoded by Pillow in DataLoader workers at the reduced DCT scale the teacher
    needs; device: workers only read the tar, JPEGs are decoded in batches by torchvision on the
    labeling device (nvJPEG on a GPU), for when CPU workers cannot keep up"""
    compile: Optional[str] = None
    """a torch.compile backend for the teachers, e.g. inductor"""
    tasks_file: Optional[str] = None
    """user tasks, see labeling/tasks.py"""
    description: str = ''
    launch: str = ''
    """how to run it (documentation only)"""

    def __post_init__(self):
        if self.topk < 1:
            raise BadValue(f'topk: must be >= 1, got {self.topk}')
        if self.batch_size < 1 or self.workers < 0:
            raise BadValue('batch_size must be >= 1 and workers >= 0')
        if not self.sources or not self.teachers:
            raise BadValue('sources and teachers: give at least one of each')


def load_job_config(path: str) -> JobConfig:
    return build(JobConfig, read_json(path, 'labeling job config'), path)
