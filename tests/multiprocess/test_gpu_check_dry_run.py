"""bench/gpu_check.sh --cpu-dry-run: the GPU check's every step on tiny shapes, so it cannot rot."""
import json
import os
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

pytestmark = pytest.mark.multiprocess


def test_gpu_check_dry_run_passes_every_step_and_auto_runs_triton_from_the_cache_it_wrote(tmp_path):
    out = tmp_path / 'out'
    proc = subprocess.run(['bash', 'bench/gpu_check.sh', '--cpu-dry-run', f'--out={out}'], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary['ok'] and list(summary['steps']) == [
        '1_lk_layers_xl', '2_xl_step_native_vs_auto', '3_trainer_vs_bare_vs_convnext', '4_label_job', '5_gpu_tests',
        '6_lk_layers_31b', '7_xl_step_compiled_vs_eager']
    full = json.loads((out / 'gpu_check.json').read_text())['steps']
    # step 1 wrote the decision cache into --out; step 2's 'auto' ran Triton from it on every layer
    cache = list((out / 'cache' / 'lk_conv').glob('*.json'))
    assert len(cache) == 1 and set(json.loads(cache[0].read_text())['shapes']) == {
        'float32,channels_last,8,7,8,8', 'float32,channels_last,16,5,4,4'}
    assert set(full['2_xl_step_native_vs_auto']['auto_ran'].values()) <= {'direct', 'toeplitz'}
    rows = json.loads((out / 'gpu_train.json').read_text())['rows']
    assert all(row[k]['images_per_s'] > 0 for row in rows for k in ('ours', 'bare_xl', 'convnext'))
    assert full['4_label_job']['result']['ours'] > 0
    compiled = json.loads((out / 'compiled' / 'lk_conv_step.json').read_text())
    assert compiled['speedup_auto+inductor_over_auto'] > 0 and set(compiled['auto_ran'].values()) <= {'direct', 'toeplitz'}
    # what a device call brings back: at most 8 files, each step's table at most 2 KB
    assert len([p for p in out.rglob('*') if p.is_file()]) <= 8
    assert all(len(s.get('table', '')) <= 2000 for s in full.values())


def test_the_gpu_checks_steps_fit_nine_minutes_with_the_wheel_install_by_their_own_limits():
    import importlib.util
    spec = importlib.util.spec_from_file_location('gpu_check', REPO_ROOT / 'bench' / 'gpu_check.py')
    check = importlib.util.module_from_spec(spec)
    sys.modules['gpu_check'] = check   # its dataclasses look their module up
    spec.loader.exec_module(check)
    must_fit = [limit for step, limit in check.STEP_LIMITS.items() if step not in '7']   # 7: what is left
    assert sum(must_fit) <= 540 - 20   # 20 s for the wheel install (60 s at most)
    assert list(check.STEP_LIMITS) == ['1', '2', '3', '4', '5', '6', '7'] and check.IF_TIME_REMAINS == '67'


def test_a_step_without_time_left_is_skipped_and_says_so(tmp_path):
    import time
    proc = subprocess.run([sys.executable, 'bench/gpu_check.py', '--cpu-dry-run', '--only=4', '--out', str(tmp_path),
                           '--deadline', str(time.time() + 5)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and 'gpu_check: 4_label_job FAILED (0.0 s) skipped: no time left' in proc.stdout


def test_gpu_check_refuses_unknown_arguments():
    proc = subprocess.run(['bash', 'bench/gpu_check.sh', '--dryrun'], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and 'unknown argument --dryrun' in proc.stderr


def test_gpu_check_refuses_unknown_steps():
    proc = subprocess.run(['bash', 'bench/gpu_check.sh', '--cpu-dry-run', '--only=ax'], cwd=REPO_ROOT,
                          capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 2 and "--only takes digits among 1234567, got 'ax'" in proc.stderr
