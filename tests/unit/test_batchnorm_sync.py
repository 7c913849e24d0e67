"""BN running statistics: one set over all ranks before evaluation and checkpoints (2 gloo processes)."""
import os

import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pretrain.batchnorm import average_running_stats


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(2)))
    model[1].running_mean.fill_(float(rank))
    model[1].running_var.fill_(1.0 + 2 * rank)
    model[2][0].running_mean.fill_(10.0 * rank)
    average_running_stats(model)
    out[rank] = [model[1].running_mean.tolist(), model[1].running_var.tolist(), model[2][0].running_mean.tolist()]
    dist.destroy_process_group()


def test_running_stats_are_averaged_over_ranks(free_port):
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(free_port, out), nprocs=2)
    assert out[0] == out[1] == [[0.5] * 4, [2.0] * 4, [5.0] * 2]


def test_running_stats_untouched_without_a_process_group():
    bn = nn.BatchNorm2d(3)
    bn.running_mean.fill_(3.0)
    average_running_stats(bn)
    assert bn.running_mean.tolist() == [3.0] * 3
