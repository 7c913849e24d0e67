"""``replk-shards adopt``: WebDataset tar shards another tool wrote (img2dataset, timm's wds layout,
``webdataset.ShardWriter``) become a source of this project without a byte of them rewritten.

One pass over each tar (it is streamed whole: its sha256 needs every byte) counts its samples as
webdataset groups them and reads the human labels the user maps to tasks; the result is the
project's index for the source beside the tars (``_index/{source}/``), as a build writes it:

- ``build.json``: ``adopted = {files, labels}`` — the tars in order (shard ``i`` of the source is
  ``files[i]``) and where each task's human label is (``cls``: the ``.cls`` member; ``json:FIELD``:
  a field of the ``.json`` member, dotted for nesting) — plus the shard count and job count;
- ``shards.{job}-of-{jobs}.parquet``: per shard its project name ``{source}-{i:06d}.tar``, samples,
  bytes, sha256 and human labels per task.

Readers then address shard ``i`` as ``files[i]`` with the project's name attached
(``naming.adopted_url``): a sample's key is ``{source}/{i:06d}/{position:06d}`` (what the label
store keys on), the tar's own key is kept as its ``id``. Images are checked when read, as in any
source: one that does not decode is a corrupt sample, counted and skipped.

Jobs split the tars (``--job-index/--num-jobs``: tar ``i`` to job ``i % num_jobs``); a job saves
what it counted every ``index_save_s`` seconds and when it stops, so a rerun after a kill counts
only the rest. The tars can be named by a brace pattern, and the index can go elsewhere
(``index_to``: a folder that is not yours to write); ``build.json`` then records the tars' folder
(``adopted.base``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from braceexpand import braceexpand
from tqdm import tqdm

from . import storage
from .common.errors import BadValue
from .common.safe_files import check_name
from .index import ShardEntry, job_tag, owner_job, read_part, record_plan, save_job_part, source_folder, usable_folder
from .naming import LABEL_FIELDS, shard_name
from .reader import foreign_json, human_label, label_value, tar_samples

log = logging.getLogger(__name__)
BUILT_SHARD = re.compile(r'[^-/]+-\d{6}\.tar')   # naming.shard_name's shape: another source's built shards


class AdoptError(BadValue):
    """What makes a set of tars unusable as a source, named with the fix."""


@dataclass(frozen=True)
class AdoptOptions:
    prefix: str                                   # the folder or s3:// prefix holding the tars, or a brace
                                                  # pattern naming them (s3://b/laion/{00000..00999}.tar)
    source: str                                   # the source name the project will know them by
    labels: Dict[str, str] = field(default_factory=dict)          # task -> 'cls' | 'json:FIELD' | 'name:json:FIELD'
    num_classes: Dict[str, int] = field(default_factory=dict)     # task -> class count, to check indices
    class_names: Dict[str, Tuple[str, ...]] = field(default_factory=dict)  # task -> names, for name: fields
    job_index: int = 0
    num_jobs: int = 1
    workers: int = 4                              # tars read at once (network-bound on S3)
    index_save_s: float = 30.0                    # seconds between saves of this job's index part
    retry: storage.RetryPolicy = field(default_factory=storage.RetryPolicy)
    progress: bool = False                        # a progress bar (the CLI's default)
    index_to: Optional[str] = None                # where the index goes (default: beside the tars), e.g. when
                                                  # their folder is not yours to write

    @property
    def tar_folder(self) -> str:
        folder = (self.prefix.rsplit('/', 1)[0] if '{' in self.prefix else self.prefix).rstrip('/')
        # recorded for readers when the index is elsewhere: from any working folder, the same folder
        return os.path.abspath(folder) if self.index_to and storage.is_local(folder) else folder

    @property
    def index_prefix(self) -> str:
        """The prefix training and labeling name for this source: ``_index/{source}/`` is there."""
        return (self.index_to or self.tar_folder).rstrip('/')

    def __post_init__(self):
        check_name(self.source, 'source name')
        if '-' in self.source:
            raise AdoptError(f'source name {self.source!r}: no "-" (shard names are {{source}}-{{number}}.tar)')
        for task, where in self.labels.items():
            check_name(task, 'task name')
            if not LABEL_FIELDS.fullmatch(where):
                raise AdoptError(f'label of task {task!r}: {where!r} is not "cls" (the .cls member), '
                                 '"json:FIELD" (a field of the .json member) or "name:json:FIELD" (a class name there)')
            if where.startswith('name:') and task not in self.class_names:
                raise AdoptError(f'label of task {task!r} is a class name ({where}): give --tasks-file with the '
                                 f'names of {task!r}, in index order')
        if not 0 <= self.job_index < self.num_jobs:
            raise AdoptError(f'--job-index {self.job_index} is not in 0..{self.num_jobs - 1}')
        if self.index_to:
            self._check_index_elsewhere()

    def _check_index_elsewhere(self) -> None:
        """Readers find the tars through the folder build.json records, and the index through the
        shard's URL: both must pass through as they are."""
        if not usable_folder(self.tar_folder):
            raise AdoptError(f'{self.tar_folder}: with --index-to, the tars\' folder must be an object-store URL or a '
                             'path without "#", ";", "=" or spaces (build.json records it for readers)')
        if re.search(r'[#;=\s]', self.index_prefix):
            raise AdoptError(f'--index-to {self.index_to}: no "#", ";", "=" or spaces (shard URLs carry it)')
        if storage.is_local(self.tar_folder) and not storage.is_local(self.index_prefix):
            raise AdoptError(f'--index-to {self.index_to}: an index on an object store cannot send readers to this '
                             f'machine\'s folder {self.tar_folder}; put the tars on the store too, or the index here')


