"""The demo, smaller: every stage on real digits, S3 on a local SeaweedFS server; the report's
structure, and every number in it traced back to the run that produced it."""
import json
import re
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

from pretrain.apps.demo_report import fmt, stats

pytestmark = pytest.mark.multiprocess
TASKS = ('digit', 'parity')


@pytest.fixture(scope='module')
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp('demo') / 'demo'
    proc = subprocess.run([sys.executable, '-m', 'pretrain.apps.demo', '--out', str(out), '--quick'], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def run_result(out, name):
    return json.loads((out / 'runs' / name / 'result.json').read_text())


def from_runs(out, prefix, task, seeds):
    return fmt(stats([run_result(out, f'{prefix}_s{seed}')[f'val/{task}/top1'] for seed in seeds]))


def test_quick_demo_prints_one_timed_line_per_stage(quick_demo):
    _, stdout = quick_demo
    lines = [line for line in stdout.splitlines() if line.startswith('[')]
    assert len(lines) == 10
    for n, line in enumerate(lines, 1):
        assert re.fullmatch(rf'\[{n}/10\] .* \.\.\. \d+ s', line), line
    assert re.search(r'^demo wall time: \d+ s \(after set-up\)$', stdout, re.M)


def test_every_number_of_the_seed_table_comes_from_a_run(quick_demo):
    out, _ = quick_demo
    summary = json.loads((out / 'summary.json').read_text())
    seeds = summary['seeds']
    assert len(seeds) == 1 and summary['storage'].startswith('S3') and summary['eval_source'] == 'test'
    rows = {line.split(' | ')[0].lstrip('| '): line for line in (out / 'report.md').read_text().splitlines()
            if line.startswith('| ')}
    for task in TASKS:
        teacher = run_result(out, f'teacher_{task}')[f'val/{task}/top1']
        assert f'{teacher:.3f}' in rows[f'teachers (one per task, its {summary["shards"]["digit"]} human labels)']
        assert from_runs(out, 'student_human', task, seeds) in rows['student, human labels only']
        assert from_runs(out, 'student_pseudo', task, seeds) in rows['student, human + pseudo-labels']
    assert from_runs(out, 'finetune_human', 'digit', seeds) in rows['student, human labels only, fine-tuned at 48 px']
    assert from_runs(out, 'finetune_pseudo', 'digit', seeds) in \
        rows['student, human + pseudo-labels, fine-tuned at 48 px']
    report = (out / 'report.md').read_text()
    assert len(re.findall(r'^- (pretrained|fine-tuned) student, \w+: (gain|loss|no difference)', report, re.M)) == 3
    assert (out / 'unlabeled_data.png').stat().st_size > 1000
    assert run_result(out, f'student_pseudo_half_s{seeds[0]}')  # the half-unlabeled point is a real run


def test_the_pipeline_around_the_table_is_real(quick_demo):
    out, _ = quick_demo
    summary = json.loads((out / 'summary.json').read_text())
    # The evaluate CLI on the fine-tuned student agrees with that run's own evaluation.
    ev = summary['evaluation']['evaluation']['val/digit/top1']
    assert ev == pytest.approx(run_result(out, f'finetune_pseudo_s{summary["seeds"][0]}')['val/digit/top1'])
    assert summary['evaluation']['export']['max_relative_error'] < 1e-4
    coverage = summary['label_report']['digit']['coverage']
    assert coverage['digit']['human'] == summary['shards']['digit'] and coverage['digit'].get('pseudo', 0) == 0
    assert coverage['parity']['pseudo'] == summary['shards']['parity']  # MuST: the digit teacher labels the parity-labeled images
    assert coverage['unla']['pseudo'] > 0 and coverage['unla'].get('human', 0) == 0
    for picture in ('erf.png', 'label_report/digit_confidence.png'):
        assert (out / picture).stat().st_size > 1000
    assert list((out / 'runs' / f'student_pseudo_s{summary["seeds"][0]}' / 'tb').iterdir())  # TensorBoard logs


def test_a_failing_stage_names_itself_and_the_fix(tmp_path):
    out = tmp_path / 'demo'
    out.mkdir()
    (out / 'shards').write_text('a file where the shard folder should be')
    proc = subprocess.run([sys.executable, '-m', 'pretrain.apps.demo', '--out', str(out), '--quick', '--local'],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert 'stage 1 (shards) failed' in proc.stderr and 'fix: check the storage' in proc.stderr
