"""The data order as pure functions of (seed, epoch, rank, world size, worker, workers).

A *slot* is one (rank, worker) pair: ``slot = rank * workers + worker``. Every epoch each
source's shards are permuted, their samples concatenated, and slot ``j`` takes the
contiguous range ``[j * n, (j + 1) * n)`` with ``n = samples // slots``: every slot gets
exactly the same count (so no rank waits on another), and no sample is read twice.
A source stream runs through its own epochs ("source epochs") forever; a training epoch
takes ``per_slot[s]`` samples of each source, interleaved in a seeded random order.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .common.errors import BadValue


def rng(*parts) -> np.random.Generator:
    """A generator seeded by the given parts (strings hashed stably, not with ``hash``)."""
    return np.random.default_rng([p if isinstance(p, int) else zlib.crc32(str(p).encode()) for p in parts])


def slot_index(rank: int, world_size: int, worker: int, workers: int) -> int:
    if not (0 <= rank < world_size and 0 <= worker < workers):
        raise ValueError(f'rank {rank}/{world_size}, worker {worker}/{workers} out of range')
    return rank * workers + worker


def shard_order(num_shards: int, seed: int, source: str, source_epoch: int) -> np.ndarray:
    return rng(seed, 'shards', source, source_epoch).permutation(num_shards)


def slot_shard_ranges(counts: Sequence[int], order: Sequence[int], slots: int,
                      slot: int) -> List[Tuple[int, int, int]]:
    """(shard, first sample, how many) that slot ``slot`` reads in one source epoch."""
    per_slot = sum(counts) // slots
    start, stop = slot * per_slot, (slot + 1) * per_slot
    out, pos = [], 0
    for shard in order:
        n = counts[shard]
        lo, hi = max(start, pos), min(stop, pos + n)
        if lo < hi:
            out.append((int(shard), lo - pos, hi - lo))
        pos += n
        if pos >= stop:
            break
    return out


@dataclass(frozen=True)
class MixPlan:
    """How many samples of each source one slot takes per training epoch."""
    sources: Tuple[str, ...]
    per_slot: Tuple[int, ...]          # samples of each source per slot per epoch
    source_epoch_len: Tuple[int, ...]  # samples of each source per slot per source epoch
    batch_size: int

    @property
    def batches_per_epoch(self) -> int:  # per slot, i.e. per DataLoader worker
        return sum(self.per_slot) // self.batch_size


class EpochTooShort(BadValue):
    """An epoch that gives a rank x worker slot less than one batch: nothing to train on."""

    def __init__(self, slots: int, samples: int, batch_size: int):
        self.slots, self.samples, self.batch_size = slots, samples, batch_size
        super().__init__(f'an epoch gives each of the {slots} rank x worker slots only {samples} samples, fewer than '
                         f'one batch of {batch_size}: use a batch of {max(samples, 1)} or less, fewer workers or '
                         f'ranks, or more samples')


def mix_plan(sources: Sequence[str], sizes: Sequence[int], weights: Optional[Sequence[float]],
             slots: int, batch_size: int) -> MixPlan:
    """Default weights are the source sizes: one training epoch reads each sample once."""
    natural = [n // slots for n in sizes]
    if weights is None:
        per_slot = natural
    else:
        total, wsum = sum(natural), float(sum(weights))
        per_slot = [int(round(total * w / wsum)) for w in weights]
    if sum(per_slot) < batch_size:
        raise EpochTooShort(slots, sum(per_slot), batch_size)
    return MixPlan(tuple(sources), tuple(per_slot), tuple(natural), batch_size)


def mix_sequence(plan: MixPlan, seed: int, epoch: int, slot: int) -> np.ndarray:
    """Which source (by position in ``plan.sources``) each sample of this slot's epoch comes from."""
    labels = np.repeat(np.arange(len(plan.sources)), plan.per_slot)
    labels = rng(seed, 'mix', epoch, slot).permutation(labels)
    return labels[:plan.batches_per_epoch * plan.batch_size]


def worker_batches_done(batches_done: int, workers: int, logical_worker: int) -> int:
    """Batches a worker had delivered when its rank had consumed ``batches_done`` (round robin)."""
    return batches_done // workers + (1 if logical_worker < batches_done % workers else 0)


def source_positions(plan: MixPlan, seed: int, epoch: int, slot: int, samples_done: int) -> Dict[str, int]:
    """Position of each source stream after ``samples_done`` samples of this slot's epoch."""
    seq = mix_sequence(plan, seed, epoch, slot)[:samples_done]
    done = np.bincount(seq, minlength=len(plan.sources))
    return {s: epoch * plan.per_slot[i] + int(done[i]) for i, s in enumerate(plan.sources)}


def seed_global_rngs(*parts: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (what transforms draw from) from ``parts``."""
    import random

    import torch

    value = int(rng(*parts).integers(2 ** 63))
    random.seed(value)
    np.random.seed(value % 2 ** 32)
    # The CPU generator only: torch.manual_seed also queues CUDA seeding, ~1 ms a call.
    torch.default_generator.manual_seed(value)
