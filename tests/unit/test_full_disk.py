"""A full disk while building shards or writing labels: one line naming where, no partial files left,
and finished work kept. On a real small filesystem (a tmpfs; mounting one needs root)."""
import pytest
from helpers import write_image

from labeling import cli as label_cli
from shards import cli as shards_cli


@pytest.fixture
def full_disk(small_filesystem):
    return small_filesystem('256k')


def fill(disk, leave: int):
    """Take all but ``leave`` bytes of the filesystem."""
    import os
    st = os.statvfs(disk)
    (disk / 'ballast').write_bytes(b'\0' * max(0, st.f_bavail * st.f_frsize - leave))


def test_a_shard_build_onto_a_full_disk_is_one_line_naming_it_and_leaves_no_partial_file(tmp_path, full_disk, capsys):
    for i in range(12):
        write_image(tmp_path / 'tree' / ('a' if i % 2 else 'b') / f'{i}.jpg', seed=i, size=(64, 64))
    fill(full_disk, 20_000)
    code = shards_cli.main(['build', '--output', str(full_disk / 'shards'), '--source', 'pets',
                            '--imagefolder', str(tmp_path / 'tree'),
                            '--samples-per-shard', '4', '--no-progress'])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith('error: no space left on the disk holding ') and 'rerun' in err
    assert not [p for p in full_disk.rglob('*') if '.tmp-' in p.name]


def test_labels_written_onto_a_full_disk_are_one_line_naming_it_and_leave_no_partial_file(tmp_path, full_disk, capsys):
    from pretrain.apps.tiny_data import make
    tiny = make(str(tmp_path / 'tiny'), per_source=8)
    fill(full_disk, 3_000)
    code = label_cli.main(['import-human', '--store', str(full_disk / 'store'), '--shards', tiny['shards'],
                           '--task', 'shape', '--tasks-file', tiny['tasks_file']])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith('error: no space left on the disk holding ' + str(full_disk / 'store'))
    assert not [p for p in full_disk.rglob('*') if '.tmp-' in p.name]
