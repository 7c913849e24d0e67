"""``ShardStream`` (an IterableDataset) and ``ResumableLoader`` (its DataLoader with a state)."""
from __future__ import annotations

import logging
import sys
from collections import Counter
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from . import plan as P
from .common.errors import BadValue, DataFault
from .exclusions import load as load_exclusions
from .images import BadImage
from .reader import iter_shard_samples
from .stream import (
    CorruptCounter,
    SourceSpec,
    StreamConfig,
    check_shards_present,
    collate,
    decode_sample,
    resolve_source,
    source_stream,
)

log = logging.getLogger(__name__)
STATE_VERSION = 1


class ShardStream(IterableDataset):
    """Batches of ``{"image", "key", "source", "meta"}`` for one rank; see ``plan.py`` for the order."""

    def __init__(self, sources: Sequence[SourceSpec], cfg: StreamConfig, transform: Callable,
                 rank: int, world_size: int, workers: int, *, seed: int = 0, batch_size: int = 64,
                 decode_min_side: Optional[int] = None, batch_transform: Optional[Callable[[dict], dict]] = None):
        """``seed`` fixes the order and the augmentation; ``batch_transform`` runs on each collated
        batch inside the worker (e.g. a label join)."""
        super().__init__()
        self.batch_transform = batch_transform
        if not sources:
            raise BadValue('no sources given')
        weights = [s.weight for s in sources]
        if any(w is None for w in weights) and any(w is not None for w in weights):
            raise BadValue('give a weight to every source or to none (default: proportional to size)')
        if batch_size < 1:
            raise BadValue(f'batch_size must be >= 1, got {batch_size}')
        self.cfg, self.transform, self.decode_min_side = cfg, transform, decode_min_side
        self.seed, self.batch_size = seed, batch_size
        self.rank, self.world_size, self.workers = rank, world_size, max(1, workers)
        self.slots = world_size * self.workers
        self.exclusions = load_exclusions(cfg.exclude, cfg.retry) if cfg.exclude else None
        self.sources = [resolve_source(s, cfg.retry, self.exclusions) for s in sources]
        if self.exclusions is not None:
            self._check_exclusions_apply()
        check_shards_present([u for s in self.sources for u in s.urls], cfg.retry)
        for src in self.sources:
            self._check_enough_shards(src)
        self.plan = P.mix_plan([s.name for s in self.sources], [s.samples for s in self.sources],
                               None if weights[0] is None else weights, self.slots, batch_size)
        self.epoch, self.resume_batches = 0, 0

    def _check_exclusions_apply(self) -> None:
        """A list that names none of this stream's shards is the wrong list, not an empty one."""
        removed = {src.name: sum(len(x) for x in src.excluded) for src in self.sources}
        ours = {name for src in self.sources for name in src.names}
        if self.exclusions.by_shard and not ours & set(self.exclusions.by_shard):
            raise BadValue(f'exclusion list {self.exclusions.url} (made for sources '
                             f'{", ".join(self.exclusions.sources())}) names none of the shards of '
                             f'{", ".join(removed)}: a list for other data (data.stream.exclude)')
        log.info('exclusion list %s leaves out %s', self.exclusions.url,
                 ', '.join(f'{n} of {name}' for name, n in removed.items()))

    def _check_enough_shards(self, src) -> None:
        where = f'world size {self.world_size} x {self.workers} workers = {self.slots} slots'
        if src.samples < self.slots:
            raise BadValue(f'source {src.name!r} has {src.samples} samples for {where}')
        if len(src.counts) < self.slots and self.cfg.few_shards == 'error':
            raise BadValue(f'source {src.name!r} has {len(src.counts)} shards for {where}: rebuild it with '
                             f'smaller shards (replk-shards build --samples-per-shard <= {src.samples // self.slots}), '
                             'use fewer workers (data.workers), or set data.stream.few_shards="share" (slots then read '
                             'disjoint parts of the same shards)')

    def batches_per_epoch(self) -> int:
        """Per rank: every worker yields the same number of batches."""
        return self.plan.batches_per_epoch * self.workers

    def __iter__(self):
        info = get_worker_info()
        worker, n = (info.id, info.num_workers) if info else (0, 1)
        if n != self.workers:
            raise RuntimeError(f'ShardStream was built for {self.workers} workers but the DataLoader has {n}')
        # Resuming after k batches, DataLoader's round robin starts at worker 0 while the next
        # batch is due from worker k % n: rotate which part each worker plays.
        logical = (worker + self.resume_batches) % n
        slot = P.slot_index(self.rank, self.world_size, logical, n)
        start = P.worker_batches_done(self.resume_batches, n, logical) * self.batch_size
        seq = P.mix_sequence(self.plan, self.seed, self.epoch, slot)
        pos = P.source_positions(self.plan, self.seed, self.epoch, slot, start)
        streams = [source_stream(s, self.cfg, self.seed, slot, self.slots, pos[s.name]) for s in self.sources]
        yield from self._batches(seq[start:], streams, slot, start)

    def _batches(self, seq: np.ndarray, streams, slot: int, start: int):
        counter, last_good, batch, names = CorruptCounter(self.cfg), None, [], []
        for offset, label in enumerate(seq):
            raw = next(streams[label])
            # Augmentation randomness as a function of the sample's place: a resumed run
            # draws exactly the crops and ops the uninterrupted run drew.
            P.seed_global_rngs(self.seed, self.epoch, slot, start + offset)
            try:
                sample = decode_sample(raw, self.transform, self.decode_min_side)
                counter.ok()
                last_good = sample
            except BadImage as exc:
                counter.failed(raw['__key__'], str(exc))
                sample = None  # replaced below: every rank must yield the same number of samples
            batch.append(sample)
            names.append(self.sources[label].name)
            if len(batch) == self.batch_size:
                fill = last_good or next((s for s in batch if s is not None), None)
                if fill is None:
                    raise DataFault('a whole batch failed to decode; run `python -m shards verify`')
                out = collate([s if s is not None else fill for s in batch], names)
                out['corrupt'] = sum(s is None for s in batch)  # replaced samples: a metric of the run
                yield self.batch_transform(out) if self.batch_transform else out
                batch, names = [], []

    def expected_per_source(self, epoch: int, batches_done: int) -> Dict[str, int]:
        """Samples of each source this rank has consumed after ``batches_done`` batches of ``epoch``."""
        total = Counter()
        for logical in range(self.workers):
            slot = P.slot_index(self.rank, self.world_size, logical, self.workers)
            k = P.worker_batches_done(batches_done, self.workers, logical) * self.batch_size
            seq = P.mix_sequence(self.plan, self.seed, epoch, slot)[:k]
            total.update(self.plan.sources[i] for i in seq)
        return {s: total.get(s, 0) for s in self.plan.sources}


