"""A labeling job killed at any moment resumes to the same store as an uninterrupted run."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from labeling_fixtures import job_config, timm_teacher_spec, tiny_timm_weights, toy_shards

from labeling.store import LabelStore
from labeling.tasks import TaskRegistry

pytestmark = pytest.mark.multiprocess


def parts(tmp, root):
    store = LabelStore(root, TaskRegistry.from_json(str(tmp / 'tasks.json')))
    return {s: r['sha256'] for s, r in store.manifest('toy', reload=True)['parts'].items()}


def run(config, env=None, **kw):
    return subprocess.Popen([sys.executable, '-m', 'labeling', 'run', '--config', str(config), '--no-progress'],
                            env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_killed_job_reruns_to_the_same_store(tmp_path):
    shards = toy_shards(tmp_path, n=48, per_shard=4)        # 12 shards
    teacher = [timm_teacher_spec(tiny_timm_weights(tmp_path / 'w.safetensors'))]
    clean_cfg = job_config(tmp_path, shards, str(tmp_path / 'clean'), teacher)
    assert run(clean_cfg).wait(120) == 0
    clean = parts(tmp_path, str(tmp_path / 'clean'))
    assert len(clean) == 12

    killed_cfg = job_config(tmp_path, shards, str(tmp_path / 'killed'), teacher)
    commits = tmp_path / 'killed' / 'labels' / 'toy' / '_commits'
    proc = run(killed_cfg)
    deadline = time.monotonic() + 120
    while not (commits.exists() and len(list(commits.iterdir())) >= 3):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(list(commits.iterdir()))
    assert 3 <= partial < 12, 'the kill came too late to test anything'
    rerun = run(killed_cfg)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err.decode()[-2000:]
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary['already_done'] >= partial - 1 and summary['committed'] <= 12 - partial + 1
    assert parts(tmp_path, str(tmp_path / 'killed')) == clean


def test_ctrl_c_stops_a_job_with_one_line_and_the_rerun_labels_the_rest(tmp_path):
    shards = toy_shards(tmp_path, n=160, per_shard=4)   # 40 shards: runway for the signal
    teacher = [timm_teacher_spec(tiny_timm_weights(tmp_path / 'w.safetensors'))]
    cfg = job_config(tmp_path, shards, str(tmp_path / 'store'), teacher, workers=1)
    commits = tmp_path / 'store' / 'labels' / 'toy' / '_commits'
    proc = run(cfg, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (commits.exists() and len(list(commits.iterdir())) >= 1):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)          # a terminal's Ctrl-C reaches the loader's worker too
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert err.decode().strip().splitlines()[-1].startswith('interrupted (Ctrl-C)')
    assert 'Traceback' not in err.decode(), err.decode()[-3000:]
    rerun = run(cfg)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err.decode()[-2000:]
    assert len(parts(tmp_path, str(tmp_path / 'store'))) == 40


def test_job_runs_one_process_per_rank_under_torchrun(tmp_path, free_port, launch):
    shards = toy_shards(tmp_path, n=24, per_shard=4)
    teacher = [timm_teacher_spec(tiny_timm_weights(tmp_path / 'w.safetensors'))]
    cfg = job_config(tmp_path, shards, str(tmp_path / 'store'), teacher)
    proc = launch(['torchrun', '--nproc_per_node', '2', '--master_port', str(free_port),
                   '-m', 'labeling', 'run', '--config', str(cfg), '--no-progress'])
    # Both ranks print a summary to one pipe: whole objects, but their newlines may interleave.
    decoder = json.JSONDecoder()
    summaries = [decoder.raw_decode(proc.stdout, m.start())[0] for m in re.finditer(r'\{"task"', proc.stdout)]
    assert sorted(s['job_index'] for s in summaries) == [0, 1] and all(s['num_jobs'] == 2 for s in summaries)
    assert sum(s['committed'] for s in summaries) == 6
    assert len(parts(tmp_path, str(tmp_path / 'store'))) == 6
