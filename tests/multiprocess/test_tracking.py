"""A run reports to TensorBoard, Weights & Biases (offline) and MLflow (a local SQLite store, and its
tracking server started here on loopback; MLflow retired its plain-folder store), for real: what each
received is read back from its own files or server and compared with metrics.jsonl; a resumed run
continues the same tracked runs without reporting a step twice; an export becomes their artifact."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import free_tcp_port, train_tiny

from pretrain.apps.tiny_data import make

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return make(str(tmp_path_factory.mktemp('tiny_data')), per_source=32)


TIMINGS = ('images_per_s', 'data_wait', 'eta_s')   # a replayed step computes the same values at another speed


def rows(run_dir: Path) -> dict:
    """{(step, key): value} of metrics.jsonl's numbers."""
    out = {}
    for line in (run_dir / 'metrics.jsonl').read_text().splitlines():
        row = json.loads(line)
        out.update({(row['step'], k): float(v) for k, v in row.items()
                    if k != 'step' and isinstance(v, (int, float)) and not isinstance(v, bool)})
    return out


def values(reported: dict) -> dict:
    return {key: v for key, v in reported.items() if key[1] not in TIMINGS}


def wandb_records(run_dir: Path, kind: str) -> list:
    """Every ``kind`` record (history, artifact, ...) in the run's offline W&B files (one folder per
    process that reported), read with W&B's own record type from its transaction log's framing
    (LevelDB's log format; wandb ships no reader of its own any more)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb
    found = []
    for path in sorted(run_dir.glob('wandb/offline-run-*/run-*.wandb')):
        data, pos, pending = path.read_bytes(), 7, b''
        assert data[:4] == b':W&B'
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:            # a block's tail too short for a header: padding
                pos += 32768 - pos % 32768
                continue
            _, length, chunk = struct.unpack('<IHB', data[pos:pos + 7])   # chunk: full, first, middle, last
            body, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            pending = body if chunk in (1, 2) else pending + body
            if chunk in (1, 4):
                record = pb.Record()
                record.ParseFromString(pending)
                if record.WhichOneof('record_type') == kind:
                    found.append(getattr(record, kind))
    return found


def wandb_history(run_dir: Path) -> list:
    return [{i.key or '/'.join(i.nested_key): json.loads(i.value_json) for i in h.item}
            for h in wandb_records(run_dir, 'history')]


def mlflow_metrics(uri: str, run_id: str) -> dict:
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    out, seen = {}, []
    for key in client.get_run(run_id).data.metrics:
        for m in client.get_metric_history(run_id, key):
            out[(m.step, key)] = m.value
            seen.append((m.step, key))
    assert len(seen) == len(set(seen)), 'a step was reported twice'
    return out


def tensorboard_scalars(run_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir / 'tb'), size_guidance={'scalars': 0}).Reload()
    return {(e.step, tag): e.value for tag in acc.Tags()['scalars'] for e in acc.Scalars(tag)}


def test_all_three_trackers_get_the_same_scalars_and_a_resume_continues_the_same_tracked_runs(tiny, tmp_path):
    store = f'sqlite:///{tmp_path}/mlflow.db'
    sets = {'log.tensorboard': True, 'log.every_steps': 1, 'checkpoint.every_steps': 2,
            'log.wandb': {'project': 'replk-test', 'mode': 'offline'}, 'log.mlflow': {'tracking_uri': store}}
    from mlflow.tracking import MlflowClient

    # artifacts under tmp_path, not in MLflow's default ./mlruns of the working folder
    MlflowClient(tracking_uri=store).create_experiment('replk-pretrain', artifact_location=str(tmp_path / 'artifacts'))
    run_dir = tmp_path / 'run'
    train_tiny(tiny, run_dir, {**sets, 'schedule.max_steps': 4})
    first = json.loads((run_dir / 'tracking.json').read_text())
    # as if killed after reporting steps 3 and 4 but before its step-4 checkpoint was committed:
    # the resume from step 2 replays them, identically, and must not report them again
    shutil.rmtree(run_dir / 'ckpt' / 'step-4')
    train_tiny(tiny, run_dir, {**sets, 'schedule.max_steps': 4})
    state = json.loads((run_dir / 'tracking.json').read_text())
    assert {b: state[b]['run_id'] for b in state} == {b: first[b]['run_id'] for b in first}   # the same tracked runs
    assert state['mlflow']['last_step'] == state['wandb']['last_step'] == 4

    expected = rows(run_dir)
    assert {s for s, _ in expected} == {1, 2, 3, 4} and (4, 'val/shape/top1') in expected
    mlflow = mlflow_metrics(store, state['mlflow']['run_id'])
    assert mlflow.keys() == expected.keys() and values(mlflow) == pytest.approx(values(expected))
    history = wandb_history(run_dir)
    steps = [h['_step'] for h in history]
    assert sorted(steps) == sorted(set(steps)) == [1, 2, 3, 4]      # none twice across the two processes
    wandb = {(h['_step'], k): float(v) for h in history for k, v in h.items() if not k.startswith('_')}
    assert wandb.keys() == expected.keys() and values(wandb) == pytest.approx(values(expected))
    assert tensorboard_scalars(run_dir) == pytest.approx(expected)   # TensorBoard purges the replayed steps

    run = MlflowClient(tracking_uri=store).get_run(state['mlflow']['run_id'])
    assert run.data.params['optim.lr'] == json.dumps(json.loads((run_dir / 'config.json').read_text())['optim']['lr'])
    assert {'shards/lab', 'shards/unl', 'labels/shape', 'labels/stripes'} <= set(run.data.tags)

    # an export of the run becomes an artifact of both tracked runs
    export = subprocess.run([sys.executable, '-m', 'pretrain.export', str(run_dir), '--task', 'shape', '--out',
                             str(tmp_path / 'tiny_shape')], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[2])
    assert export.returncode == 0, export.stderr[-3000:]
    client = MlflowClient(tracking_uri=store)
    files = {f.path for f in client.list_artifacts(state['mlflow']['run_id'], 'export-tiny_shape')}
    assert files == {f'export-tiny_shape/{n}' for n in ('model.safetensors', 'config.json', 'README.md')}
    assert [a.name for a in wandb_records(run_dir, 'artifact')] == ['export-tiny_shape']


def wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f'mlflow server exited {proc.returncode}: {proc.stderr.read()[-2000:]}')
        with socket.socket() as s:
            if s.connect_ex(('127.0.0.1', port)) == 0:
                return
        time.sleep(0.3)
    raise AssertionError('mlflow server did not start')


def test_a_run_reports_to_an_mlflow_tracking_server(tiny, tmp_path):
    port = free_tcp_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / 'mlflow'), 'server', '--host', '127.0.0.1', '--port',
                               str(port), '--backend-store-uri', f'sqlite:///{tmp_path}/mlflow.db', '--workers', '1',
                               '--default-artifact-root', str(tmp_path / 'artifacts')],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE='true'))
    try:
        wait_for_port(port, server)
        uri = f'http://127.0.0.1:{port}'
        run_dir = tmp_path / 'run'
        train_tiny(tiny, run_dir, {'schedule.max_steps': 2, 'log.every_steps': 1,
                                   'log.mlflow': {'tracking_uri': uri, 'experiment': 'tiny'}})
        run_id = json.loads((run_dir / 'tracking.json').read_text())['mlflow']['run_id']
        assert mlflow_metrics(uri, run_id) == pytest.approx(rows(run_dir))
    finally:
        server.terminate()
        server.wait(timeout=30)
