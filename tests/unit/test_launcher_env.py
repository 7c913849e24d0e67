"""One reader of the launcher's environment (shards.common.launcher) for training, evaluation and
labeling: torchrun, the deepspeed launcher, a Slurm step, a plain process."""
import pytest

from shards.common.launcher import export_for_torch, read_dist_env


def test_torchrun_variables_give_rank_world_and_local_rank():
    env = read_dist_env({'RANK': '5', 'WORLD_SIZE': '8', 'LOCAL_RANK': '1', 'LOCAL_WORLD_SIZE': '4'})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size, env.launcher) == (5, 8, 1, 4, 'torch')


def test_the_deepspeed_launchers_local_rank_argument_fills_in_and_must_agree():
    environ = {'RANK': '1', 'WORLD_SIZE': '2', 'LOCAL_SIZE': '2'}
    assert read_dist_env(environ, local_rank_arg=1).local_rank == 1
    assert read_dist_env({**environ, 'LOCAL_RANK': '1'}, local_rank_arg=1).local_rank == 1
    with pytest.raises(ValueError, match='--local_rank=0 disagrees with LOCAL_RANK=1'):
        read_dist_env({**environ, 'LOCAL_RANK': '1'}, local_rank_arg=0)


def test_a_slurm_step_gives_each_task_its_place():
    step = {'SLURM_PROCID': '6', 'SLURM_STEP_NUM_TASKS': '8', 'SLURM_LOCALID': '2', 'SLURM_NTASKS_PER_NODE': '4',
            'SLURM_NTASKS': '16'}
    env = read_dist_env(step)
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size, env.launcher) == (6, 8, 2, 4, 'slurm')


def test_a_command_run_directly_in_a_slurm_batch_script_is_one_process_not_task_0_of_n():
    # The batch shell carries the allocation's task count and SLURM_PROCID=0 but is no job step:
    # believing them would make a labeling job label 1/N of its shards and stop, exit 0.
    batch = {'SLURM_PROCID': '0', 'SLURM_NTASKS': '4', 'SLURM_LOCALID': '0', 'SLURM_JOB_ID': '77'}
    env = read_dist_env(batch)
    assert (env.rank, env.world_size, env.launcher) == (0, 1, 'none')


def test_torchrun_inside_a_slurm_step_is_believed_over_the_step():
    env = read_dist_env({'RANK': '3', 'WORLD_SIZE': '4', 'LOCAL_RANK': '3', 'SLURM_PROCID': '0',
                         'SLURM_STEP_NUM_TASKS': '1', 'SLURM_LOCALID': '0'})
    assert (env.rank, env.world_size, env.local_rank, env.launcher) == (3, 4, 3, 'torch')


def test_bad_values_name_the_variable():
    with pytest.raises(ValueError, match="RANK='x' is not an integer"):
        read_dist_env({'RANK': 'x', 'WORLD_SIZE': '2'})
    with pytest.raises(ValueError, match='SLURM_PROCID=4 is outside SLURM_STEP_NUM_TASKS=4'):
        read_dist_env({'SLURM_PROCID': '4', 'SLURM_STEP_NUM_TASKS': '4'})


def test_a_plain_process_is_rank_0_of_1_and_exports_what_torch_reads():
    env = read_dist_env({})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (0, 1, 0, 1)
    environ = {}
    export_for_torch(read_dist_env({'SLURM_PROCID': '2', 'SLURM_STEP_NUM_TASKS': '4', 'SLURM_LOCALID': '0'}), environ)
    assert environ == {'RANK': '2', 'WORLD_SIZE': '4', 'LOCAL_RANK': '0'}


def test_each_process_gets_its_gpu_or_the_only_one_it_sees():
    from shards.common.launcher import gpu_index
    assert gpu_index(3, 8) == 3
    assert gpu_index(3, 1) == 0            # srun --gpus-per-task=1: every task sees its own GPU as 0
    with pytest.raises(ValueError, match='local rank 4 but 4 GPUs visible'):
        gpu_index(4, 4)
