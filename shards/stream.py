"""The training stream: weighted sources of shards -> decoded, transformed, batched samples.

Deterministic and exactly resumable (see ``plan.py`` for the order). Use it through
``ResumableLoader``, which counts consumed batches and turns them into a small state.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterator, List, Literal, Optional

import torch
from braceexpand import braceexpand
from pydantic import Field

from . import plan as P
from . import storage
from .common.config import section
from .common.errors import BadValue, DataFault, NotFound
from .exclusions import Exclusions, kept_to_raw
from .images import BadImage, decode_or_defer, image_part
from .index import INDEX_DIR, entry_url, incomplete_message, load_source_and_plan, planned_but_missing
from .naming import shard_source, split_adopted
from .reader import iter_shard_samples

log = logging.getLogger(__name__)


@section(frozen=True)
class SourceSpec:
    """One source of shards."""
    name: str
    """a source name in the shard index (e.g. in1k, yfcc)"""
    url: str
    """shard prefix holding the shard index (_index/), or a brace pattern of its shards"""
    weight: Optional[float] = Field(None, ge=0)
    """mixing weight; null: by sample count"""
    allow_incomplete: bool = False
    """train on a source whose build jobs did not all finish (its missing shards are named in a warning); false: an error"""


@dataclass(frozen=True)
class ResolvedSource:
    name: str
    urls: tuple
    counts: tuple                 # samples each shard gives the stream (excluded ones not counted)
    excluded: tuple = ()          # per shard: the sorted tar positions an exclusion list removes
    sha256: tuple = ()            # per shard: its hash in the index (what labels are bound to)
    positions: tuple = ()         # per shard: the build positions its keys index (samples + skipped inputs)
    classes: tuple = ()           # per shard: {task: class names} its build recorded (human labels index them)
    names: tuple = ()             # per shard: its name in the index, {source}-{shard:06d}.tar (labels name its stem)

    @property
    def samples(self) -> int:
        return sum(self.counts)

    def excluded_in(self, shard: int) -> tuple:
        return self.excluded[shard] if self.excluded else ()


def resolve_source(spec: SourceSpec, retry: storage.RetryPolicy = storage.DEFAULT_RETRY,
                   exclude: Optional[Exclusions] = None) -> ResolvedSource:
    """Shard URLs and exact sample counts, from the index beside the shards, less what ``exclude``
    lists (near-duplicates of evaluation images; ``shards/exclusions.py``)."""
    urls, entries, plans = source_entries(spec, retry)
    facts = dict(sha256=tuple(e.sha256 for e in entries), positions=tuple(e.samples + e.num_skipped for e in entries),
                 names=tuple(e.name for e in entries),
                 classes=tuple((plans.get(e.source) or {}).get('classes') or {} for e in entries))
    if exclude is None:
        return ResolvedSource(spec.name, tuple(urls), tuple(e.samples for e in entries), **facts)
    excluded = []
    for url, entry in zip(urls, entries):
        sha, ordinals, _ = exclude.by_shard.get(entry.name, (entry.sha256, (), ()))
        if sha != entry.sha256:
            raise BadValue(f'exclusion list {exclude.url} was made for other bytes of {url} (sha256 {sha[:12]}, '
                             f'the index says {entry.sha256[:12]}): the shard was rebuilt since; run '
                             '`replk-shards decontaminate` again')
        if ordinals and ordinals[-1] >= entry.samples:
            raise BadValue(f'exclusion list {exclude.url} names sample {ordinals[-1]} of {url}, which has '
                             f'{entry.samples}')
        excluded.append(ordinals)
    counts = tuple(e.samples - len(x) for e, x in zip(entries, excluded))
    return ResolvedSource(spec.name, tuple(urls), counts, tuple(excluded), **facts)


def check_shards_present(urls, retry: storage.RetryPolicy = storage.DEFAULT_RETRY) -> None:
    """Every listed shard exists, checked at start-up with one listing per prefix (a LIST returns
    1000 names per request), not one request per shard, and not when the stream reaches it."""
    by_prefix: dict = {}
    for url in urls:
        prefix, name = split_adopted(url)[0].rsplit('/', 1)
        by_prefix.setdefault(prefix, []).append(name)
    for prefix, names in by_prefix.items():
        present = set(storage.list_names(prefix, retry))
        missing = [n for n in names if n not in present]
        if missing:
            raise NotFound(f'{len(missing)} shard(s) listed in {prefix}/{INDEX_DIR} are missing from storage, '
                                    f'e.g. {storage.join(prefix, missing[0])}; rerun the build that wrote them '
                                    '(it writes only what is missing) or restore them')


def source_entries(spec: SourceSpec, retry: storage.RetryPolicy = storage.DEFAULT_RETRY) -> tuple:
    """(shard URLs, their index entries, {build source: its plan}) of one source."""
    if spec.url.endswith('.tar'):
        urls = list(braceexpand(spec.url))
        prefix = urls[0].rsplit('/', 1)[0]
        listed, plans = {}, {}
        for source in sorted({shard_source(u.rsplit('/', 1)[1]) for u in urls}):
            entries_of, plans[source] = load_source_and_plan(prefix, source, retry)
            listed.update(entries_of)
        missing = [u for u in urls if u.rsplit('/', 1)[1] not in listed]
        if missing:
            raise BadValue(f'source {spec.name!r}: {len(missing)} shards are not in the index under {prefix} '
                             f'(incomplete or absent), e.g. {missing[0]}')
        entries = [listed[u.rsplit('/', 1)[1]] for u in urls]
        urls = [entry_url(prefix, e, plans.get(e.source)) for e in entries]   # an adopted shard: its own file
    else:
        prefix = spec.url.rstrip('/')
        listed, plan = load_source_and_plan(prefix, spec.name, retry)
        entries = [listed[n] for n in sorted(listed)]
        if not entries:
            missing = storage.missing_bucket(prefix)
            if missing is not None:
                raise missing
            raise BadValue(f'source {spec.name!r}: no shards of that source in the index under {prefix} '
                             f'({INDEX_DIR}/{spec.name}/)')
        check_whole(spec, listed, plan)
        urls = [entry_url(prefix, e, plan) for e in entries]   # adopted shards: their own files
        plans = {spec.name: plan}
    return urls, entries, plans


def check_whole(spec: SourceSpec, listed: dict, info: Optional[dict]) -> None:
    """Refuse a source whose build planned shards the index lacks (a job never ran, or failed),
    unless ``spec.allow_incomplete`` says to read it anyway, which is then said every time."""
    missing = planned_but_missing(spec.name, listed, info)
    if not missing:
        return
    message = incomplete_message(spec.name, missing, info)
    if not spec.allow_incomplete:
        raise BadValue(f'{message}; or set allow_incomplete on this source to read what is there')
    log.warning('%s; reading it anyway (allow_incomplete): %d planned shards left out', message, len(missing))


@section(frozen=True)
class StreamConfig:
    """How the stream reads its sources (the seed and batch size are the run's, given to ``ShardStream``)."""
    shuffle_buffer: int = Field(500, ge=1)
    """samples shuffled within each worker (raw samples per source)"""
    few_shards: Literal['error', 'share'] = 'error'
    """fewer shards than ranks x workers: an error, or share (slots read disjoint ranges of shared shards)"""
    exclude: Optional[str] = None
    """exclusion list to leave out (replk-shards decontaminate): near-duplicates of evaluation images"""
    max_corrupt_fraction: float = Field(0.01, ge=0, le=1)
    """stop when more samples than this fail to decode"""
    corrupt_window: int = Field(2000, ge=1)
    """... judged over at least this many samples (per worker), so a few early faults do not stop a run"""
    retry: storage.RetryPolicy = storage.DEFAULT_RETRY
    """how long reads of the sources are retried (training and evaluation)"""


# --- raw samples ---------------------------------------------------------------------------
def shuffled(samples: Iterator, buffer: int, gen) -> Iterator:
    """A seeded shuffle buffer: same inputs and seed, same output order."""
    pool = []
    for s in samples:
        if len(pool) < buffer:
            pool.append(s)
            continue
        i = int(gen.integers(buffer))
        yield pool[i]
        pool[i] = s
    while pool:
        yield pool.pop(int(gen.integers(len(pool))))


def source_stream(src: ResolvedSource, cfg: StreamConfig, seed: int, slot: int, slots: int, start: int) -> Iterator:
    """Raw samples of one source for one slot, from absolute position ``start`` onwards, forever."""
    per_epoch = src.samples // slots
    source_epoch, skip = divmod(start, per_epoch)
    while True:
        order = P.shard_order(len(src.counts), seed, src.name, source_epoch)
        ranges = P.slot_shard_ranges(src.counts, order, slots, slot)
        raw = (s for shard, first, n in ranges
               for s in kept_samples(src.urls[shard], first, n, src.excluded_in(shard), cfg.retry))
        out = shuffled(raw, cfg.shuffle_buffer, P.rng(seed, 'buffer', src.name, source_epoch, slot))
        for i, sample in enumerate(out):
            if i >= skip:  # resume: replay without decoding
                yield sample
        source_epoch, skip = source_epoch + 1, 0


def kept_samples(url: str, first: int, count: int, excluded: tuple, retry: storage.RetryPolicy) -> Iterator[dict]:
    """Samples ``first .. first+count`` of a shard counting only those not ``excluded`` (tar positions)."""
    if not excluded:
        yield from iter_shard_samples(url, first, count, retry)
        return
    lo, hi = kept_to_raw(first, excluded), kept_to_raw(first + count - 1, excluded) + 1
    drop = set(excluded)
    for pos, sample in enumerate(iter_shard_samples(url, lo, hi - lo, retry), lo):
        if pos not in drop:
            yield sample


# --- decoding ------------------------------------------------------------------------------
class CorruptCounter:
    """Counts undecodable samples, logs at a bounded rate, stops the run past the limit."""

    def __init__(self, cfg: StreamConfig, log_interval_s: float = 30.0):
        self.cfg, self.seen, self.bad, self.last_log, self.interval = cfg, 0, 0, -1e9, log_interval_s

    def ok(self) -> None:
        self.seen += 1

    def failed(self, what: str, reason: str) -> None:
        self.seen += 1
        self.bad += 1
        now = time.monotonic()
        if now - self.last_log > self.interval:
            log.warning('skipping corrupt sample %s: %s (%d of %d so far)', what, reason, self.bad, self.seen)
            self.last_log = now
        # Fair to a few early faults: the limit applies to max(seen, window) samples, so 3 bad
        # samples among the first 200 do not stop a run whose overall rate is under the limit.
        if self.bad > self.cfg.max_corrupt_fraction * max(self.seen, self.cfg.corrupt_window):
            raise DataFault(f'{self.bad} of {self.seen} samples failed to decode, more than the allowed '
                               f'{self.cfg.max_corrupt_fraction:.1%} of at least {self.cfg.corrupt_window} '
                               f'(data.stream.max_corrupt_fraction; last: {what}: {reason}); '
                               'run `python -m shards verify` on the sources')


def takes_undecoded(transform: Callable) -> bool:
    """Whether ``transform`` (or the first step of its Compose) says ``takes_undecoded = True``: it is
    handed plain JPEGs as ``images.UndecodedJpeg`` and decodes them itself, at the scale it needs."""
    steps = getattr(transform, 'transforms', [transform])
    return bool(steps) and getattr(steps[0], 'takes_undecoded', False)


def decode_sample(raw: Optional[dict], transform: Callable, min_side: Optional[int]) -> dict:
    if raw.get('__missing__'):
        raise BadImage('sample missing from a truncated shard')
    data = image_part(raw)
    try:
        meta = json.loads(raw['json']) if 'json' in raw else {}
    except ValueError as exc:
        raise BadImage(f'unreadable metadata ({exc})') from None
    # bad data raises BadImage (here, or in a transform that decodes an UndecodedJpeg): counted and replaced
    image = decode_or_defer(data, min_side, defer_jpeg=takes_undecoded(transform))
    try:
        return dict(image=transform(image), key=raw['__key__'], meta=meta)
    except BadImage:
        raise
    except Exception as exc:  # not the data's fault: stop, naming it
        raise RuntimeError(f'the transform failed on {raw["__key__"]} ({type(exc).__name__}: {exc}): a configuration '
                           'or code fault, not bad data (check data.transform.image_size, data.transform.scale, '
                           'data.transform.auto_augment)') from exc


def collate(samples: List[dict], sources: List[str]) -> dict:
    return dict(image=stack_images([s['image'] for s in samples]),
                key=[s['key'] for s in samples], source=sources,
                meta=[s['meta'] for s in samples])


def stack_images(images: List[torch.Tensor]) -> torch.Tensor:
    """One NCHW batch. Images decoded by Pillow are CHW views of HWC memory: stacking their HWC
    memory is one contiguous copy each (6x faster than gathering the strided views), and the batch
    comes out in channels-last layout, the layout the model takes (``to_model_input``)."""
    if all(img.dim() == 3 and img.stride(0) == 1 for img in images):
        return torch.stack([img.permute(1, 2, 0) for img in images]).permute(0, 3, 1, 2)
    return torch.stack(images)
