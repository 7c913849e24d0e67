"""A Ctrl-C that stops the training process while a loader worker hands it a batch leaves no
traceback on the console (CI saw one: the worker's fd-sharing thread reporting the reset)."""
import subprocess
import sys
import textwrap

from tests.helpers import REPO_ROOT

HANG_UP_MID_HANDOVER = textwrap.dedent('''
    import os, socket, struct, sys, time
    from multiprocessing import resource_sharer
    from shards.loader import leave_stopping_to_the_parent
    leave_stopping_to_the_parent(0)
    if sys.argv[1] == 'other-error':
        raise RuntimeError('a real fault in the worker')
    r, w = os.pipe()
    resource_sharer.DupFd(r)                 # what pickling a shared tensor does in a worker
    peer = socket.socket(socket.AF_UNIX)
    peer.connect(resource_sharer._resource_sharer._address)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    peer.close()                             # the parent, interrupted mid-handover, resets it
    time.sleep(0.5)
    print('worker still fine')
''')


def run_worker(case: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', HANG_UP_MID_HANDOVER, case], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_a_parent_hanging_up_mid_batch_handover_prints_no_traceback_from_the_worker():
    done = run_worker('hang-up')
    assert done.returncode == 0 and 'worker still fine' in done.stdout
    assert 'Traceback' not in done.stderr, done.stderr


def test_any_other_error_in_a_worker_is_still_reported():
    done = run_worker('other-error')
    assert done.returncode == 1
    assert 'RuntimeError: a real fault in the worker' in done.stderr
