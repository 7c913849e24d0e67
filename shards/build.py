"""Pack images into WebDataset tar shards, atomically and resumably.

The plan (which item goes into which shard at which position) is a pure function of
the sorted input ids and the shard size, so keys ``{source}/{shard:06d}/{index:06d}``
are stable and a rerun rebuilds exactly the shards the index does not list yet.

Many machines build one source together (``job_index`` of ``num_jobs``, e.g. a Slurm array):
each job plans the whole input list, takes the shards ``i`` with ``i % num_jobs == job_index``,
and lists the ones it completed in its own index part (``shards/index.py``), so no two jobs ever
write the same object, on S3 or a shared disk. A rerun of a job writes only what is missing.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import stat
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

from tqdm import tqdm

from . import storage
from .common.errors import BadValue
from .hashes import SampleHash, save_segment
from .images import BadImage, check_and_normalize, to_rgb
from .index import (
    ShardEntry,
    job_tag,
    load_source,
    owner_job,
    read_part,
    read_skipped,
    record_plan,
    save_job_part,
    source_folder,
)
from .inputs import Item
from .item_bytes import describe, read_items
from .naming import sample_key, shard_name
from .perceptual import image_hashes, to_hex
from .reader import MAX_MEMBER_BYTES

log = logging.getLogger(__name__)
INDEX_SAVE_INTERVAL_S = 30.0


@dataclass(frozen=True)
class BuildOptions:
    prefix: str                               # local folder or s3://bucket/prefix
    source: str                               # e.g. "in1k", "yfcc"
    samples_per_shard: int = 1000
    max_shard_bytes: Optional[int] = None     # planned from input file sizes
    max_side: Optional[int] = None            # re-encode larger images to JPEG of this max side
    quality: int = 90
    workers: int = 1
    progress: bool = True
    retry: storage.RetryPolicy = field(default_factory=storage.RetryPolicy)
    job_index: int = 0                        # this job's share: shards i with i % num_jobs == job_index
    num_jobs: int = 1
    index_save_s: float = INDEX_SAVE_INTERVAL_S  # a killed job rewrites at most this long's shards

    def __post_init__(self):
        if not 0 <= self.job_index < self.num_jobs:
            raise BadValue(f'job_index {self.job_index} must be in [0, num_jobs={self.num_jobs})')
        if not self.source or any(c in self.source for c in '/-. '):
            raise BadValue(f'source name {self.source!r} must be non-empty without "/", "-", "." or spaces')
        if self.samples_per_shard < 1:
            raise BadValue(f'samples_per_shard must be >= 1, got {self.samples_per_shard}')
        if self.workers < 1:
            raise BadValue(f'workers must be >= 1, got {self.workers}')


@dataclass
class BuildReport:
    shards_written: int
    shards_skipped_as_done: int
    samples: int
    skipped: List[dict]


def plan_shards(items: Sequence[Item], samples_per_shard: int,
                max_shard_bytes: Optional[int] = None) -> List[List[Item]]:
    """Consecutive runs of the id-sorted items, cut at the sample or (input) byte limit."""
    ordered = sorted(items, key=lambda it: it.id)
    ids = [it.id for it in ordered]
    if len(set(ids)) != len(ids):
        dup = next(i for i, (a, b) in enumerate(zip(ids, ids[1:])) if a == b)
        raise BadValue(f'duplicate input id {ids[dup]!r}: ids must be unique within a source')
    plan, current, size = [], [], 0
    for it in ordered:
        nbytes = (it.nbytes if it.nbytes is not None else os.path.getsize(it.path) if os.path.exists(it.path) else 0) \
            if max_shard_bytes else 0
        if current and (len(current) >= samples_per_shard or
                        (max_shard_bytes and size + nbytes > max_shard_bytes)):
            plan.append(current)
            current, size = [], 0
        current.append(it)
        size += nbytes
    if current:
        plan.append(current)
    return plan


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0  # fixed mtime: same input, same bytes
    tar.addfile(info, io.BytesIO(data))


TEMP_PREFIX = 'replk-shard-'


def owns(options: BuildOptions, shard: int) -> bool:
    return owner_job(shard, options.num_jobs) == options.job_index


def remove_leftovers(options: BuildOptions) -> None:
    """What a killed run of this job left: staged ``{source}-{i}.tar.tmp-*`` files of its own shards
    beside the shards (local outputs; S3 uploads are whole or absent; other jobs' files are theirs)
    and temp tars no live writer holds (each writer holds an exclusive lock on its temp tar until it
    is gone: PIDs prove nothing to containers that share /tmp in separate PID namespaces)."""
    if storage.is_local(options.prefix) and os.path.isdir(options.prefix):
        for name in os.listdir(options.prefix):
            number = name[len(options.source) + 1:].split('.', 1)[0]
            if (name.startswith(f'{options.source}-') and '.tar.tmp-' in name and number.isdigit()
                    and owns(options, int(number))):
                os.unlink(os.path.join(options.prefix, name))
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f'{TEMP_PREFIX}*.tar')):
        with contextlib.suppress(OSError):
            _remove_if_abandoned(path)


LOCK_GRACE_S = 60   # a temp tar this new may not be locked yet (created, then locked by its writer)


def _remove_if_abandoned(path: str) -> None:
    # O_NONBLOCK: a FIFO planted under the name must not block the build on open
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, 'O_NOFOLLOW', 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or time.time() - info.st_mtime < LOCK_GRACE_S:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return   # its writer is alive
        except OSError as exc:
            if exc.errno not in NO_LOCKS:
                raise   # a disk without flock (Lustre without -o flock): the age alone decides
        os.unlink(path)
    finally:
        os.close(fd)


NO_LOCKS = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP)


def _lock_temp(path: str) -> int:
    """A descriptor holding an exclusive lock on ``path`` until closed (on a disk without flock,
    just a descriptor: leftovers are then judged by age alone)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        if exc.errno not in NO_LOCKS:
            os.close(fd)
            raise
    return fd


def write_shard(job: dict) -> dict:
    """Write one shard to a local temp file, then move it into place whole. Runs in a worker."""
    opts: BuildOptions = job['options']
    shard, items = job['shard'], job['items']
    entry = ShardEntry(name=shard_name(opts.source, shard), source=opts.source, samples=0, bytes=0, sha256='')
    tasks: Dict[str, int] = {}
    hashes: List[SampleHash] = []
    fd, tmp = tempfile.mkstemp(prefix=f'{TEMP_PREFIX}{os.getpid()}-', suffix='.tar')
    lock = None
    try:
        lock = _lock_temp(tmp)   # its own descriptor: closing the writer's does not drop the lock
        with storage.local_write(tmp, f'{tmp} (the temporary copy of {entry.name}: set TMPDIR to a larger disk)'), \
                os.fdopen(fd, 'wb') as f, tarfile.open(fileobj=f, mode='w', format=tarfile.USTAR_FORMAT) as tar:
            for pos, (it, raw) in enumerate(read_items(items)):
                try:
                    if isinstance(raw, OSError):
                        raise raw
                    data, ext, image = check_and_normalize(raw, opts.max_side, opts.quality)
                    if len(data) > MAX_MEMBER_BYTES:   # every reader would refuse the member
                        raise BadImage(f'{len(data)} bytes to store, over the shard member limit of '
                                       f'{MAX_MEMBER_BYTES} (--max-side stores it smaller)')
                except (OSError, BadImage) as exc:
                    entry.skipped.append(dict(id=it.id, path=describe(it.path, it.at), reason=str(exc)))
                    continue
                key = sample_key(opts.source, shard, pos)
                phash, dhash = image_hashes(to_rgb(image))
                hashes.append(SampleHash(entry.name, entry.samples, key, phash, dhash))
                meta = dict(source=opts.source, id=it.id, labels=it.labels, phash=to_hex(phash), dhash=to_hex(dhash))
                _add_member(tar, f'{key}.{ext}', data)
                _add_member(tar, f'{key}.json', json.dumps(meta).encode())
                entry.samples += 1
                for task in it.labels:
                    tasks[task] = tasks.get(task, 0) + 1
        digest = hashlib.sha256()
        with open(tmp, 'rb') as f:
            while chunk := f.read(8 << 20):
                digest.update(chunk)
        entry.bytes, entry.sha256, entry.tasks = os.path.getsize(tmp), digest.hexdigest(), tasks
        storage.put_file_atomic(tmp, storage.join(opts.prefix, entry.name), opts.retry)
    finally:
        with contextlib.suppress(FileNotFoundError):   # local_write removed it already
            os.unlink(tmp)
        if lock is not None:
            os.close(lock)
    return dict(entry=asdict(entry), hashes=hashes)


def _fingerprint(plan: List[List[Item]]) -> str:
    h = hashlib.sha256()
    for shard in plan:
        h.update(b'\x00'.join(f'{it.id}\x01{sorted(it.labels.items())}'.encode() for it in shard))
        h.update(b'\x02')
    return h.hexdigest()


def check_build(options: BuildOptions, build_info: dict) -> None:
    """Every job of a source builds the same plan with the same encoding: the first job's
    parameters are recorded (first writer wins), the others must match them."""
    previous = record_plan(options.prefix, options.source, build_info, options.retry)
    if previous is None:
        return
    if previous['fingerprint'] != build_info['fingerprint']:
        raise BadValue(f'source {options.source!r} under {options.prefix} was built from other inputs or '
                         'shard sizes; resuming would mix two plans. Use a new source name or prefix.')
    planned_jobs = previous.get('num_jobs')   # absent from builds that predate recording it
    if planned_jobs is not None and planned_jobs != build_info['num_jobs']:
        raise BadValue(f'source {options.source!r} under {options.prefix} was planned for {planned_jobs} build jobs; '
                         f'this job says --num-jobs {build_info["num_jobs"]}, which would assign shards to jobs that '
                         f'never run: rerun with --num-jobs {planned_jobs} (and --job-index 0..{planned_jobs - 1})')
    changed = [k for k in ('max_side', 'quality') if previous.get(k) != build_info[k]]
    if changed:  # the encoding is part of a build's identity: one source, one encoding
        raise BadValue(f'source {options.source!r} under {options.prefix} was built with '
                         + ', '.join(f'--{k.replace("_", "-")} {previous.get(k)}' for k in changed)
                         + '; resuming with ' + ', '.join(f'--{k.replace("_", "-")} {build_info[k]}' for k in changed)
                         + ' would mix two encodings in one source. Resume with the same options, or use a new '
                         'source name or prefix.')


def own_part(options: BuildOptions) -> Dict[str, ShardEntry]:
    """The shards this job's index part already lists, with their skipped images."""
    url = f'{source_folder(options.prefix, options.source)}/shards.{job_tag(options.job_index, options.num_jobs)}.parquet'
    try:
        entries = read_part(url, options.source, options.retry)
    except FileNotFoundError:
        return {}
    skipped = read_skipped(options.prefix, options.source, options.job_index, options.num_jobs, options.retry)
    for e in entries:
        e.skipped, e.skipped_count = skipped.get(e.name, []), None
    return {e.name: e for e in entries}


def build(items: Sequence[Item], options: BuildOptions,
          classes: Optional[Dict[str, List[str]]] = None) -> BuildReport:
    """Build (or finish building) this job's shards of one source under ``options.prefix``."""
    if not items:
        raise BadValue(f'source {options.source!r}: no input images')
    plan = plan_shards(items, options.samples_per_shard, options.max_shard_bytes)
    build_info = dict(fingerprint=_fingerprint(plan), shards=len(plan), inputs=len(items), num_jobs=options.num_jobs,
                      samples_per_shard=options.samples_per_shard, max_shard_bytes=options.max_shard_bytes,
                      max_side=options.max_side, quality=options.quality, classes=classes or {})
    check_build(options, build_info)
    remove_leftovers(options)
    done = load_source(options.prefix, options.source, options.retry)  # every job's parts, older indexes
    mine = own_part(options)
    todo = [dict(options=options, shard=i, items=shard) for i, shard in enumerate(plan)
            if owns(options, i) and shard_name(options.source, i) not in done]
    done_before = sum(owns(options, i) for i in range(len(plan))) - len(todo)
    written, last_save, unsaved_hashes = 0, time.monotonic(), []

    def save():  # the hashes of the new shards first: the part is what makes them count
        save_segment(options.prefix, options.source, options.job_index, options.num_jobs, unsaved_hashes,
                     options.retry)
        unsaved_hashes.clear()
        save_job_part(options.prefix, options.source, options.job_index, options.num_jobs, list(mine.values()),
                      options.retry)
    bar = tqdm(total=sum(len(j['items']) for j in todo), unit='img', disable=not options.progress,
               desc=f'build {options.source} job {options.job_index}/{options.num_jobs}')
    ctx = mp.get_context('spawn')
    try:
        with (ctx.Pool(options.workers) if options.workers > 1 else _InlinePool()) as pool:
            for raw in pool.imap_unordered(write_shard, todo):
                entry = ShardEntry(**raw['entry'])
                unsaved_hashes.extend(raw['hashes'])
                mine[entry.name] = entry
                written += 1
                bar.update(entry.samples + len(entry.skipped))
                if time.monotonic() - last_save >= options.index_save_s:
                    save()  # progress survives a kill; the part holds this job's shards only
                    last_save = time.monotonic()
    except BaseException:
        bar.close()
        if written:  # finished shards stay done; the first error is the one reported
            try:
                save()
            except Exception as exc:
                log.error('could not save the index of the finished shards either: %s', exc)
        raise
    bar.close()
    if written:
        save()
    entries = [e for e in mine.values()]
    skipped = [s for e in sorted(entries, key=lambda e: e.name) for s in e.skipped]
    for s in skipped:   # the report carries them; the CLI prints them once, under its summary
        log.info('skipped %s: %s', s['path'], s['reason'])
    everything = load_source(options.prefix, options.source, options.retry)
    return BuildReport(shards_written=written, shards_skipped_as_done=done_before,
                       samples=sum(e.samples for e in everything.values()), skipped=skipped)


class _InlinePool:
    """The Pool interface in-process, for workers=1 (no spawn cost, easy to debug)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap_unordered(self, fn, jobs):
        return map(fn, jobs)
