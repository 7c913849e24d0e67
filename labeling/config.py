"""The labeling job's JSON config, strictly checked: unknown keys, wrong types and out-of-range
values name the field (``shards/common/config.py``)."""
from __future__ import annotations

from typing import List, Literal, Optional

from pydantic import Field

from shards.common.config import from_doc, section
from shards.common.safe_files import read_json
from shards.stream import SourceSpec

from .teachers import TeacherSpec


@section(frozen=True)
class JobConfig:
    task: str
    """the task the teachers label (a built-in task or one of tasks_file)"""
    store: str
    """label store root: local folder or s3://..."""
    sources: List[SourceSpec] = Field(min_length=1)
    """image shards to label: {"name", "url"}"""
    teachers: List[TeacherSpec] = Field(min_length=1)
    """an ensemble: their probabilities are averaged"""
    topk: int = Field(10, ge=1)
    """classes kept per pseudo-label"""
    batch_size: int = Field(64, ge=1)
    """images per teacher forward"""
    workers: int = Field(4, ge=0)
    """DataLoader workers (decoding and preprocessing)"""
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
    """what the job is (documentation only)"""
    launch: str = ''
    """how to run it (documentation only)"""


def load_job_config(path: str) -> JobConfig:
    return from_doc(JobConfig, read_json(path, 'labeling job config'), path)
