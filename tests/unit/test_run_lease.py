"""The run folder's lease: an owner on another host is judged by its heartbeat (a lost node's lease
is taken over after checkpoint.lease_timeout_s, a live one's refused), one on this host by whether
its process still runs."""
import json
import os
import time

import pytest

from pretrain.run_lease import LeaseHeld, RunLease


def plant(run_dir, **owner):
    run_dir.mkdir(exist_ok=True)
    (run_dir / 'LEASE').write_text(json.dumps(dict(dict(host='node-7', pid=4242, started=1.0), **owner)))


def test_a_live_owner_on_another_host_is_refused_naming_it(tmp_path):
    plant(tmp_path, heartbeat=time.time() - 5)
    with pytest.raises(LeaseHeld, match=r'another trainer runs on this folder \(host node-7, pid 4242, heartbeat 5 s'):
        RunLease(str(tmp_path), timeout_s=60).take()


def test_a_silent_owner_on_another_host_is_taken_over_after_the_timeout(tmp_path):
    plant(tmp_path, heartbeat=time.time() - 61)
    lease = RunLease(str(tmp_path), timeout_s=60).take()
    try:
        assert json.loads((tmp_path / 'LEASE').read_text())['pid'] == os.getpid() and lease.still_ours()
    finally:
        lease.release()
    assert not (tmp_path / 'LEASE').exists()


def test_a_dead_owner_on_this_host_is_taken_over_at_once(tmp_path):
    import subprocess
    import sys
    gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    plant(tmp_path, host=os.uname().nodename, pid=int(gone.stdout), heartbeat=time.time())
    lease = RunLease(str(tmp_path), timeout_s=600).take()
    lease.release()


def test_the_heartbeat_renews_the_lease(tmp_path):
    lease = RunLease(str(tmp_path), timeout_s=0.5).take()
    try:
        first = json.loads((tmp_path / 'LEASE').read_text())['heartbeat']
        time.sleep(0.4)
        assert json.loads((tmp_path / 'LEASE').read_text())['heartbeat'] > first
    finally:
        lease.release()