def content_digest(src) -> str:
    """One hash of a source's shard names and their sha256 in the index: what a resume continues on."""
    import hashlib
    h = hashlib.sha256()
    for name, sha in zip(src.names, src.sha256):
        h.update(f'{name}={sha}\n'.encode())
    return h.hexdigest()[:16]


STOP_SIGNALS = ('SIGINT', 'SIGTERM', 'SIGUSR1', 'SIGUSR2', 'SIGHUP')   # what a scheduler or a terminal sends


def leave_stopping_to_the_parent(worker_id: int) -> None:
    """A scheduler's or a terminal's stop signal reaches the whole process group: the workers ignore
    it, so the training process decides when to stop (after a checkpoint) and then ends them, instead
    of each worker dying with a traceback and the loader failing mid-step."""
    import signal
    for name in STOP_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    sys.excepthook = _quiet_when_the_parent_hangs_up(sys.excepthook)


def _quiet_when_the_parent_hangs_up(report):
    """A worker hands each batch's tensors to the parent through multiprocessing's fd-sharing
    thread; a parent stopped by Ctrl-C mid-handover closes that connection, and the thread
    reports the reset through ``sys.excepthook`` as a traceback on the user's console. The parent
    has stopped and will end this worker: that one error is expected, every other one is reported."""
    import threading
    from multiprocessing import resource_sharer

    def excepthook(kind, value, tb):
        sharer = getattr(resource_sharer._resource_sharer, '_thread', None)
        if issubclass(kind, (ConnectionError, EOFError)) and threading.current_thread() is sharer:
            return
        report(kind, value, tb)
    return excepthook


