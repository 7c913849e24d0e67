"""The demo, smaller: every stage of the pipeline on real digits, S3 on a local SeaweedFS server."""
import json
import subprocess
import sys

import pytest

from helpers import REPO_ROOT

pytestmark = pytest.mark.multiprocess


def test_quick_demo_runs_every_stage_and_writes_the_report(tmp_path):
    out = tmp_path / 'demo'
    proc = subprocess.run([sys.executable, '-m', 'pretrain.apps.demo', '--out', str(out), '--quick'], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for n in range(1, 11):
        assert f'[{n}/10]' in proc.stdout
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['storage'].startswith('S3')
    assert set(summary['teachers']) == {'digit', 'parity'}
    assert all(0 <= t['accuracy'] <= 1 for t in summary['teachers'].values())
    coverage = summary['label_report']['digit']['coverage']
    assert coverage['lab']['human'] > 0 and coverage['unl']['pseudo'] > 0 and coverage['unl'].get('human', 0) == 0
    for run in ('pseudo', 'labeled_only'):
        assert 'val/digit/top1' in summary['finetune'][run]
    assert summary['evaluation']['export']['max_relative_error'] < 1e-4
    report = (out / 'report.md').read_text()
    assert 'student pretrained with pseudo-labels' in report
    for picture in ('loss_curves.png', 'erf.png', 'label_report/digit_confidence.png'):
        assert (out / picture).stat().st_size > 1000
    assert list((out / 'runs' / 'student_pseudo' / 'tb').iterdir())  # TensorBoard logs


def test_a_failing_stage_names_itself_and_the_fix(tmp_path):
    out = tmp_path / 'demo'
    out.mkdir()
    (out / 'shards').write_text('a file where the shard folder should be')
    proc = subprocess.run([sys.executable, '-m', 'pretrain.apps.demo', '--out', str(out), '--quick', '--local'],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert 'stage 2 (shards: build and verify' in proc.stderr and 'fix: check the storage' in proc.stderr
