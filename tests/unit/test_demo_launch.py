"""The demo runs independent training runs side by side, returns their results in order, and a
failed run stops the others and names its log."""
import json
import os
import time

import pytest

from pretrain.apps.demo import Demo, Scale, launch_all

# A stand-in for pretrain/run.py: reads the --set overrides the demo passes, then behaves as told.
FAKE_RUN = '''
import json, os, sys, time
sets = dict(a[len('--set='):].split('=', 1) for a in sys.argv if a.startswith('--set='))
run_dir, how = json.loads(sets['checkpoint.dir']), json.loads(sets['how'])
start = time.time()
pid_file = os.path.join(os.path.dirname(run_dir), 'hang.pid')
if how == 'fail':  # once the run beside it is up
    while not os.path.exists(pid_file) and time.time() - start < 30:
        time.sleep(0.05)
    print('boom: the data is gone')
    sys.exit(3)
if how == 'hang':
    os.makedirs(os.path.dirname(pid_file), exist_ok=True)
    open(pid_file + '.tmp', 'w').write(str(os.getpid()))
    os.rename(pid_file + '.tmp', pid_file)
    time.sleep(120)
time.sleep(float(how))
os.makedirs(run_dir, exist_ok=True)
json.dump({'start': start, 'end': time.time(), 'threads': os.environ['OMP_NUM_THREADS']},
          open(os.path.join(run_dir, 'result.json'), 'w'))
'''


@pytest.fixture
def demo(tmp_path):
    (tmp_path / 'fake_run.py').write_text(FAKE_RUN)
    (tmp_path / 'logs').mkdir()
    return Demo(tmp_path, 'unused', 'unused', Scale(1, 1, 1, (0,), procs=1), 'test')


def runs(demo, *hows):
    return [(str(demo.out / 'fake_run.py'), f'run{i}', {}, {'how': how}) for i, how in enumerate(hows)]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason='one core: runs go one at a time')
def test_runs_share_the_cores_and_results_come_back_in_order(demo):
    results = launch_all(demo, runs(demo, '1.5', '0.2', '0.2'))
    assert [json.loads((demo.run_dir(f'run{i}') / 'result.json').read_text()) for i in range(3)] == results
    first, second, third = results
    assert second['start'] < first['end'] and third['start'] < first['end']  # the short ones ran beside it
    assert {r['threads'] for r in results} == {str(max(1, os.cpu_count() // 2))}  # the cores are shared out


def test_a_failed_run_stops_the_others_and_names_its_log(demo):
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r'(?s)fake_run\.py \(run0\) exited 3.*logs/run0\.log.*boom: the data'):
        launch_all(demo, runs(demo, 'fail', 'hang'))
    assert time.monotonic() - started < 60
    pid = int((demo.out / 'runs' / 'hang.pid').read_text())
    with pytest.raises(ProcessLookupError):  # the run beside it is stopped, not left running
        os.kill(pid, 0)


def test_one_run_alone_gets_every_core(demo):
    (result,) = launch_all(demo, runs(demo, '0'))
    assert result['threads'] == str(os.cpu_count() or 1)