def foreign_tars(options: AdoptOptions, listing: List[str]) -> List[str]:
    """The tars to adopt: those the brace pattern names (each must be in the folder's ``listing``),
    or every ``.tar`` in the ``listing`` but the shards this project built there; sorted."""
    folder = options.tar_folder
    if '{' in options.prefix:
        names = named_tars(options.prefix)
        absent = [n for n in names if n not in set(listing)]
        if absent:
            raise storage.missing_bucket(folder) or AdoptError(
                f'{len(absent)} of the {len(names)} tars {options.prefix} names are not in {folder} '
                f'(first: {absent[0]}); fix the pattern')
    else:
        built = set(storage.list_names(storage.join(folder, '_index'), options.retry)) - {options.source}
        names = sorted(n for n in listing if n.endswith('.tar')
                       and not (BUILT_SHARD.fullmatch(n) and n.rsplit('-', 1)[0] in built))
    if not names:
        missing = storage.missing_bucket(folder)
        raise missing or AdoptError(f'no .tar files in {folder} to adopt')
    for name in names:
        if '#' in name:
            raise AdoptError(f'{storage.join(folder, name)}: "#" in a shard name is not supported; rename it')
    return names


def named_tars(pattern: str) -> List[str]:
    """The tar names a brace pattern expands to (webdataset's and img2dataset's notation), all in one folder."""
    urls = list(braceexpand(pattern))
    if len({u.rsplit('/', 1)[0] for u in urls}) != 1 or '{' in pattern.rsplit('/', 1)[0]:
        raise AdoptError(f'{pattern}: braces only in the file name (the tars of one source live in one folder)')
    names = sorted({u.rsplit('/', 1)[1] for u in urls})
    if not all(n.endswith('.tar') for n in names):
        raise AdoptError(f'{pattern}: names {next(n for n in names if not n.endswith(".tar"))!r}, not a .tar')
    return names


SPLIT_INFO_NAMES = ('_info.json', 'info.json')   # timm's wds split info, in the order timm reads them


def declared_sizes(options: AdoptOptions, files: List[str], present: Iterable[str]) -> Dict[str, Tuple[int, str]]:
    """{tar: (samples, the file that says so)} from the size files other tools write beside their
    tars: ``sizes.json`` ({tar name: samples}, OpenCLIP / webdataset), timm's split info
    (``_info.json``: ``splits.{split}.filenames`` and ``shard_lengths``) and img2dataset's
    ``{stem}_stats.json`` ("successes": the samples its tar holds). The pass counts anyway; these
    are checked against the count, so a truncated download or a stale file is named, not trusted."""
    declared: Dict[str, Tuple[int, str]] = {}
    if 'sizes.json' in present:
        sizes = _json_file(storage.join(options.tar_folder, 'sizes.json'), options.retry)
        declared.update({f: (int(sizes[f]), 'sizes.json') for f in files if isinstance(sizes, dict) and f in sizes})
    info_name = next((n for n in SPLIT_INFO_NAMES if n in present), None)
    if info_name:
        declared.update(_split_info_sizes(_json_file(storage.join(options.tar_folder, info_name), options.retry),
                                          info_name, set(files)))
    for f in files:
        stats_name = f'{f[:-len(".tar")]}_stats.json'
        if stats_name in present:
            stats = _json_file(storage.join(options.tar_folder, stats_name), options.retry)
            if isinstance(stats, dict) and isinstance(stats.get('successes'), int):
                declared[f] = (stats['successes'], stats_name)
    return declared


