"""A labeling job knows how many processes it is one of from the launcher alone (shards.common.launcher)."""
import json
import os
import subprocess
import sys

import pytest
from labeling_fixtures import job_config, timm_teacher_spec, tiny_timm_weights, toy_shards

pytestmark = pytest.mark.multiprocess
NO_LAUNCHER = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_STEP_NUM_TASKS')


def label(config, **variables) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in NO_LAUNCHER}
    done = subprocess.run([sys.executable, '-m', 'labeling', 'run', '--config', str(config), '--no-progress'],
                          env={**environ, **variables}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_job_run_directly_in_a_slurm_batch_script_labels_every_shard(tmp_path):
    shards = toy_shards(tmp_path, n=16, per_shard=4)
    teacher = timm_teacher_spec(tiny_timm_weights(tmp_path / 'w.safetensors'))
    cfg = job_config(tmp_path, shards, str(tmp_path / 'store'), [teacher])
    summary = label(cfg, SLURM_JOB_ID='77', SLURM_PROCID='0', SLURM_NTASKS='4', SLURM_LOCALID='0')
    assert (summary['job_index'], summary['num_jobs'], summary['committed']) == (0, 1, 4)


def test_a_slurm_step_task_labels_its_share(tmp_path):
    shards = toy_shards(tmp_path, n=16, per_shard=4)
    teacher = timm_teacher_spec(tiny_timm_weights(tmp_path / 'w.safetensors'))
    cfg = job_config(tmp_path, shards, str(tmp_path / 'store'), [teacher])
    summary = label(cfg, SLURM_JOB_ID='77', SLURM_PROCID='1', SLURM_NTASKS='4', SLURM_STEP_NUM_TASKS='2',
                    SLURM_LOCALID='1')
    assert (summary['job_index'], summary['num_jobs'], summary['committed']) == (1, 2, 2)
