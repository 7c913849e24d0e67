"""The one reader of the launcher's environment: rank, world size and local rank of this process.

Launchers, in the order they are believed:
- torchrun and the deepspeed launcher: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (the deepspeed
  launcher also passes ``--local_rank``: the argument is used when ``LOCAL_RANK`` is absent, and
  the two disagreeing is an error);
- a Slurm job step (``srun``, one process per task): ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``,
  ``SLURM_LOCALID``. Only inside a step: a batch script also carries ``SLURM_PROCID=0`` and the
  allocation's ``SLURM_NTASKS``, and a command run there directly is one process, not task 0 of N;
- none: one process (rank 0 of 1).
Everything else takes rank and world size as arguments.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

from .errors import BadValue

# Processes on this node, by launcher: torchrun, the deepspeed launcher, Slurm.
LOCAL_WORLD_SIZE_VARIABLES = ('LOCAL_WORLD_SIZE', 'LOCAL_SIZE', 'SLURM_NTASKS_PER_NODE')
SLURM_STEP_MARKER = 'SLURM_STEP_NUM_TASKS'


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: Optional[int] = None   # processes on this node, when the launcher says
    launcher: str = 'none'                   # 'torch' (torchrun / deepspeed), 'slurm' or 'none'

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _integer(environ: Mapping[str, str], name: str) -> Optional[int]:
    value = environ.get(name)
    if value is None or value == '':
        return None
    try:
        return int(value)
    except ValueError:
        raise BadValue(f'environment variable {name}={value!r} is not an integer') from None


def read_dist_env(environ: Mapping[str, str] = os.environ, local_rank_arg: Optional[int] = None) -> DistEnv:
    """This process's place in the launch (module docstring); world size 1 when nothing launched it."""
    if environ.get('RANK') or environ.get('WORLD_SIZE'):
        launcher, names = 'torch', ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')
    elif environ.get(SLURM_STEP_MARKER):
        launcher, names = 'slurm', ('SLURM_PROCID', SLURM_STEP_MARKER, 'SLURM_LOCALID')
    else:
        launcher, names = 'none', ()
    rank, world_size, local_rank = ((_integer(environ, n) for n in names) if names else (None, None, None))
    rank, world_size = rank or 0, world_size or 1
    if local_rank is not None and local_rank_arg is not None and local_rank != local_rank_arg:
        raise BadValue(f'--local_rank={local_rank_arg} disagrees with {names[2]}={local_rank}: '
                         'launch with one launcher (torchrun, deepspeed or srun), not two')
    local_rank = local_rank if local_rank is not None else (local_rank_arg or 0)
    if not 0 <= rank < world_size:
        raise BadValue(f'{names[0]}={rank} is outside {names[1]}={world_size}')
    local_world_size = next((_integer(environ, k) for k in LOCAL_WORLD_SIZE_VARIABLES if environ.get(k)), None)
    if world_size == 1:
        local_world_size = 1
    return DistEnv(rank, world_size, local_rank, local_world_size, launcher)


def export_for_torch(env: DistEnv, environ=os.environ) -> None:
    """``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set from ``env`` where the launcher did not set them
    (a Slurm step, a plain process): what torch.distributed's env:// initialisation reads."""
    environ.setdefault('RANK', str(env.rank))
    environ.setdefault('WORLD_SIZE', str(env.world_size))
    environ.setdefault('LOCAL_RANK', str(env.local_rank))


def gpu_index(local_rank: int, visible_gpus: int) -> int:
    """The GPU of this process: its local rank, or the only GPU it sees (a launcher that binds one
    GPU per task, as ``srun --gpus-per-task=1`` does, leaves each process GPU 0)."""
    if visible_gpus == 1:
        return 0
    if local_rank >= visible_gpus:
        raise BadValue(f'local rank {local_rank} but {visible_gpus} GPUs visible: launch at most one process per GPU '
                         '(or bind one GPU to each, e.g. srun --gpus-per-task=1)')
    return local_rank