def _split_info_sizes(info, info_name: str, files: set) -> Dict[str, Tuple[int, str]]:
    """The shard lengths every split of timm's split info declares for the tars present."""
    out = {}
    splits = info.get('splits') if isinstance(info, dict) else None
    for split, spec in (splits.items() if isinstance(splits, dict) else ()):
        names, lengths = (spec.get('filenames'), spec.get('shard_lengths')) if isinstance(spec, dict) else (None, None)
        if not (isinstance(names, list) and isinstance(lengths, list) and len(names) == len(lengths)):
            raise AdoptError(f'{info_name}: split {split!r} needs "filenames" and "shard_lengths" of one length '
                             "(timm's split info); fix or remove it")
        out.update({n: (int(c), f'{info_name} (split {split})') for n, c in zip(names, lengths) if n in files})
    return out


def _json_file(url: str, retry: storage.RetryPolicy):
    try:
        return json.loads(storage.read_bytes(url, retry))
    except ValueError as exc:
        raise AdoptError(f'{url} is not valid JSON ({exc}); fix or remove it') from None


def check_declared(url: str, counted: int, declared: Optional[Tuple[int, str]]) -> None:
    if declared is not None and declared[0] != counted:
        raise AdoptError(f'{url} holds {counted} samples but {declared[1]} says {declared[0]}: a truncated download or '
                         f'a stale {declared[1]}; download the tar again, or fix or remove {declared[1]}')


def plan_of(options: AdoptOptions, files: List[str]) -> dict:
    """What build.json records; ``classes``: the names that ``name:`` label fields are looked up in."""
    classes = {t: list(options.class_names[t]) for t, where in sorted(options.labels.items()) if where.startswith('name:')}
    # The tars' folder is recorded only when the index is elsewhere: an index beside its tars moves with them.
    base = {'base': options.tar_folder} if options.index_prefix != options.tar_folder else {}
    fingerprint = hashlib.sha256(json.dumps([files, sorted(options.labels.items())] + ([classes] if classes else [])
                                            + ([base] if base else [])).encode()).hexdigest()
    return dict(adopted=dict(files=files, labels=dict(sorted(options.labels.items())), **base), shards=len(files),
                num_jobs=options.num_jobs, fingerprint=fingerprint, classes=classes)


def check_plan(options: AdoptOptions, plan: dict) -> None:
    """The first job records the plan (first writer wins); every other job must agree with it."""
    previous = record_plan(options.index_prefix, options.source, plan, options.retry)
    if previous is None:
        return
    if previous.get('fingerprint') != plan['fingerprint'] or 'adopted' not in previous:
        raise AdoptError(f'source {options.source!r} under {options.index_prefix} was made from other tars or other label '
                         'fields (or built, not adopted); use a new source name, or the same tars and --label options')
    if previous.get('num_jobs') != options.num_jobs:
        raise AdoptError(f'source {options.source!r} was planned for {previous.get("num_jobs")} jobs; rerun with '
                         f'--num-jobs {previous.get("num_jobs")}')


class _Hashing:
    """A read-only stream that hashes and counts what passes through it."""

    def __init__(self, stream):
        self.stream, self.sha, self.bytes = stream, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.sha.update(data)
        self.bytes += len(data)
        return data


