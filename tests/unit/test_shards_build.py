"""Building, verifying and counting shards on local disk."""
import io
import json
import re
from pathlib import Path

import pytest
import webdataset as wds
from helpers import rewrite_tar_member, write_image

from shards import build as build_mod
from shards.build import BuildOptions, build
from shards.cli import main as cli
from shards.index import ShardIndex, save_job_part
from shards.inputs import Item, filelist_items, imagefolder_items, unlabeled_items
from shards.verify import verify


def build_tree(tree, out, **kw):
    items, classes = imagefolder_items(str(tree), 'animals')
    return build(items, BuildOptions(str(out), 'zoo', progress=False, **kw), {'animals': classes})


def test_imagefolder_build_is_readable_by_plain_webdataset(image_tree, tmp_path):
    out = tmp_path / 'shards'
    report = build_tree(image_tree, out, samples_per_shard=5)
    assert report.samples == 18 and report.shards_written == 4
    samples = list(wds.WebDataset(sorted(str(p) for p in out.glob('*.tar')), shardshuffle=False))
    assert len(samples) == 18
    meta = json.loads(samples[0]['json'])
    hashes = {k: meta.pop(k) for k in ('phash', 'dhash')}  # perceptual hashes, 64 bits as hex
    assert meta == {'source': 'zoo', 'id': 'cat/0.jpg', 'labels': {'animals': 0}}
    assert all(re.fullmatch('[0-9a-f]{16}', h) for h in hashes.values())
    assert samples[0]['__key__'] == 'zoo/000000/000000'
    index = ShardIndex.load(str(out))
    assert index.totals()['zoo']['tasks'] == {'animals': 18}
    assert index.builds['zoo']['classes'] == {'animals': ['cat', 'dog', 'fox']}
    assert verify(str(out)) == []


def test_keys_are_stable_across_rebuilds(image_tree, tmp_path):
    build_tree(image_tree, tmp_path / 'a', samples_per_shard=4)
    build_tree(image_tree, tmp_path / 'b', samples_per_shard=4)
    a, b = ShardIndex.load(str(tmp_path / 'a')), ShardIndex.load(str(tmp_path / 'b'))
    assert {n: e.sha256 for n, e in a.shards.items()} == {n: e.sha256 for n, e in b.shards.items()}


@pytest.mark.parametrize('change', [dict(max_side=16), dict(quality=70)])
def test_resuming_with_another_encoding_is_refused(image_tree, tmp_path, change):
    build_tree(image_tree, tmp_path / 'out', samples_per_shard=4)
    with pytest.raises(ValueError, match='would mix two encodings in one source'):
        build_tree(image_tree, tmp_path / 'out', samples_per_shard=4, **change)


def test_skip_reasons_are_deterministic_so_identical_builds_give_identical_indexes(tmp_path):
    root = tmp_path / 'in' / 'only'
    write_image(root / 'ok.jpg', 1)
    (root / 'html.jpg').write_bytes(b'<html>not an image</html>')
    for out in ('a', 'b'):
        build_tree(tmp_path / 'in', tmp_path / out)
    index = Path('_index') / 'zoo'
    for name in ('shards.00000-of-00001.parquet', 'skipped.00000-of-00001.jsonl', 'build.json'):
        assert (tmp_path / 'a' / index / name).read_bytes() == (tmp_path / 'b' / index / name).read_bytes(), name
    assert ' at 0x' not in (tmp_path / 'a' / index / 'skipped.00000-of-00001.jsonl').read_text()


