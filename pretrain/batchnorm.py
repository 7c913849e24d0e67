"""BatchNorm across ranks: whose images a BN layer's statistics cover, and one set of running stats.

``model.sync_bn``:

- ``none``: each rank normalizes over its own micro-batch (the official RepLKNet trainer, at 64
  images per GPU). No collective in forward or backward.
- ``node``: SyncBatchNorm within each node (a process group per node): 8 GPUs x 32 images
  normalize over 256, and the ~180 small collectives per forward/backward stay on NVLink
  instead of crossing the network, where each would be latency-bound.
- ``global``: SyncBatchNorm over every rank (the most exact, the slowest across nodes).

DeepSpeed never broadcasts buffers, so with ``none`` and ``node`` the running statistics drift
apart per rank (and per node); :func:`average_running_stats` averages them over all ranks
before every evaluation and checkpoint, so every rank evaluates and saves the same model.
SyncBatchNorm needs CUDA; on CPU the BN stays per rank (running stats still averaged).
"""
from __future__ import annotations

import logging
from typing import List, Optional

import torch
import torch.distributed as dist
from torch import nn

from shards.common.errors import BadValue

log = logging.getLogger(__name__)


def node_rank_lists(world_size: int, local_world_size: int) -> List[List[int]]:
    """Ranks of each node: launchers number a node's processes contiguously."""
    if local_world_size < 1 or world_size % local_world_size:
        raise BadValue(f'model.sync_bn=node: world size {world_size} is not a multiple of the '
                         f'{local_world_size} processes per node')
    return [list(range(n, n + local_world_size)) for n in range(0, world_size, local_world_size)]


def sync_group(mode: str, rank: int, world_size: int, local_world_size: int):
    """The process group of this rank's SyncBatchNorm (``None``: the default, all ranks).

    Every rank creates every node's group, in the same order, as ``new_group`` requires."""
    if mode == 'global':
        return None
    mine = None
    for ranks in node_rank_lists(world_size, local_world_size):
        group = dist.new_group(ranks)
        if rank in ranks:
            mine = group
    return mine


def apply_sync_bn(model: nn.Module, mode: str, device: torch.device, rank: int, world_size: int,
                  local_world_size: Optional[int]) -> nn.Module:
    if mode == 'none' or world_size == 1:
        return model
    if mode == 'node' and local_world_size is None:
        raise BadValue('model.sync_bn=node: the launcher did not say how many processes run per node '
                         '(LOCAL_WORLD_SIZE, LOCAL_SIZE or SLURM_NTASKS_PER_NODE); set one, or use none/global')
    if mode == 'node' and local_world_size == 1:
        return model  # one process per node: per-rank BN is node BN
    if device.type != 'cuda':
        log.warning('model.sync_bn=%s needs CUDA (SyncBatchNorm); on %s each rank normalizes its own batch '
                    'and running statistics are averaged before evaluation and checkpoints', mode, device.type)
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model, sync_group(mode, rank, world_size, local_world_size))


def running_stat_buffers(model: nn.Module) -> List[torch.Tensor]:
    return [buf for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for buf in (m.running_mean, m.running_var) if buf is not None]


@torch.no_grad()
def average_running_stats(model: nn.Module, group: Optional[object] = None) -> None:
    """Running mean and variance averaged over ranks (one flat all-reduce; a no-op alone)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return
    buffers = running_stat_buffers(model)
    if not buffers:
        return
    flat = torch.cat([b.float().flatten() for b in buffers])
    dist.all_reduce(flat, group=group)
    flat /= dist.get_world_size(group)
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()