def count_tar(options: AdoptOptions, number: int, name: str, declared: Optional[Tuple[int, str]] = None
              ) -> Tuple[ShardEntry, Dict[str, int]]:
    """Shard ``number``'s index entry (samples, bytes, sha256, human labels per task) and the count of
    its samples without each task's label field; ``declared``: the samples a size file says it holds.
    On S3 a tar costs a HEAD (its ETag, which every ranged GET after it must match: a tar replaced
    mid-read fails instead of hashing a mix) and one GET per 8 MiB."""
    url = storage.join(options.tar_folder, name)
    indices = {task: {n: i for i, n in enumerate(names)} for task, names in options.class_names.items()}

    def once():
        samples, labeled, unlabeled = 0, dict.fromkeys(options.labels, 0), dict.fromkeys(options.labels, 0)
        with storage.open_read(url, options.retry) as raw:
            stream = _Hashing(raw)
            for sample in _samples_or_say(stream, url):
                samples += 1
                meta = foreign_json(sample)
                for task, where in options.labels.items():
                    value = human_label(sample, where, meta, indices.get(task))
                    if value is None and where.startswith('name:') and label_value(sample, where, meta) is not None:
                        raise AdoptError(f'{url}: sample {sample["__key__"]} has {where} '
                                         f'{label_value(sample, where, meta)!r}, not a class name of task {task!r} in '
                                         'the tasks file; fix the tasks file or the --label mapping')
                    if value is None:
                        unlabeled[task] += 1
                    elif value >= options.num_classes.get(task, value + 1):   # negatives read as no label
                        raise AdoptError(f'{url}: sample {sample["__key__"]} has {where} {value} for task {task!r}, '
                                         f'which has {options.num_classes[task]} classes; fix the --label mapping '
                                         'or the tasks file')
                    else:
                        labeled[task] += 1
            while stream.read(1 << 20):   # the tar's end padding: the hash covers the whole file
                pass
        check_declared(url, samples, declared)
        entry = ShardEntry(name=shard_name(options.source, number), source=options.source, samples=samples,
                           bytes=stream.bytes, sha256=stream.sha.hexdigest(), tasks=labeled)
        return entry, unlabeled
    return storage.with_retries(once, f'adopting {url}', options.retry)


def _samples_or_say(stream, url: str):
    try:
        yield from tar_samples(stream, url, own_keys=False)
    except (tarfile.TarError, EOFError) as exc:
        raise AdoptError(f'{url}: not a whole tar archive ({type(exc).__name__}: {exc}); download it again or '
                         'move it out of the folder') from None


def own_entries(options: AdoptOptions) -> Dict[str, ShardEntry]:
    url = f'{source_folder(options.index_prefix, options.source)}/shards.{job_tag(options.job_index, options.num_jobs)}.parquet'
    try:
        return {e.name: e for e in read_part(url, options.source, options.retry)}
    except FileNotFoundError:
        return {}


def adopt(options: AdoptOptions) -> dict:
    """Count (or finish counting) this job's share of the tars; returns a summary."""
    listing = storage.list_names(options.tar_folder, options.retry)   # one listing: the tars and the size files
    files = foreign_tars(options, listing)
    check_plan(options, plan_of(options, files))
    declared = declared_sizes(options, files, listing)
    mine = own_entries(options)
    todo = [(i, f) for i, f in enumerate(files)
            if owner_job(i, options.num_jobs) == options.job_index and shard_name(options.source, i) not in mine]
    already = len(mine)
    unlabeled = dict.fromkeys(options.labels, 0)
    unsaved, last_save = 0, time.monotonic()

    def save():
        save_job_part(options.index_prefix, options.source, options.job_index, options.num_jobs, list(mine.values()),
                      options.retry)
    try:
        with ThreadPoolExecutor(max(1, options.workers)) as pool:
            counted = pool.map(lambda job: count_tar(options, *job, declared.get(job[1])), todo)
            for entry, missing in tqdm(counted, total=len(todo), unit='tar', desc=f'adopt {options.source}',
                                       disable=not options.progress):
                mine[entry.name], unsaved = entry, unsaved + 1
                for task, n in missing.items():
                    unlabeled[task] += n
                if time.monotonic() - last_save >= options.index_save_s:
                    save()   # a kill loses at most this long's tars, and the part is not rewritten per tar
                    unsaved, last_save = 0, time.monotonic()
    except BaseException:
        if unsaved:   # what finished counts, whatever stopped the pass; the first error is the one reported
            try:
                save()
            except Exception as exc:
                log.error('could not save the index of the tars counted so far either: %s', exc)
        raise
    if unsaved:
        save()
    labels = {task: sum(e.tasks.get(task, 0) for e in mine.values()) for task in options.labels}
    return dict(source=options.source, index=options.index_prefix, job_index=options.job_index,
                num_jobs=options.num_jobs, tars=len(files),
                counted_now=len(todo), already_counted=already, samples=sum(e.samples for e in mine.values()),
                labels=labels, without_label_now=unlabeled)
