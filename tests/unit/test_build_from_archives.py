"""Building from tar archives without extracting them: ImageNet-22K's folder of class tars,
ImageNet-1K's tar of class tars, Places365's tar of class folders, an unlabeled pool in a tar."""
import gzip
import tarfile

import pytest

from shards.build import BuildOptions, build
from shards.index import ShardIndex
from shards.inputs import InputError, imagefolder_items, unlabeled_items


def _tar(path, files, base=None):
    """An uncompressed tar of ``files``, each under its name relative to ``base`` (default: its own name)."""
    with tarfile.open(path, 'w') as tar:
        for f in files:
            tar.add(f, arcname=str(f.relative_to(base)) if base else f.name)
    return path


def _build(items, classes, out):
    build(items, BuildOptions(str(out), 'zoo', samples_per_shard=5, progress=False), {'animals': classes})
    index = ShardIndex.load(str(out))
    return {n: e.sha256 for n, e in index.shards.items()}, index


def _folder_build(image_tree, tmp_path):
    items, classes = imagefolder_items(str(image_tree), 'animals')
    return _build(items, classes, tmp_path / 'from-folder')[0]


def test_a_folder_of_class_tars_builds_the_same_shards_as_the_extracted_folder(image_tree, tmp_path):
    tars = tmp_path / 'in22k'
    tars.mkdir()
    for cls in ('cat', 'dog', 'fox'):
        _tar(tars / f'{cls}.tar', sorted((image_tree / cls).iterdir()))
    items, classes = imagefolder_items(str(tars), 'animals')
    assert classes == ['cat', 'dog', 'fox'] and items[0].id == 'cat/0.jpg'
    assert _build(items, classes, tmp_path / 'from-tars')[0] == _folder_build(image_tree, tmp_path)


def test_a_tar_of_class_folders_below_common_folders_builds_the_same_shards(image_tree, tmp_path):
    archive = tmp_path / 'places.tar'
    with tarfile.open(archive, 'w') as tar:
        tar.add(image_tree, arcname='places365_standard/train')   # the folders above the classes are not classes
    items, classes = imagefolder_items(str(archive), 'animals')
    assert classes == ['cat', 'dog', 'fox']
    assert _build(items, classes, tmp_path / 'from-tar')[0] == _folder_build(image_tree, tmp_path)


def test_a_tar_of_class_tars_builds_the_same_shards(image_tree, tmp_path):
    inner = tmp_path / 'inner'
    inner.mkdir()
    archive = tmp_path / 'ILSVRC2012_img_train.tar'
    with tarfile.open(archive, 'w') as tar:
        for cls in ('cat', 'dog', 'fox'):
            tar.add(_tar(inner / f'{cls}.tar', sorted((image_tree / cls).iterdir())), arcname=f'{cls}.tar')
    items, classes = imagefolder_items(str(archive), 'animals')
    assert classes == ['cat', 'dog', 'fox']
    assert _build(items, classes, tmp_path / 'from-tar')[0] == _folder_build(image_tree, tmp_path)


def test_an_unlabeled_tar_becomes_an_unlabeled_source(image_tree, tmp_path):
    archive = _tar(tmp_path / 'pool.tar', sorted(image_tree.rglob('*.jpg')), image_tree)
    items = unlabeled_items(str(archive))
    assert len(items) == 18 and not any(it.labels for it in items)
    report = build(items, BuildOptions(str(tmp_path / 'out'), 'pool', progress=False))
    assert report.samples == 18 and report.skipped == []


def test_a_compressed_archive_is_refused_with_the_command_that_fixes_it(image_tree, tmp_path):
    plain = _tar(tmp_path / 'cat.tar', sorted((image_tree / 'cat').iterdir()))
    gz = tmp_path / 'pool.tar.gz'
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(InputError, match=r'gzip-compressed archive cannot be read in place.*gunzip pool.tar.gz'):
        unlabeled_items(str(gz))


def test_an_archive_truncated_after_listing_skips_and_names_the_lost_members(image_tree, tmp_path):
    archive = _tar(tmp_path / 'pool.tar', sorted(image_tree.rglob('*.jpg')), image_tree)
    items = unlabeled_items(str(archive))
    last = max(items, key=lambda it: it.at.offset)
    with open(archive, 'r+b') as f:
        f.truncate(last.at.offset + last.at.size // 2)
    report = build(items, BuildOptions(str(tmp_path / 'out'), 'pool', progress=False))
    assert report.samples == 17
    assert [s['path'] for s in report.skipped] == [f'{archive}:{last.id}']
    assert 'short of the member' in report.skipped[0]['reason']


def test_images_outside_class_folders_are_refused(image_tree, tmp_path):
    archive = tmp_path / 'flat.tar'
    with tarfile.open(archive, 'w') as tar:
        tar.add(image_tree / 'cat' / '0.jpg', arcname='0.jpg')
        tar.add(image_tree / 'dog' / '0.jpg', arcname='dog/0.jpg')
    with pytest.raises(InputError, match=r'0.jpg is not inside a class folder'):
        imagefolder_items(str(archive), 'animals')


def test_a_class_folders_subfolders_stay_in_its_class_as_in_the_extracted_tree(image_tree, tmp_path):
    for i in range(2):   # images one level down inside a class, as ImageFolder reads them
        (image_tree / 'cat' / 'more').mkdir(exist_ok=True)
        (image_tree / 'cat' / f'{i}.jpg').rename(image_tree / 'cat' / 'more' / f'{i}.jpg')
    archive = tmp_path / 'places.tar'
    with tarfile.open(archive, 'w') as tar:
        tar.add(image_tree, arcname='train')
    items, classes = imagefolder_items(str(archive), 'animals')
    folder_items, folder_classes = imagefolder_items(str(image_tree), 'animals')
    assert classes == folder_classes == ['cat', 'dog', 'fox']
    assert sorted((it.id, it.labels['animals']) for it in items) == sorted((it.id, it.labels['animals'])
                                                                           for it in folder_items)
