"""No credential lands in a run folder, a log, the label store or the console: the pipeline runs on
the SeaweedFS S3 server with AWS_SECRET_ACCESS_KEY set to a marker, and every file written and
everything printed is searched for it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BIN_DIR, REPO_ROOT

pytestmark = pytest.mark.multiprocess
MARKER = 'SECRET-MARKER-51d2c7e9'


def files_holding(root: Path, needle: bytes):
    return [str(p) for p in root.rglob('*') if p.is_file() and needle in p.read_bytes()]


def test_no_secret_in_run_folders_logs_store_or_console(image_tree, tmp_path, tmp_path_factory):
    import s3fs

    from pretrain.apps.local_s3 import LocalS3
    server_dir = tmp_path_factory.mktemp('seaweedfs-marker')
    with LocalS3(str(server_dir), secret_key=MARKER) as server:   # sets AWS_* for this process
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            run_the_pipeline(server.make_bucket('replk-marker'), image_tree, tmp_path)
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
    # the label store's records and the shard index, as the S3 server stores them (its own
    # credentials file, s3.json, holds the key by design)
    assert not [f for f in files_holding(tmp_path_factory.getbasetemp(), MARKER.encode())
                if f != str(server_dir / 's3.json')]


def run_the_pipeline(bucket: str, image_tree, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1', PATH=f'{BIN_DIR}{os.pathsep}{os.environ["PATH"]}')
    assert env['AWS_SECRET_ACCESS_KEY'] == MARKER
    shards, store = f'{bucket}/shards', f'{bucket}/labels'
    tasks_file = tmp_path / 'tasks.json'
    tasks_file.write_text(json.dumps({'animal': ['cat', 'dog', 'fox']}))
    run_dir = tmp_path / 'run'
    sets = {'data.sources': [{'name': 'zoo', 'url': shards}], 'data.val_sources': [{'name': 'zoo', 'url': shards}],
            'data.label_store': store, 'data.tasks_file': str(tasks_file), 'data.stream.few_shards': 'share',
            'tasks': {'animal': {'num_classes': 3}}, 'checkpoint.dir': str(run_dir), 'schedule.max_steps': 2,
            'checkpoint.every_steps': 1, 'log.tensorboard': True}
    steps = [
        [sys.executable, '-m', 'shards', 'build', '--imagefolder', str(image_tree), '--task', 'animal',
         '--source', 'zoo', '--output', shards, '--samples-per-shard', '4', '--no-progress'],
        [sys.executable, '-m', 'labeling', 'import-human', '--store', store, '--shards', shards, '--task', 'animal',
         '--tasks-file', str(tasks_file)],
        [sys.executable, 'pretrain/run.py', '--config', 'configs/tiny_cpu.json',
         *[f'--set={k}={json.dumps(v)}' for k, v in sets.items()]],
        [sys.executable, '-m', 'labeling', 'report', '--store', store, '--task', 'animal', '--shards', shards,
         '--tasks-file', str(tasks_file), '--out', str(tmp_path / 'report')],
    ]
    printed = []
    for cmd in steps:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f'{cmd[:4]}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}'
        printed.append(proc.stdout + proc.stderr)
    assert (run_dir / 'metrics.jsonl').is_file() and list((run_dir / 'tb').rglob('*tfevents*'))
    assert not [i for i, out in enumerate(printed) if MARKER in out]
    assert not files_holding(tmp_path, MARKER.encode())
