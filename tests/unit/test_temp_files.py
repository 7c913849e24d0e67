"""Temp files on shared machines: staged names are unpredictable and never written through a link
planted at them; a build removes leftover temp tars only when no live writer holds their lock
(containers sharing /tmp in separate PID namespaces see each other's PIDs as dead)."""
import os
import subprocess
import sys
import tempfile
import time

from shards import storage
from shards.build import TEMP_PREFIX, BuildOptions, remove_leftovers


def test_a_link_planted_at_the_staging_name_is_never_written_through(tmp_path):
    victim = tmp_path / 'victim.txt'
    victim.write_text('precious')
    target = tmp_path / 'out' / 'x-000000.tar'
    target.parent.mkdir()
    for name in (f'{target}.tmp-{os.getpid()}', f'{target}.tmp'):   # what a predictable name would be
        os.symlink(victim, name)
    source = tmp_path / 'local.tar'
    source.write_bytes(b'shard bytes')
    storage.put_file_atomic(str(source), str(target))
    assert victim.read_text() == 'precious' and target.read_bytes() == b'shard bytes'
    assert not target.is_symlink()
    staged_a, f = storage.open_staged(str(target))
    f.close()
    staged_b, f = storage.open_staged(str(target))
    f.close()
    assert staged_a != staged_b and len(staged_a) > len(f'{target}.tmp-{os.getpid()}-') + 8


HOLD_LOCK = '''
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print('locked', flush=True)
time.sleep(60)
'''


def test_a_leftover_temp_tar_is_removed_only_when_no_live_writer_holds_it(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    other_namespace = tmp_path / f'{TEMP_PREFIX}999999-abc.tar'   # a PID that looks dead from here
    other_namespace.write_bytes(b'half a shard')
    old = time.time() - 3600
    os.utime(other_namespace, (old, old))
    writer = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, str(other_namespace)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == 'locked'
        remove_leftovers(BuildOptions(str(tmp_path / 'out'), 's'))
        assert other_namespace.exists()   # its writer is alive, whatever its PID says
    finally:
        writer.kill()
        writer.wait()
    remove_leftovers(BuildOptions(str(tmp_path / 'out'), 's'))
    assert not other_namespace.exists()   # abandoned: removed


def test_a_fifo_planted_under_a_temp_tar_name_neither_blocks_nor_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    fifo = tmp_path / f'{TEMP_PREFIX}1-planted.tar'
    os.mkfifo(fifo)
    os.utime(fifo, (0, 0))
    remove_leftovers(BuildOptions(str(tmp_path / 'out'), 's'))   # opening it for reading blocked for ever
    assert fifo.exists()
