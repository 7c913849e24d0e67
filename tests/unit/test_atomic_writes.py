"""Every atomic local write is durable: the file is fsynced before its rename and its folder after it,
so a checkpoint's COMMITTED marker never outlives (on a power loss) a part file it lists, and a shard
index never names a shard that is not on the disk. One owner writes them all (local_files.replacing)."""
import os
import stat

import pytest
import torch

from pretrain import checkpoint
from pretrain.models import lk_choice
from pretrain.models.lk_measure import LayerShape
from shards import storage
from shards.common import local_files


class DiskCalls:
    """What reached the disk, in order: ('fsync', 'file'|'folder', inode) and ('replace'|'link', target)."""

    def __init__(self, monkeypatch):
        self.calls = []
        fsync, replace, link = os.fsync, os.replace, os.link

        def recorded_fsync(fd):
            st = os.fstat(fd)
            self.calls.append(('fsync', 'folder' if stat.S_ISDIR(st.st_mode) else 'file', st.st_ino))
            fsync(fd)

        def recorded_replace(src, dst):
            self.calls.append(('replace', os.fspath(dst)))
            replace(src, dst)

        def recorded_link(src, dst):
            self.calls.append(('link', os.fspath(dst)))
            link(src, dst)
        monkeypatch.setattr(os, 'fsync', recorded_fsync)
        monkeypatch.setattr(os, 'replace', recorded_replace)
        monkeypatch.setattr(os, 'link', recorded_link)

    def assert_durable(self, path):
        """``path``'s bytes were fsynced, then it was renamed (or linked) into place, then its folder was fsynced."""
        path = os.path.abspath(path)
        file_ino, folder_ino = os.stat(path).st_ino, os.stat(os.path.dirname(path)).st_ino
        kinds = [(c[0], c[1]) if c[0] == 'fsync' else (c[0],) for c in self.calls]
        synced_file = ('fsync', 'file', file_ino) in self.calls
        assert synced_file, f'{path}: its bytes were never fsynced ({kinds})'
        placed = next(i for i, c in enumerate(self.calls) if c[0] in ('replace', 'link') and os.path.abspath(c[1]) == path)
        assert self.calls.index(('fsync', 'file', file_ino)) < placed, f'{path}: renamed before its bytes were fsynced'
        assert ('fsync', 'folder', folder_ino) in self.calls[placed + 1:], f'{path}: its folder was not fsynced after the rename'


def write_shard_index_bytes(path):
    storage.write_bytes_atomic(str(path), b'index')


def put_a_finished_shard(path):
    finished = path.parent.parent / 'finished.tar'
    finished.write_bytes(b'shard')
    storage.put_file_atomic(str(finished), str(path))


def create_a_label_task_record(path):
    assert storage.create_exclusive(str(path), b'{"task": 1}')


def write_a_checkpoint_part(path):
    checkpoint._save_atomic(dict(version=1, state={'w': torch.zeros(2)}), path)


def write_a_checkpoint_marker(path):
    checkpoint._write_json_atomic(path, dict(step=1))


def write_a_large_kernel_decision(path, monkeypatch):
    monkeypatch.setenv(lk_choice.CACHE_ENV, str(path.parent))
    lk_choice.save_entry('Card X', LayerShape('bfloat16', True, 64, 27, 14, 14), dict(cudnn=1.0), 32, {})
    return lk_choice.cache_file('Card X')


@pytest.mark.parametrize('writer', [write_shard_index_bytes, put_a_finished_shard, create_a_label_task_record,
                                    write_a_checkpoint_part, write_a_checkpoint_marker])
def test_an_atomic_write_fsyncs_the_file_before_its_rename_and_the_folder_after(writer, tmp_path, monkeypatch):
    target = tmp_path / 'out' / 'file'
    target.parent.mkdir()
    disk = DiskCalls(monkeypatch)
    writer(target)
    disk.assert_durable(target)


def test_the_large_kernel_decision_cache_is_written_durably_too(tmp_path, monkeypatch):
    disk = DiskCalls(monkeypatch)
    disk.assert_durable(write_a_large_kernel_decision(tmp_path / 'cache', monkeypatch))


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_staged_one(tmp_path):
    target = tmp_path / 'marker'
    target.write_bytes(b'old')
    with pytest.raises(RuntimeError, match='half way'):
        with local_files.replacing(str(target), hidden=True) as f:
            f.write(b'new, but not all of it')
            raise RuntimeError('killed half way')
    assert target.read_bytes() == b'old' and os.listdir(tmp_path) == ['marker']