def test_corrupt_files_are_skipped_and_listed_odd_images_are_kept(tmp_path):
    root = tmp_path / 'in' / 'only'
    write_image(root / 'cmyk.jpg', 1, mode='CMYK')
    write_image(root / 'gray.png', 2, mode='L')
    write_image(root / 'alpha.png', 3, mode='RGBA')
    write_image(root / 'deep.png', 4, mode='I;16')
    (root / 'empty.jpg').write_bytes(b'')
    (root / 'text.jpg').write_bytes(b'this is not an image')
    good = write_image(root / 'trunc_src.jpg', 5, size=(64, 64)).read_bytes()
    (root / 'truncated.jpg').write_bytes(good[:len(good) // 2])
    report = build_tree(tmp_path / 'in', tmp_path / 'out')
    reasons = {s['id'].split('/')[-1]: s['reason'] for s in report.skipped}
    assert set(reasons) == {'empty.jpg', 'text.jpg', 'truncated.jpg'}
    assert 'zero-byte' in reasons['empty.jpg']
    assert report.samples == 5  # cmyk, gray, alpha, 16-bit and the intact source
    assert verify(str(tmp_path / 'out')) == []


def test_reencode_limits_the_longest_side(tmp_path):
    write_image(tmp_path / 'in' / 'c' / 'big.png', 1, size=(300, 200))
    build_tree(tmp_path / 'in', tmp_path / 'out', max_side=64, quality=80)
    sample = next(iter(wds.WebDataset(str(tmp_path / 'out' / 'zoo-000000.tar'), shardshuffle=False)))
    from PIL import Image
    assert 'jpg' in sample and Image.open(io.BytesIO(sample['jpg'])).size == (64, 43)


def test_interrupted_build_resumes_without_redoing_finished_shards(image_tree, tmp_path, monkeypatch):
    out = tmp_path / 'shards'
    real = build_mod.write_shard

    def dies_on_third(job):
        if job['shard'] == 2:
            raise KeyboardInterrupt('killed')
        return real(job)
    monkeypatch.setattr(build_mod, 'write_shard', dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        build_tree(image_tree, out, samples_per_shard=4)
    assert sorted(ShardIndex.load(str(out)).shards) == ['zoo-000000.tar', 'zoo-000001.tar']
    faults = verify(str(out))   # what the index lists is whole; that the build is not is said
    assert len(faults) == 1 and "source 'zoo' is incomplete: 3 of 5 planned shards" in faults[0]
    monkeypatch.setattr(build_mod, 'write_shard', real)
    report = build_tree(image_tree, out, samples_per_shard=4)
    assert (report.shards_skipped_as_done, report.shards_written) == (2, 3)
    build_tree(image_tree, tmp_path / 'clean', samples_per_shard=4)
    clean = ShardIndex.load(str(tmp_path / 'clean'))
    assert {n: e.sha256 for n, e in ShardIndex.load(str(out)).shards.items()} == \
        {n: e.sha256 for n, e in clean.shards.items()}


def test_resuming_with_other_inputs_is_refused(image_tree, tmp_path):
    build_tree(image_tree, tmp_path / 'out', samples_per_shard=4)
    with pytest.raises(ValueError, match='other inputs'):
        build_tree(image_tree, tmp_path / 'out', samples_per_shard=5)


def test_parallel_workers_build_the_same_shards(image_tree, tmp_path):
    build_tree(image_tree, tmp_path / 'one', samples_per_shard=4)
    build_tree(image_tree, tmp_path / 'two', samples_per_shard=4, workers=2)
    one, two = ShardIndex.load(str(tmp_path / 'one')), ShardIndex.load(str(tmp_path / 'two'))
    assert {n: e.sha256 for n, e in one.shards.items()} == {n: e.sha256 for n, e in two.shards.items()}


def test_file_lists_carry_labels_for_several_tasks(tmp_path):
    for i in range(3):
        write_image(tmp_path / f'{i}.jpg', i)
    (tmp_path / 'list.csv').write_text('path,in1k,places365\n0.jpg,5,\n1.jpg,,7\n2.jpg,1,2\n')
    (tmp_path / 'list.tsv').write_text('path\tid\tin1k\n0.jpg\tim0\t3\n')
    (tmp_path / 'list.jsonl').write_text('{"path": "1.jpg", "labels": {"in22k": 9}}\n')
    csv_items = filelist_items(str(tmp_path / 'list.csv'))
    assert [it.labels for it in csv_items] == [{'in1k': 5}, {'places365': 7}, {'in1k': 1, 'places365': 2}]
    assert filelist_items(str(tmp_path / 'list.tsv'))[0] == Item(str(tmp_path / '0.jpg'), 'im0', {'in1k': 3})
    assert filelist_items(str(tmp_path / 'list.jsonl'))[0].labels == {'in22k': 9}
    (tmp_path / 'bad.csv').write_text('path,in1k\n0.jpg,cat\n')
    with pytest.raises(ValueError, match=r'bad.csv:2 task in1k'):
        filelist_items(str(tmp_path / 'bad.csv'))
    report = build(csv_items, BuildOptions(str(tmp_path / 'out'), 'mixed', progress=False))
    assert ShardIndex.load(str(tmp_path / 'out')).totals()['mixed']['tasks'] == {'in1k': 2, 'places365': 2}
    assert report.samples == 3


def test_unlabeled_folder_and_list(tmp_path):
    for i in range(3):
        write_image(tmp_path / 'u' / f'{i}.jpg', i)
    (tmp_path / 'paths.txt').write_text('u/0.jpg\nu/2.jpg\n')
    assert len(unlabeled_items(str(tmp_path / 'u'))) == 3
    assert [it.id for it in unlabeled_items(str(tmp_path / 'paths.txt'))] == ['u/0.jpg', 'u/2.jpg']


def test_verify_names_every_fault(image_tree, tmp_path, capsys):
    out = tmp_path / 'shards'
    build_tree(image_tree, out, samples_per_shard=4)
    (out / 'zoo-000000.tar').unlink()                                        # missing
    data = (out / 'zoo-000001.tar').read_bytes()
    (out / 'zoo-000001.tar').write_bytes(data[:len(data) // 2])              # truncated
    rewrite_tar_member(out / 'zoo-000002.tar', 'zoo/000002/000001.jpg', b'junk')  # undecodable image
    index = ShardIndex.load(str(out))                                        # a duplicate key
    dup = index.shards['zoo-000003.tar']
    (out / 'zoo-000099.tar').write_bytes((out / 'zoo-000003.tar').read_bytes())
    save_job_part(str(out), 'zoo', 1, 2, [type(dup)(**{**dup.__dict__, 'name': 'zoo-000099.tar'})])  # another job's
    faults = '\n'.join(verify(str(out)))
    assert 'zoo-000000.tar: listed in the index (_index/) but missing' in faults
    assert 'zoo-000001.tar' in faults and 'bytes' in faults
    assert 'zoo-000002.tar: sample zoo/000002/000001 image does not decode' in faults
    assert 'key zoo/000003/000000 also in' in faults
    assert cli(['verify', str(out)]) == 1
    assert 'FAULT' in capsys.readouterr().out


def test_cli_build_and_stat(image_tree, tmp_path, capsys):
    out = tmp_path / 'cli'
    assert cli(['build', '--imagefolder', str(image_tree), '--output', str(out), '--source', 'in1k',
                '--samples-per-shard', '10', '--no-progress']) == 0
    assert cli(['verify', str(out)]) == 0
    capsys.readouterr()
    assert cli(['stat', str(out), '--json']) == 0
    totals = json.loads(capsys.readouterr().out)
    assert totals['in1k']['samples'] == 18 and totals['in1k']['tasks'] == {'in1k': 18}
    assert cli(['stat', str(tmp_path / 'nowhere')]) == 2
    assert 'no shards were ever completed' in capsys.readouterr().err


def test_a_rerun_removes_what_a_killed_build_left_and_verify_mentions_it(image_tree, tmp_path, capsys):
    import os
    import tempfile
    out = tmp_path / 'out'
    build_tree(image_tree, out, samples_per_shard=4)
    (out / 'zoo-000001.tar.tmp-4242').write_bytes(b'half a shard')
    dead = os.path.join(tempfile.gettempdir(), f'{build_mod.TEMP_PREFIX}999999999-x.tar')
    open(dead, 'wb').close()
    os.utime(dead, (0, 0))   # left long ago by a killed build (a new one may not be locked yet)
    assert cli(['verify', str(out), '--no-decode']) == 0
    assert 'zoo-000001.tar.tmp-4242 is not in the index' in capsys.readouterr().out
    build_tree(image_tree, out, samples_per_shard=4)
    assert not (out / 'zoo-000001.tar.tmp-4242').exists() and not os.path.exists(dead)


def test_16_bit_pngs_are_stored_as_8_bit_that_every_decoder_reads_alike(tmp_path):
    import numpy as np
    from PIL import Image
    root = tmp_path / 'in' / 'only'
    root.mkdir(parents=True)
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 8).astype(np.uint16)).save(root / 'deep.png')
    build_tree(tmp_path / 'in', tmp_path / 'out')
    sample = next(iter(wds.WebDataset(str(tmp_path / 'out' / 'zoo-000000.tar'), shardshuffle=False).decode('pil')))
    pixels = np.asarray(sample['png'].convert('L'))
    assert pixels.min() < 10 and pixels.max() > 100 and (pixels < 255).all()  # a gradient, not all white


def legacy_index_json(out):
    """Turn a build into what the previous layout wrote: one _index.json, skipped lists inline."""
    from dataclasses import asdict
    index = ShardIndex.load(str(out))
    shards = []
    for e in index.shards.values():
        record = {k: v for k, v in asdict(e).items() if k != 'skipped_count'}
        shards.append(record)
    (out / '_index.json').write_text(json.dumps(dict(version=1, builds=index.builds, shards=shards)))
    import shutil
    shutil.rmtree(out / '_index')


def test_an_older_single_index_is_read_resumed_and_migrated(image_tree, tmp_path, capsys):
    from shards import index as index_mod
    out = tmp_path / 'old'
    build_tree(image_tree, out, samples_per_shard=4)
    before = {n: e.sha256 for n, e in ShardIndex.load(str(out)).shards.items()}
    legacy_index_json(out)
    index_mod._CACHE.clear()
    assert {n: e.sha256 for n, e in ShardIndex.load(str(out)).shards.items()} == before   # read as it is
    assert build_tree(image_tree, out, samples_per_shard=4).shards_written == 0            # resumes: all done
    assert cli(['migrate-index', str(out)]) == 0
    assert 'zoo: 5 shards moved to _index/zoo/' in capsys.readouterr().out
    assert not (out / '_index.json').exists()
    assert {n: e.sha256 for n, e in ShardIndex.load(str(out)).shards.items()} == before
    assert verify(str(out)) == []
    assert cli(['migrate-index', str(out)]) == 2                                           # nothing left to move