class ResumableLoader:
    """A DataLoader over a ShardStream that knows exactly where it is (``state_dict``): the one
    owner of the data cursor (epoch, batches into it, samples per source)."""
    state_version = STATE_VERSION

    def __init__(self, dataset: ShardStream, num_workers: int = 0, pin_memory: bool = False,
                 prefetch_factor: Optional[int] = None, multiprocessing_context=None):
        if dataset.workers != max(1, num_workers):
            raise BadValue(f'dataset built for {dataset.workers} workers, loader given {num_workers}')
        self.dataset, self.num_workers = dataset, num_workers
        if multiprocessing_context is None and num_workers > 0:
            from .storage import worker_start_method
            multiprocessing_context = worker_start_method([u for s in dataset.sources for u in s.urls])
        self.loader_kwargs = dict(batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                                  persistent_workers=False, multiprocessing_context=multiprocessing_context)
        if num_workers > 0:
            self.loader_kwargs.update(prefetch_factor=prefetch_factor or 2, worker_init_fn=leave_stopping_to_the_parent)
        self.batches_in_epoch = 0
        self.per_source: Counter = Counter()

    @property
    def epoch(self) -> int:
        return self.dataset.epoch

    def __len__(self) -> int:
        return self.dataset.batches_per_epoch()

    def __iter__(self):
        """The rest of the current epoch; the next call continues with the following epoch."""
        self.dataset.resume_batches = self.batches_in_epoch
        # Its own generator: creating the iterator must not draw from the global RNG the
        # training step uses (a resumed run creates iterators at other moments).
        generator = torch.Generator().manual_seed(self.dataset.seed)
        for batch in DataLoader(self.dataset, generator=generator, **self.loader_kwargs):
            self.batches_in_epoch += 1
            self.per_source.update(batch['source'])
            yield batch
        self.dataset.epoch += 1
        self.batches_in_epoch, self.per_source = 0, Counter()

    def state_dict(self) -> dict:
        d = self.dataset
        return dict(seed=d.seed, world_size=d.world_size, num_workers=d.workers,
                    rank=d.rank, batch_size=d.batch_size, sources=list(d.plan.sources),
                    exclusions=d.exclusions.id if d.exclusions else None,
                    epoch=d.epoch, batches_in_epoch=self.batches_in_epoch,
                    samples_per_source={s: self.per_source.get(s, 0) for s in d.plan.sources},
                    content={src.name: content_digest(src) for src in d.sources})

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` left off: same seed, batch size, sources, rank, world size and
        workers (the cursor is a position in *this* partition of the data), else an error naming
        the difference. Its version is checked by the checkpoint that carries it."""
        d = self.dataset
        for name, ours in (('seed', d.seed), ('batch_size', d.batch_size),
                           ('sources', list(d.plan.sources)), ('rank', d.rank), ('world_size', d.world_size),
                           ('num_workers', d.workers)):
            if state[name] != ours:
                raise BadValue(f'loader state has {name}={state[name]!r}, this run has {ours!r}')
        ours = d.exclusions.id if d.exclusions else None
        if state.get('exclusions') != ours:  # states from before exclusion lists have none
            raise BadValue(f'loader state was saved with exclusion list {state.get("exclusions")!r}, this run '
                             f'has {ours!r} (data.stream.exclude): the samples, and so the position, differ')
        for src in d.sources:   # states from before content digests have none
            saved = state.get('content', {}).get(src.name)
            if saved is not None and saved != content_digest(src):
                raise BadValue(f'source {src.name!r}: its shards hold other bytes than when this checkpoint was '
                                 f'written (content {saved} then, {content_digest(src)} now; same names and counts): '
                                 'the source was rebuilt, so the position would continue on other images. Resume '
                                 'on the shards it was written for, or start a new run from its weights '
                                 '(init.checkpoint)')
        expected = d.expected_per_source(state['epoch'], state['batches_in_epoch'])
        if expected != state['samples_per_source']:
            raise BadValue(f'loader state counts {state["samples_per_source"]} samples per source, but the '
                             f'current sources would give {expected}: the shards or weights changed')
        d.epoch, self.batches_in_epoch = state['epoch'], state['batches_in_epoch']
        self.per_source = Counter(state['samples_per_source'])


class EvalShards(IterableDataset):
    """Every sample exactly once, for evaluation: shard ``i`` goes to rank ``i % world_size`` (then
    to its workers); the last batch may be short and ranks may differ in batch count."""

    def __init__(self, sources: Sequence[SourceSpec], transform: Callable, rank: int, world_size: int,
                 batch_size: int, batch_transform: Optional[Callable[[dict], dict]] = None,
                 retry=None):
        super().__init__()
        from .storage import DEFAULT_RETRY
        self.retry = retry or DEFAULT_RETRY
        self.resolved = [resolve_source(s, self.retry) for s in sources]
        shards = [(src.name, url, n) for src in self.resolved for url, n in zip(src.urls, src.counts)]
        self.shards = shards[rank::world_size]
        self.transform, self.batch_size, self.batch_transform = transform, batch_size, batch_transform

    def __iter__(self):
        info = get_worker_info()
        worker, n = (info.id, info.num_workers) if info else (0, 1)
        batch, names = [], []
        for name, url, count in self.shards[worker::n]:
            for raw in iter_shard_samples(url, 0, count, self.retry):
                if raw.get('__missing__'):
                    log.warning('evaluation: %s is short of samples (truncated)', url)
                    continue
                try:
                    batch.append(decode_sample(raw, self.transform, None))
                    names.append(name)
                except BadImage as exc:
                    log.warning('evaluation skips %s: %s', raw.get('__key__'), exc)
                if len(batch) == self.batch_size:
                    yield self._out(batch, names)
                    batch, names = [], []
        if batch:
            yield self._out(batch, names)

    def _out(self, batch, names):
        out = collate(batch, names)
        return self.batch_transform(out) if self.batch_transform else out
