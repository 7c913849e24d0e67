"""The trainer talks (rank 0, once): start-up summary, step lines, evaluation and checkpoint lines,
the same in train.log; a resume keeps one metrics row per step; user errors are one line."""
import json
import sys
from pathlib import Path

import pytest
from test_pretrain_run import overrides, torchrun

from pretrain.apps.tiny_data import make

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return make(str(tmp_path_factory.mktemp('tiny_data')), per_source=32)


def test_trainer_talks_once_and_a_resume_keeps_one_row_per_step(tiny, tmp_path, free_port, launch):
    run = tmp_path / 'run'
    sets = ['schedule.max_steps=6', 'checkpoint.every_steps=4', 'log.every_steps=2', 'eval.every_steps=4']
    proc = launch(torchrun(free_port, *overrides(tiny, run, *sets)))
    out = proc.stdout
    assert out.count('model replknet_31b:') == 1 and 'world size 2 on cpu; batch 8 per rank x 1 accumulation' in out
    assert out.count('checking the run before its first step') == 1
    # DeepSpeed's per-rank noise: an accelerator warning (the summary names the device) and a FutureWarning
    assert 'Setting accelerator to CPU' not in out + proc.stderr and 'FutureWarning' not in out + proc.stderr
    assert 'source lab: 32 samples, 100% with a label' in out and 'source unl: 32 samples, 0% with a label' in out
    assert 'step 2/6 epoch' in out and ' img/s data-wait ' in out and out.count('step 4/6 epoch') == 1
    assert 'eval at step 4: val/shape top-1' in out and 'checkpoint step-4 written' in out
    assert 'step 2/6 epoch' in (run / 'train.log').read_text()
    # resume from step 4 although step 6 was logged: steps 5 and 6 are replayed
    (run / 'ckpt' / 'step-6' / 'COMMITTED').unlink()
    again = launch(torchrun(free_port, *overrides(tiny, run, *sets))).stdout
    assert 'resuming from step-4' in again
    steps = [json.loads(line)['step'] for line in (run / 'metrics.jsonl').read_text().splitlines()
             if 'loss' in json.loads(line)]
    assert steps == [2, 4, 6]


@pytest.mark.parametrize('override, message', [
    ('model.nme=x', "error: configs/tiny_cpu.json: model: unknown key(s) ['nme']; did you mean 'name'"),
    ('data.label_store="/no/such/store"', 'error: data.label_store=/no/such/store: no label store there'),
])
def test_a_user_error_is_one_line_without_traceback(tiny, tmp_path, override, message):
    import subprocess

    from helpers import REPO_ROOT
    proc = subprocess.run([sys.executable, 'pretrain/run.py', '--config', 'configs/tiny_cpu.json',
                           *overrides(tiny, tmp_path / 'run', override)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and errors[0].startswith(message), proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr + proc.stdout
    log = Path(tmp_path / 'run' / 'train.log')
    assert not log.exists() or 'Traceback' in log.read_text()
