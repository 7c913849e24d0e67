"""DeepSpeed ZeRO really trains with two CPU processes on gloo, under each launcher."""
import json
import sys

import pytest

pytestmark = pytest.mark.multiprocess

SMOKE = ['pretrain/smoke.py', '--steps', '6']


def read_ranks(out_dir, world_size):
    return [json.loads((out_dir / f'rank{r}.json').read_text()) for r in range(world_size)]


def assert_trained_in_sync(results, zero_stage, world_size):
    assert [r['rank'] for r in results] == list(range(world_size))
    for r in results:
        assert r['world_size'] == world_size and r['zero_stage'] == zero_stage
        assert r['losses'][-1] < r['losses'][0], f'rank {r["rank"]} did not learn: {r["losses"]}'
    # Every rank ends with the same weights: the optimizer step really was data-parallel.
    assert len({round(r['fingerprint'], 6) for r in results}) == 1


@pytest.mark.parametrize('zero_stage', [1, 3])
def test_torchrun_two_processes_train_in_sync(zero_stage, tmp_path, free_port, launch):
    launch(['torchrun', '--nproc_per_node', '2', '--master_port', str(free_port),
            *SMOKE, '--zero-stage', str(zero_stage), '--out', str(tmp_path)])
    assert_trained_in_sync(read_ranks(tmp_path, 2), zero_stage, 2)


def test_deepspeed_launcher_two_processes_train_in_sync(tmp_path, free_port, launch):
    # The launcher appends --local_rank=N to the script's arguments.
    launch(['deepspeed', '--num_gpus', '2', '--master_port', str(free_port),
            *SMOKE, '--zero-stage', '2', '--out', str(tmp_path)])
    assert_trained_in_sync(read_ranks(tmp_path, 2), 2, 2)


def test_plain_process_runs_as_world_size_one(tmp_path, launch):
    launch([sys.executable, *SMOKE, '--zero-stage', '2', '--out', str(tmp_path)])
    assert_trained_in_sync(read_ranks(tmp_path, 1), 2, 1)
