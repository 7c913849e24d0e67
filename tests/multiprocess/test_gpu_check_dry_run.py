"""bench/gpu_check.sh --cpu-dry-run: the GPU check's every step on tiny shapes, so it cannot rot."""
import json
import os
import subprocess
import sys

import pytest

from helpers import REPO_ROOT

pytestmark = pytest.mark.multiprocess


def test_gpu_check_dry_run_passes_every_step():
    proc = subprocess.run(['bash', 'bench/gpu_check.sh', '--cpu-dry-run'], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary['ok'] and set(summary['steps']) == {'a_gpu_tests', 'b_train_throughput', 'c_lk_conv',
                                                       'd_label_job'}
    rows = summary['steps']['b_train_throughput']['result']['rows']
    assert all(row[k]['images_per_s'] > 0 for row in rows for k in ('ours', 'bare_xl', 'convnext'))
    assert summary['steps']['d_label_job']['result']['ours'] > 0


def test_gpu_check_refuses_unknown_arguments():
    proc = subprocess.run(['bash', 'bench/gpu_check.sh', '--dryrun'], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and 'unknown argument --dryrun' in proc.stderr


def test_gpu_check_refuses_unknown_steps():
    proc = subprocess.run(['bash', 'bench/gpu_check.sh', '--cpu-dry-run', '--only=ax'], cwd=REPO_ROOT,
                          capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 2 and "--only takes letters among abcd, got 'ax'" in proc.stderr
