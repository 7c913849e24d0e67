"""One source built by several jobs at once on the S3 server (a Slurm array's view): each job writes
its own shards and index part, one job is killed mid-build and rerun, and the result is the shards
and index of a single-job build, byte for byte."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO_ROOT, write_image

from shards import storage
from shards.build import BuildOptions, build
from shards.index import ShardIndex
from shards.inputs import unlabeled_items
from shards.verify import verify

pytestmark = pytest.mark.multiprocess
JOBS, IMAGES, PER_SHARD = 3, 120, 4      # 30 shards, 10 a job


def build_job(prefix: str, photos, job: int, jobs: int = JOBS) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, '-m', 'shards', 'build', '--unlabeled', str(photos), '--output', prefix,
         '--source', 'web', '--samples-per-shard', str(PER_SHARD), '--job-index', str(job),
         '--num-jobs', str(jobs), '--no-progress', '--index-save-interval', '0'],
        cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def shards_of_job(prefix: str, job: int) -> list:
    return [n for n in storage.list_names(prefix) if n.endswith('.tar') and int(n[4:10]) % JOBS == job]


def test_jobs_build_one_source_together_and_a_killed_job_reruns_to_the_single_job_result(tmp_path, s3_prefix):
    photos = tmp_path / 'photos'
    for i in range(IMAGES):
        write_image(photos / f'{i:04d}.jpg', seed=i, size=(96, 80))
    single = f'{s3_prefix}/single'
    build(unlabeled_items(str(photos)), BuildOptions(single, 'web', samples_per_shard=PER_SHARD, progress=False))

    together = f'{s3_prefix}/together'
    procs = {job: build_job(together, photos, job) for job in range(JOBS)}
    deadline = time.monotonic() + 120
    while not shards_of_job(together, 1):                      # job 1 has written some shards...
        assert procs[1].poll() is None, procs[1].stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)                       # ...and dies before finishing
    procs[1].wait()
    for job in (0, 2):
        out, err = procs[job].communicate(timeout=300)
        assert procs[job].returncode == 0, err[-2000:]
    written_before = len(shards_of_job(together, 1))
    assert 0 < written_before < 10, 'the kill came too late to test anything'

    rerun = build_job(together, photos, 1)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-2000:]
    written, complete = re.search(r'(\d+) shards written, (\d+) already complete', out).groups()
    assert int(written) + int(complete) == 10 and int(complete) >= written_before - 1  # only what it lacked
    a, b = ShardIndex.load(single), ShardIndex.load(together)
    assert {n: (e.samples, e.sha256) for n, e in a.shards.items()} == {n: (e.samples, e.sha256) for n, e in b.shards.items()}
    assert len(b.shards) == IMAGES // PER_SHARD and verify(together) == []
    parts = storage.list_names(f'{together}/_index/web')
    assert [p for p in parts if p.startswith('shards.')] == [f'shards.{j:05d}-of-{JOBS:05d}.parquet' for j in range(JOBS)]
