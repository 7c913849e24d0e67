"""Pack images into WebDataset tar shards, atomically and resumably.

The plan (which item goes into which shard at which position) is a pure function of
the sorted input ids and the shard size, so keys ``{source}/{shard:06d}/{index:06d}``
are stable and a rerun rebuilds exactly the shards the index does not list yet.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

from tqdm import tqdm

from . import storage
from .images import BadImage, check_and_normalize
from .index import ShardEntry, ShardIndex
from .inputs import Item
from .naming import sample_key, shard_name

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

    def __post_init__(self):
        if not self.source or any(c in self.source for c in '/-. '):
            raise ValueError(f'source name {self.source!r} must be non-empty without "/", "-", "." or spaces')
        if self.samples_per_shard < 1:
            raise ValueError(f'samples_per_shard must be >= 1, got {self.samples_per_shard}')
        if self.workers < 1:
            raise ValueError(f'workers must be >= 1, got {self.workers}')


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
        raise ValueError(f'duplicate input id {ids[dup]!r}: ids must be unique within a source')
    plan, current, size = [], [], 0
    for it in ordered:
        nbytes = os.path.getsize(it.path) if max_shard_bytes and os.path.exists(it.path) else 0
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


def remove_leftovers(options: BuildOptions) -> None:
    """What a killed build of this source left: staged ``{source}-*.tar.tmp-*`` files beside the
    shards (local outputs; S3 uploads are whole or absent) and its workers' temp tars."""
    if storage.is_local(options.prefix) and os.path.isdir(options.prefix):
        for name in os.listdir(options.prefix):
            if name.startswith(f'{options.source}-') and '.tar.tmp-' in name:
                os.unlink(os.path.join(options.prefix, name))
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f'{TEMP_PREFIX}*.tar')):
        pid = os.path.basename(path)[len(TEMP_PREFIX):].split('-', 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_shard(job: dict) -> dict:
    """Write one shard to a local temp file, then move it into place whole. Runs in a worker."""
    opts: BuildOptions = job['options']
    shard, items = job['shard'], job['items']
    entry = ShardEntry(name=shard_name(opts.source, shard), source=opts.source, samples=0, bytes=0, sha256='')
    tasks: Dict[str, int] = {}
    fd, tmp = tempfile.mkstemp(prefix=f'{TEMP_PREFIX}{os.getpid()}-', suffix='.tar')
    try:
        with os.fdopen(fd, 'wb') as f, tarfile.open(fileobj=f, mode='w', format=tarfile.USTAR_FORMAT) as tar:
            for pos, it in enumerate(items):
                try:
                    with open(it.path, 'rb') as img_file:
                        data, ext = check_and_normalize(img_file.read(), opts.max_side, opts.quality)
                except (OSError, BadImage) as exc:
                    entry.skipped.append(dict(id=it.id, path=it.path, reason=str(exc)))
                    continue
                key = sample_key(opts.source, shard, pos)
                meta = dict(source=opts.source, id=it.id, labels=it.labels)
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
        os.unlink(tmp)
    return asdict(entry)


def _fingerprint(plan: List[List[Item]]) -> str:
    h = hashlib.sha256()
    for shard in plan:
        h.update(b'\x00'.join(f'{it.id}\x01{sorted(it.labels.items())}'.encode() for it in shard))
        h.update(b'\x02')
    return h.hexdigest()


def build(items: Sequence[Item], options: BuildOptions,
          classes: Optional[Dict[str, List[str]]] = None) -> BuildReport:
    """Build (or finish building) the shards of one source under ``options.prefix``."""
    if not items:
        raise ValueError(f'source {options.source!r}: no input images')
    plan = plan_shards(items, options.samples_per_shard, options.max_shard_bytes)
    build_info = dict(fingerprint=_fingerprint(plan), shards=len(plan), inputs=len(items),
                      samples_per_shard=options.samples_per_shard, max_shard_bytes=options.max_shard_bytes,
                      max_side=options.max_side, quality=options.quality, classes=classes or {})
    index = ShardIndex.load(options.prefix, missing_ok=True, policy=options.retry)
    previous = index.builds.get(options.source)
    if previous and previous['fingerprint'] != build_info['fingerprint']:
        raise ValueError(f'source {options.source!r} under {options.prefix} was built from other inputs or '
                         'shard sizes; resuming would mix two plans. Use a new source name or prefix.')
    changed = [k for k in ('max_side', 'quality') if previous and previous.get(k) != build_info[k]]
    if changed:  # the encoding is part of a build's identity: one source, one encoding
        raise ValueError(f'source {options.source!r} under {options.prefix} was built with '
                         + ', '.join(f'--{k.replace("_", "-")} {previous.get(k)}' for k in changed)
                         + '; resuming with ' + ', '.join(f'--{k.replace("_", "-")} {build_info[k]}' for k in changed)
                         + ' would mix two encodings in one source. Resume with the same options, or use a new '
                         'source name or prefix.')
    index.builds[options.source] = build_info
    remove_leftovers(options)
    todo = [dict(options=options, shard=i, items=shard) for i, shard in enumerate(plan)
            if shard_name(options.source, i) not in index.shards]
    done_before = len(plan) - len(todo)
    written, last_save = 0, time.monotonic()
    bar = tqdm(total=sum(len(j['items']) for j in todo), unit='img', disable=not options.progress,
               desc=f'build {options.source}')
    ctx = mp.get_context('spawn')
    try:
        with (ctx.Pool(options.workers) if options.workers > 1 else _InlinePool()) as pool:
            for raw in pool.imap_unordered(write_shard, todo):
                entry = ShardEntry(**raw)
                index.add(entry)
                written += 1
                bar.update(entry.samples + len(entry.skipped))
                if time.monotonic() - last_save > INDEX_SAVE_INTERVAL_S:
                    index.save(options.prefix, options.retry)  # progress survives a kill
                    last_save = time.monotonic()
    except BaseException:
        bar.close()
        if written:  # finished shards stay done; the first error is the one reported
            try:
                index.save(options.prefix, options.retry)
            except Exception as exc:
                log.error('could not save the index of the finished shards either: %s', exc)
        raise
    bar.close()
    index.save(options.prefix, options.retry)
    entries = index.shards_of(options.source)
    skipped = [s for e in entries for s in e.skipped]
    for s in skipped:
        log.warning('skipped %s: %s', s['path'], s['reason'])
    return BuildReport(shards_written=written, shards_skipped_as_done=done_before,
                       samples=sum(e.samples for e in entries), skipped=skipped)


class _InlinePool:
    """The Pool interface in-process, for workers=1 (no spawn cost, easy to debug)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap_unordered(self, fn, jobs):
        return map(fn, jobs)
