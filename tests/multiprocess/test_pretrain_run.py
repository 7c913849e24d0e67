"""pretrain/run.py for real: 2 CPU processes on gloo, every launcher, resume and kill -9."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import BIN_DIR, REPO_ROOT, free_tcp_port

from pretrain.apps.tiny_data import make

pytestmark = pytest.mark.multiprocess
CONFIG = 'configs/tiny_cpu.json'


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return make(str(tmp_path_factory.mktemp('tiny_data')), per_source=32)


def overrides(tiny, run_dir, *extra):
    sets = {
        'data.sources': [{'name': 'lab', 'url': tiny['shards']}, {'name': 'unl', 'url': tiny['shards']}],
        'data.val_sources': [{'name': 'val', 'url': tiny['shards']}],
        'data.label_store': tiny['labels'], 'data.tasks_file': tiny['tasks_file'],
        'checkpoint.dir': str(run_dir), 'log.tensorboard': False,
    }
    args = [f'--set={k}={json.dumps(v)}' for k, v in sets.items()]
    return args + [f'--set={e}' for e in extra]


def metrics(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / 'metrics.jsonl').read_text().splitlines()]
    return {r['step']: r['loss'] for r in rows if 'loss' in r}


def kill_tree(pid):
    """SIGKILL the launcher and every worker (torchrun starts workers in their own sessions)."""
    import psutil
    parent = psutil.Process(pid)
    for p in parent.children(recursive=True) + [parent]:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def torchrun(port, *args):
    return ['torchrun', '--nproc_per_node', '2', '--master_port', str(port), 'pretrain/run.py', '--config', CONFIG, *args]


@pytest.mark.parametrize('stage', [1, 2, 3])
def test_zero_stage_trains_with_two_processes(stage, tiny, tmp_path, free_port, launch):
    run_dir = tmp_path / 'run'
    launch(torchrun(free_port, *overrides(tiny, run_dir, 'schedule.max_steps=4', 'checkpoint.every_steps=2',
                                          f'deepspeed.zero_optimization.stage={stage}')))
    losses = metrics(run_dir)
    assert sorted(losses) == [1, 2, 3, 4]
    assert sorted(p.name for p in (run_dir / 'ckpt').glob('step-*')) == ['step-2', 'step-4']
    assert json.loads((run_dir / 'config.json').read_text())['deepspeed']['zero_optimization']['stage'] == stage
    result = json.loads((run_dir / 'result.json').read_text())
    assert 'val/shape/top1' in result and result['step'] == 4


def test_deepspeed_launcher_and_a_plain_process(tiny, tmp_path, free_port, launch):
    launch(['deepspeed', '--num_gpus', '2', '--master_port', str(free_port), 'pretrain/run.py', '--config', CONFIG,
            *overrides(tiny, tmp_path / 'ds', 'schedule.max_steps=2')])
    assert sorted(metrics(tmp_path / 'ds')) == [1, 2]
    launch([sys.executable, 'pretrain/run.py', '--config', CONFIG,
            *overrides(tiny, tmp_path / 'plain', 'schedule.max_steps=2')])
    assert sorted(metrics(tmp_path / 'plain')) == [1, 2]


def test_two_nodes_simulated_on_one_machine(tiny, tmp_path, free_port):
    env = dict(os.environ, OMP_NUM_THREADS='1', PATH=f'{BIN_DIR}{os.pathsep}{os.environ["PATH"]}')
    procs = [subprocess.Popen(['torchrun', '--nnodes', '2', '--node_rank', str(node), '--nproc_per_node', '1',
                               '--master_addr', '127.0.0.1', '--master_port', str(free_port),
                               'pretrain/run.py', '--config', CONFIG,
                               *overrides(tiny, tmp_path / 'run', 'schedule.max_steps=2')],
                              cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for node in (0, 1)]
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert sorted(metrics(tmp_path / 'run')) == [1, 2]


def test_resumed_run_equals_uninterrupted_run_step_for_step(tiny, tmp_path, free_port, launch):
    launch(torchrun(free_port, *overrides(tiny, tmp_path / 'straight', 'schedule.max_steps=8',
                                          'checkpoint.every_steps=4')))
    launch(torchrun(free_port, *overrides(tiny, tmp_path / 'resumed', 'schedule.max_steps=4',
                                          'checkpoint.every_steps=4')))
    launch(torchrun(free_port, *overrides(tiny, tmp_path / 'resumed', 'schedule.max_steps=8',
                                          'checkpoint.every_steps=4')))
    straight, resumed = metrics(tmp_path / 'straight'), metrics(tmp_path / 'resumed')
    assert sorted(resumed) == list(range(1, 9))
    assert [resumed[s] for s in range(1, 9)] == [straight[s] for s in range(1, 9)]


def test_kill_9_during_a_checkpoint_write_resumes_from_the_previous_one(tiny, tmp_path, free_port):
    run_dir = tmp_path / 'run'
    env = dict(os.environ, OMP_NUM_THREADS='1', PATH=f'{BIN_DIR}{os.pathsep}{os.environ["PATH"]}')
    proc = subprocess.Popen(torchrun(free_port, *overrides(tiny, run_dir, 'schedule.max_steps=40',
                                                           'checkpoint.every_steps=1', 'checkpoint.keep=3')),
                            cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    ckpt, killed_at = run_dir / 'ckpt', None
    deadline = time.monotonic() + 240
    while killed_at is None:
        assert proc.poll() is None, 'the run ended before a checkpoint write could be interrupted'
        assert time.monotonic() < deadline
        steps = sorted(ckpt.glob('step-*')) if ckpt.is_dir() else []
        partial = [p for p in steps if not (p / 'COMMITTED').exists()]
        if partial and any((p / 'COMMITTED').exists() for p in steps):
            kill_tree(proc.pid)
            killed_at = partial[-1].name
        time.sleep(0.001)
    proc.wait()
    committed = sorted(int(p.name.split('-')[1]) for p in ckpt.glob('step-*') if (p / 'COMMITTED').exists())
    assert committed, 'no committed checkpoint before the kill'
    # Whatever the kill interrupted has no marker; add a write killed even earlier (files cut short).
    partial = ckpt / 'step-999'
    partial.mkdir()
    (partial / 'mp_rank_00_model_states.pt').write_bytes(b'PK\x03\x04 cut short')
    leftovers = [p.name for p in ckpt.glob('step-*') if not (p / 'COMMITTED').exists()]
    assert 'step-999' in leftovers
    # a port asked for now: free_port + 1 was sometimes still held after the kill (EADDRINUSE)
    resumed = subprocess.run(torchrun(free_tcp_port(), *overrides(tiny, run_dir, f'schedule.max_steps={committed[-1] + 2}',
                                                                'checkpoint.every_steps=1', 'checkpoint.keep=3')),
                             cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'resumed from step-{committed[-1]}' in resumed.stdout
    assert sorted(metrics(run_dir))[-1] == committed[-1] + 2


def test_non_finite_losses_stop_the_run_with_a_clear_message(tiny, tmp_path, free_port):
    env = dict(os.environ, OMP_NUM_THREADS='1', PATH=f'{BIN_DIR}{os.pathsep}{os.environ["PATH"]}')
    proc = subprocess.run(torchrun(free_port, *overrides(tiny, tmp_path / 'run', 'optim.lr=1e30',
                                                         'deepspeed.gradient_clipping=0', 'schedule.max_steps=20',
                                                         'train.max_nonfinite_steps=2', 'schedule.warmup_epochs=0')),
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    # lr 1e30: the first update blows the weights up, the next two losses are inf; the second stops the run.
    assert ('error: 2 non-finite losses in a row at step 1: stopping; resume from the last checkpoint with a '
            'lower optim.lr') in proc.stderr.splitlines()


def test_zero3_evaluation_with_uneven_batches_per_rank_finishes(tmp_path_factory, tmp_path, free_port):
    # 5 validation shards of 8 over 2 ranks: rank 0 holds 3 batches, rank 1 holds 2. A ZeRO-3 forward
    # gathers parameters from every rank, so a rank that stops early used to leave the other hanging.
    uneven = make(str(tmp_path_factory.mktemp('uneven')), per_source=40)
    env = dict(os.environ, OMP_NUM_THREADS='1', PATH=f'{BIN_DIR}{os.pathsep}{os.environ["PATH"]}')
    proc = subprocess.Popen(torchrun(free_port, *overrides(uneven, tmp_path / 'run', 'schedule.max_steps=1',
                                                           'deepspeed.zero_optimization.stage=3',
                                                           # as with a large model: every parameter partitioned
                                                           # and gathered again for every forward
                                                           *[f'deepspeed.zero_optimization.stage3_{k}=0' for k in (
                                                               'param_persistence_threshold', 'max_live_parameters',
                                                               'max_reuse_distance', 'prefetch_bucket_size')])),
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out = proc.communicate(timeout=120)[0].decode()
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        pytest.fail('evaluation under ZeRO-3 hung with uneven batches per rank')
    assert proc.returncode == 0, out[-3000:]
    result = json.loads((tmp_path / 'run' / 'result.json').read_text())
    assert result['val/shape/images'] == 40


def wait_for_step(run_dir, step, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while not (Path(run_dir) / 'metrics.jsonl').exists() or max(metrics(run_dir), default=0) < step:
        assert proc.poll() is None, 'the run ended before it could be signalled'
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_sigterm_to_torchrun_checkpoints_at_that_step_and_the_resumed_run_equals_an_uninterrupted_one(
        tiny, tmp_path, free_port, launch):
    env = dict(os.environ, OMP_NUM_THREADS='1', PATH=f'{BIN_DIR}{os.pathsep}{os.environ["PATH"]}')
    args = ('schedule.max_steps=12', 'checkpoint.every_steps=100', 'log.every_steps=1')
    run_dir = tmp_path / 'preempted'
    proc = subprocess.Popen(torchrun(free_port, *overrides(tiny, run_dir, *args)), cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_step(run_dir, 3, proc)
    proc.send_signal(signal.SIGTERM)           # what Slurm sends before the time limit
    out, err = proc.communicate(timeout=120)
    steps = [int(p.name.split('-')[1]) for p in (run_dir / 'ckpt').glob('step-*') if (p / 'COMMITTED').exists()]
    assert len(steps) == 1 and 3 <= steps[0] < 12, (steps, err[-3000:])
    said = [line for line in err.splitlines() if line.startswith('preempted at step')]
    assert said == [f'preempted at step {steps[0]} (SIGTERM); checkpoint step-{steps[0]} written; '
                    'rerun the same command to resume'], err[-3000:]
    # the workers stop without a traceback (torchrun then reports the signal it got with its own)
    assert 'Traceback' not in out + err.split('preempted at step')[0]
    assert not (run_dir / 'result.json').exists()
    launch(torchrun(free_port, *overrides(tiny, run_dir, *args)))
    launch(torchrun(free_port, *overrides(tiny, tmp_path / 'straight', *args)))
    resumed, straight = metrics(run_dir), metrics(tmp_path / 'straight')
    assert sorted(resumed) == list(range(1, 13))
    assert [resumed[s] for s in range(1, 13)] == [straight[s] for s in range(1, 13)]


def test_ctrl_c_stops_with_one_line_and_no_traceback(tiny, tmp_path, free_port):
    env = dict(os.environ, OMP_NUM_THREADS='1', PATH=f'{BIN_DIR}{os.pathsep}{os.environ["PATH"]}')
    run_dir = tmp_path / 'run'
    proc = subprocess.Popen([sys.executable, 'pretrain/run.py', '--config', CONFIG,
                             *overrides(tiny, run_dir, 'schedule.max_steps=200', 'log.every_steps=1')],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_for_step(run_dir, 2, proc)
    os.killpg(proc.pid, signal.SIGINT)          # a terminal's Ctrl-C reaches the whole process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert 'Traceback' not in out + err, err[-3000:]
    assert [line for line in err.splitlines() if line.strip()][-1].startswith('interrupted (Ctrl-C): stopped')


def label_unl_shards(labels_root, tiny):
    """What a labeling job or an import committing while a run trains does: labels for every 'unl' shard."""
    from labeling.store import LabelStore, Row
    from labeling.tasks import TaskRegistry
    from shards.naming import shard_stem
    from shards.stream import SourceSpec, resolve_source
    store = LabelStore(str(labels_root), TaskRegistry.from_json(tiny['tasks_file']))
    src = resolve_source(SourceSpec('unl', tiny['shards']))
    for url, sha, n in zip(src.urls, src.sha256, src.positions):
        stem = shard_stem(url.rsplit('/', 1)[1])
        shard = int(stem.rsplit('-', 1)[1])
        store.write_part('shape', stem, [Row(f'unl/{shard:06d}/{i:06d}', [i % 4], [1.0], 'human') for i in range(n)],
                         'human', shard_sha256=sha)
    store.refresh_manifest('shape')


def plain_run(tiny, run_dir, labels, *extra):
    return [sys.executable, 'pretrain/run.py', '--config', CONFIG,
            *overrides(tiny, run_dir, f'data.label_store="{labels}"', 'log.every_steps=1', *extra)]


def test_labels_committed_while_a_run_trains_do_not_change_it_and_a_resume_keeps_them(tiny, tmp_path, launch):
    import shutil
    for name in ('still', 'moving', 'resumed', 'refreshed'):
        shutil.copytree(tiny['labels'], tmp_path / f'labels_{name}')
    steps = ('schedule.max_steps=20', 'checkpoint.every_steps=100')   # two epochs and a half
    launch(plain_run(tiny, tmp_path / 'still', tmp_path / 'labels_still', *steps))
    env = dict(os.environ, OMP_NUM_THREADS='1', PATH=f'{BIN_DIR}{os.pathsep}{os.environ["PATH"]}')
    proc = subprocess.Popen(plain_run(tiny, tmp_path / 'moving', tmp_path / 'labels_moving', *steps), cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(tmp_path / 'moving', 2, proc)
    label_unl_shards(tmp_path / 'labels_moving', tiny)       # a job commits during the first epoch
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    still = metrics(tmp_path / 'still')
    assert metrics(tmp_path / 'moving') == still
    # a resume trains on the labels the run started with, not the store's newer ones ...
    launch(plain_run(tiny, tmp_path / 'resumed', tmp_path / 'labels_resumed', 'schedule.max_steps=10',
                     'checkpoint.every_steps=10'))
    label_unl_shards(tmp_path / 'labels_resumed', tiny)
    launch(plain_run(tiny, tmp_path / 'resumed', tmp_path / 'labels_resumed', *steps))
    assert metrics(tmp_path / 'resumed') == still
    # ... unless told to take them, which it says
    launch(plain_run(tiny, tmp_path / 'refreshed', tmp_path / 'labels_refreshed', 'schedule.max_steps=10',
                     'checkpoint.every_steps=10'))
    label_unl_shards(tmp_path / 'labels_refreshed', tiny)
    proc = launch(plain_run(tiny, tmp_path / 'refreshed', tmp_path / 'labels_refreshed', *steps,
                            'data.labels_refresh=true'))
    assert 'data.labels_refresh: task shape switches from' in proc.stdout + proc.stderr
    refreshed = metrics(tmp_path / 'refreshed')
    assert [refreshed[s] for s in range(1, 11)] == [still[s] for s in range(1, 11)]
    assert [refreshed[s] for s in range(11, 21)] != [still[s] for s in range(11, 21)]


def lrs(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / 'metrics.jsonl').read_text().splitlines()]
    return {r['step']: r['lr'] for r in rows if 'lr' in r}


def test_a_resume_applies_a_new_lr_and_refuses_a_changed_model_and_a_finished_run_changes_nothing(
        tiny, tmp_path, launch):
    from pretrain.schedule import lr_factor
    run_dir = tmp_path / 'run'
    launch(plain_run(tiny, run_dir, tiny['labels'], 'schedule.max_steps=4', 'checkpoint.every_steps=4'))
    proc = launch(plain_run(tiny, run_dir, tiny['labels'], 'schedule.max_steps=8', 'checkpoint.every_steps=4',
                            'optim.lr=0.0001', 'optim.weight_decay=0.5'))
    said = proc.stdout + proc.stderr
    assert 'resume: optim.lr: 0.002 -> 0.0001' in said and 'resume: optim.weight_decay: 0.05 -> 0.5' in said
    warmup = 8   # schedule.warmup_epochs=1 of 8 steps per epoch
    assert lrs(run_dir)[5] == pytest.approx(0.0001 * lr_factor(5, 8, warmup))      # was 0.002 * ...
    assert json.loads((run_dir / 'config.json').read_text())['optim']['lr'] == 0.0001   # what ran
    # what defines the run cannot change under a resume
    env = dict(os.environ, OMP_NUM_THREADS='1', PATH=f'{BIN_DIR}{os.pathsep}{os.environ["PATH"]}')
    refused = subprocess.run(plain_run(tiny, run_dir, tiny['labels'], 'schedule.max_steps=12', 'optim.lr=0.0001',
                                       'optim.weight_decay=0.5', 'checkpoint.every_steps=4',
                                       'model.kwargs={"kernel_sizes": [7, 5], "depths": [1, 1], "channels": [16, 48], '
                                       '"small_kernel": 3}', 'train.micro_batch=4'),
                             cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert ('error: resuming step-8 with settings that define the run changed (2): '
            'model.kwargs.channels: [16, 32] -> [16, 48]; train.micro_batch: 8 -> 4.') in refused.stderr
    # rerunning the finished run: it says so, and nothing is rewritten
    before = {n: (run_dir / n).read_text() for n in ('result.json', 'metrics.jsonl', 'config.json')}
    again = launch(plain_run(tiny, run_dir, tiny['labels'], 'schedule.max_steps=8', 'checkpoint.every_steps=4',
                             'optim.lr=0.0001', 'optim.weight_decay=0.5'))
    assert 'is already complete at step-8' in again.stdout + again.stderr
    assert {n: (run_dir / n).read_text() for n in before} == before


def test_a_second_trainer_on_a_run_folder_is_refused_and_a_killed_ones_lease_is_taken_over(tiny, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1', PATH=f'{BIN_DIR}{os.pathsep}{os.environ["PATH"]}')
    run_dir = tmp_path / 'run'
    args = ('checkpoint.every_steps=2', 'schedule.epochs=10000')
    first = subprocess.Popen(plain_run(tiny, run_dir, tiny['labels'], 'schedule.max_steps=100000', *args),
                             cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    wait_for_step(run_dir, 3, first)
    second = subprocess.run(plain_run(tiny, run_dir, tiny['labels'], 'schedule.max_steps=100000', *args),
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)  # a requeue
    assert second.returncode == 2, second.stderr[-2000:]
    assert f'another trainer runs on this folder (host {os.uname().nodename}, pid {first.pid}' in second.stderr
    assert first.poll() is None        # the owner goes on
    kill_tree(first.pid)                # then dies without releasing its lease
    first.wait()
    committed = max(int(p.name.split('-')[1]) for p in (run_dir / 'ckpt').glob('step-*') if (p / 'COMMITTED').exists())
    third = subprocess.run(plain_run(tiny, run_dir, tiny['labels'], f'schedule.max_steps={committed + 2}', *args),
                           cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert (f'taking over the lease of host {os.uname().nodename} pid {first.pid}, which is no longer running'
            in third.stdout + third.stderr)   # at once: no heartbeat to wait for on the same host
    assert f'resumed from step-{committed}' in third.stdout
    assert not (run_dir / 'LEASE').exists()   # released at the end


def test_corrupt_samples_in_the_metrics_are_summed_over_every_rank(tiny, tmp_path, free_port, launch):
    import shutil

    from helpers import rewrite_tar_member
    shards = tmp_path / 'shards'
    shutil.copytree(tiny['shards'], shards)
    for shard in range(4):   # the first image of every unlabeled shard: 4 of the epoch's 64 samples
        rewrite_tar_member(shards / f'unl-{shard:06d}.tar', f'unl/{shard:06d}/000000.jpg', b'not a jpeg')
    run_dir = tmp_path / 'run'
    args = overrides(dict(tiny, shards=str(shards)), run_dir, 'schedule.max_steps=4', 'data.stream.max_corrupt_fraction=0.5')
    launch(torchrun(free_port, *args))
    rows = [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines()]
    assert [r['corrupt_samples'] for r in rows if r.get('step') == 4 and 'corrupt_samples' in r] == [4]
    assert json.loads((run_dir / 'result.json').read_text())['corrupt_samples'] == 4



@pytest.fixture
def small_disk(small_filesystem):
    """A real 1.2 MB filesystem: room for two checkpoints of the tiny model."""
    return small_filesystem('1200k')


def test_a_full_disk_at_a_checkpoint_is_one_line_naming_the_intact_checkpoint(tiny, tmp_path, small_disk):
    env = dict(os.environ, OMP_NUM_THREADS='1', PATH=f'{BIN_DIR}{os.pathsep}{os.environ["PATH"]}')
    run_dir = small_disk / 'run'
    proc = subprocess.run(plain_run(tiny, run_dir, tiny['labels'], 'schedule.max_steps=20', 'checkpoint.every_steps=1',
                                    'checkpoint.keep=20'), cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    committed = sorted(int(p.name.split('-')[1]) for p in (run_dir / 'ckpt').glob('step-*') if (p / 'COMMITTED').exists())
    assert committed
    lines = [line for line in proc.stderr.splitlines() if line.strip() and 'Warning' not in line]
    assert lines[-1].startswith(f'error: writing checkpoint step-{committed[-1] + 1} failed: no space left on ')
    assert f'the previous checkpoint step-{committed[-1]} is intact' in lines[-1]
    assert 'Traceback' not in proc.stderr


def test_a_full_disk_at_a_checkpoint_stops_every_rank_not_only_the_one_that_failed(tiny, small_disk, free_port):
    env = dict(os.environ, OMP_NUM_THREADS='1', PATH=f'{BIN_DIR}{os.pathsep}{os.environ["PATH"]}')
    run_dir = small_disk / 'run'
    proc = subprocess.run(torchrun(free_port, *overrides(tiny, run_dir, 'schedule.max_steps=20',
                                                         'checkpoint.every_steps=1', 'checkpoint.keep=20')),
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)  # no rank left waiting
    assert proc.returncode != 0
    assert [line for line in proc.stderr.splitlines() if line.startswith('error: writing checkpoint step-')], \
        proc.stderr[-3000:]


def test_a_compiled_run_trains_as_the_eager_run(tiny, tmp_path, free_port, launch):
    # train.compile=inductor: the engine's module compiled in place (after one eager forward decided
    # the large-kernel algorithms); its losses over 3 steps (so two optimizer updates) and its
    # evaluation are the eager run's, and its checkpoint holds the same keys (it resumes and exports)
    from pretrain.weights import read_weights
    lk_impl, losses, evals = 'auto', {}, {}
    for compiled in ('none', 'inductor'):
        run_dir = tmp_path / compiled
        proc = launch(torchrun(free_port, *overrides(
            tiny, run_dir, 'schedule.max_steps=3', 'checkpoint.every_steps=3', 'log.every_steps=1',
            f'train.compile="{compiled}"', f'model.kwargs.lk_impl="{lk_impl}"', 'model.drop_path_rate=0.0')))
        losses[compiled] = metrics(run_dir)
        evals[compiled] = json.loads((run_dir / 'result.json').read_text())['val/shape/top1']
        said = 'model compiled with inductor (2 large-kernel convs decided before tracing)'
        assert (said in proc.stdout) == (compiled == 'inductor'), proc.stdout[-2000:]
    assert losses['inductor'] == pytest.approx(losses['none'], rel=1e-4) and len(losses['none']) == 3
    assert evals['inductor'] == evals['none']
    assert set(read_weights(str(tmp_path / 'inductor'))) == set(read_weights(str(tmp_path / 'none')))
