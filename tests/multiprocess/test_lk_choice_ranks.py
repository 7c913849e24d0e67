"""Under a process group every rank runs the large-kernel algorithm rank 0 decided: two real processes
on gloo, each with its own (injected) timings and its own cache folder."""
import json
import os

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.multiprocess
TIMINGS = {0: dict(cudnn=9.0, direct=3.0, toeplitz=1.0), 1: dict(cudnn=1.0, direct=3.0, toeplitz=9.0)}


def one_rank(rank: int, port: int, root: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2', MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port), REPLK_CACHE_DIR=f'{root}/cache-{rank}', TRITON_INTERPRET='1')
    from pretrain.distributed import init_distributed
    from pretrain.models import lk_choice, lk_impl
    init_distributed()
    timed = []

    def measure(candidate, shape, batch):
        timed.append(candidate)
        return dict(total=TIMINGS[rank][candidate])
    lk_choice.can_measure = lambda device: True          # as on a GPU, with this rank's own timings
    lk_choice.measure_on = lambda device: measure
    conv = lk_impl.AutoDepthwiseConv2d(6, 5, False)
    out = conv(torch.randn(2, 6, 7, 7))
    error = None
    try:   # a failure on rank 0 reaches every rank instead of leaving them waiting
        from pretrain.distributed import main_rank_decides

        def fail():
            raise ValueError('no card')
        main_rank_decides(fail)
    except (ValueError, RuntimeError) as exc:
        error = str(exc)
    cache = f'{root}/cache-{rank}/lk_conv'
    with open(f'{root}/rank{rank}.json', 'w') as f:
        json.dump(dict(decisions=lk_choice.decisions(), timed=timed, finite=bool(torch.isfinite(out).all()),
                       cache_files=sorted(os.listdir(cache)) if os.path.isdir(cache) else [], error=error), f)
    import torch.distributed as dist
    dist.barrier()                 # neither rank leaves while the other still talks (gloo aborts otherwise)
    dist.destroy_process_group()

def test_every_rank_runs_the_algorithm_rank_0_measured_and_only_rank_0_measures(tmp_path, free_port):
    mp.spawn(one_rank, args=(free_port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1))
    assert r0['decisions'] == r1['decisions'] == {'float32,nchw,6,5,7,7': 'toeplitz'}
    assert r0['timed'] == ['cudnn', 'direct', 'toeplitz'] and r1['timed'] == []
    assert len(r0['cache_files']) == 1 and r1['cache_files'] == []
    assert r0['finite'] and r1['finite']
    assert r0['error'] == r1['error'] == 'no card'   # every rank raises rank 0's own error
