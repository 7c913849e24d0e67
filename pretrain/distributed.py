"""Process-group set-up for ``pretrain``: the launcher's environment as ``shards.common.launcher``
reads it (its one reader), the device, DeepSpeed's initialisation.

Everything else takes ``rank`` and ``world_size`` as arguments. Works under the deepspeed
launcher, torchrun, a Slurm step (``srun``, one process per task) and as a single plain process.
"""
from __future__ import annotations

import os
import socket
from typing import Callable, Mapping, Optional, TypeVar

import torch

from shards.common.errors import BadValue
from shards.common.launcher import DistEnv, export_for_torch, gpu_index, read_dist_env  # noqa: F401  (re-exported)

T = TypeVar('T')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def device_for(env: DistEnv) -> torch.device:
    """One accelerator per local rank where there is one; the CPU otherwise."""
    if torch.cuda.is_available():
        device = torch.device('cuda', gpu_index(env.local_rank, torch.cuda.device_count()))
        torch.cuda.set_device(device)
        return device
    return torch.device('cpu')


def import_deepspeed():
    """DeepSpeed without its per-process noise: on a machine where torch sees no GPU it would pick the
    CPU accelerator anyway, with a warning on every rank and every command (the trainer's start-up
    summary names the device instead); the FutureWarning of its own all_gather_into_tensor call is
    nothing a user can act on. A DS_ACCELERATOR the user set is left alone."""
    import warnings
    if 'DS_ACCELERATOR' not in os.environ and not torch.cuda.is_available():
        os.environ['DS_ACCELERATOR'] = 'cpu'
    warnings.filterwarnings('ignore', message=r'`torch\.distributed\.all_gather_into_tensor` is deprecated',
                            category=FutureWarning)
    import deepspeed
    return deepspeed


def init_distributed(local_rank_arg: Optional[int] = None) -> tuple[DistEnv, torch.device]:
    """Initialise torch.distributed through DeepSpeed: nccl on GPUs, gloo on CPUs."""
    deepspeed = import_deepspeed()

    env = read_dist_env(local_rank_arg=local_rank_arg)
    # A plain process or a Slurm step: without RANK/WORLD_SIZE/LOCAL_RANK DeepSpeed looks for MPI
    # (mpi4py) and fails.
    export_for_torch(env)
    if env.world_size == 1:
        os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
        os.environ.setdefault('MASTER_PORT', str(_free_port()))
    elif not (os.environ.get('MASTER_ADDR') and os.environ.get('MASTER_PORT')):
        raise BadValue(f'{env.world_size} processes from {env.launcher} but no MASTER_ADDR/MASTER_PORT: set both '
                         '(under Slurm: the first host of `scontrol show hostnames $SLURM_JOB_NODELIST` and a free port)')
    device = device_for(env)
    if device.type == 'cpu':
        # The shared-memory CPU collective op is JIT-compiled (~40 s) on first use; plain
        # gloo is what CPU runs (tests, the demo) need.
        deepspeed.ops.__compatible_ops__['deepspeed_shm_comm'] = False
    deepspeed.init_distributed(dist_backend='nccl' if device.type == 'cuda' else 'gloo')
    from .models import lk_choice
    lk_choice.set_agreement(main_rank_decides)
    return env, device


def main_rank_decides(decide: Callable[[], T]) -> T:
    """Run ``decide`` on rank 0 and hand its result to every rank (a broadcast every rank must reach:
    the large-kernel decision is asked for at a layer shape's first forward, which ranks run together).
    An exception on rank 0 is raised on every rank, so none waits forever."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return decide()
    box = [None]
    if dist.get_rank() == 0:
        try:
            box = [('ok', decide())]
        except Exception as exc:  # noqa: BLE001  handed to every rank, then raised there
            box = [('error', exc if _picklable(exc) else RuntimeError(f'{type(exc).__name__}: {exc}'))]
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == 'error':   # the same exception: a user error stays one line on every rank
        raise value
    return value


def _picklable(exc: Exception) -> bool:
    import pickle
    try:
        pickle.loads(pickle.dumps(exc))
        return True
    except Exception:  # noqa: BLE001  an exception class whose arguments do not round-trip
        return False


def tell_launcher(message: str, environ: Mapping[str, str] = os.environ) -> None:
    """Put a failing rank's one-line reason where torchrun's failure summary reads it ("Root
    Cause ... traceback :"), so it is not just a pointer to the elastic docs under 40 lines."""
    path = environ.get('TORCHELASTIC_ERROR_FILE')
    if not path:
        return
    import json
    import time
    try:
        with open(path, 'w') as f:
            json.dump({'message': message, 'timestamp': int(time.time())}, f)
    except OSError:
        pass   # the launcher's summary is a convenience; the reason is on stderr already
