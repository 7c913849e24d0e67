"""Near-duplicates of evaluation images found in a training source, listed, and left out of the stream."""
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageOps
from sklearn.datasets import load_sample_images

from shards.build import BuildOptions, build
from shards.cli import main as cli
from shards.exclusions import kept_to_raw
from shards.exclusions import load as load_exclusions
from shards.hashes import load_hashes
from shards.index import source_folder
from shards.inputs import Item
from shards.loader import ResumableLoader, ShardStream
from shards.reader import iter_shard_samples
from shards.stream import SourceSpec, StreamConfig

EDITS = ('resized', 'quality 40', 'cropped', 'flipped', 'flipped, cropped, resized')


def distinct_photos():
    """32 different pictures: the non-overlapping 100 px tiles of scikit-learn's two photos that show
    something (grey-level std >= 15: not blank sky), at 250 px."""
    tiles = []
    for photo in load_sample_images().images:
        img = Image.fromarray(photo)
        for y in range(0, img.height - 100, 100):
            for x in range(0, img.width - 100, 100):
                tile = img.crop((x, y, x + 100, y + 100)).resize((250, 250), Image.Resampling.BICUBIC)
                if np.asarray(tile.convert('L'), dtype=np.float32).std() >= 15:
                    tiles.append(tile)
    assert len(tiles) == 32
    return tiles


def crop_few_percent(img, rnd):
    """Cropped by 1-5% of each dimension, at a random anchor."""
    w, h = img.size
    fw, fh = rnd.uniform(.01, .05), rnd.uniform(.01, .05)
    x0, y0 = rnd.uniform(0, w * fw), rnd.uniform(0, h * fh)
    return img.crop((round(x0), round(y0), round(x0 + w * (1 - fw)), round(y0 + h * (1 - fh))))


def edited(img, edit, rnd):
    if edit == 'resized':
        return img.resize((170, 170), Image.Resampling.BILINEAR), 90
    if edit == 'quality 40':
        return img, 40
    if edit == 'cropped':
        return crop_few_percent(img, rnd), 90
    if edit == 'flipped':
        return ImageOps.mirror(img), 90
    return ImageOps.mirror(crop_few_percent(img, rnd)).resize((230, 230), Image.Resampling.BICUBIC), 75


@pytest.fixture(scope='module')
def contaminated(tmp_path_factory):
    """Evaluation source ``val``: 8 photos and a plain grey picture; training source ``pool``: 24 other
    photos and the 8 evaluation photos planted 5 times each, edited (40), in shuffled order, shards of 8."""
    root = tmp_path_factory.mktemp('decon')
    photos, rnd = distinct_photos(), random.Random(0)
    evals, others = photos[:8], photos[8:]
    val = []
    Image.new('RGB', (250, 250), (120, 120, 118)).save(root / 'val8.jpg', quality=90)  # too plain to match
    for i, img in enumerate(evals + [Image.open(root / 'val8.jpg')]):
        img.save(root / f'val{i}.jpg', quality=90)
        val.append(Item(str(root / f'val{i}.jpg'), f'val{i}', {'t': 0}))
    pool, planted = [], {}
    for i, img in enumerate(others):
        img.save(root / f'other{i}.jpg', quality=90)
        pool.append(str(root / f'other{i}.jpg'))
    for i, img in enumerate(evals):
        for edit in EDITS:
            copy, quality = edited(img, edit, rnd)
            path = root / f'copy{i}-{EDITS.index(edit)}.jpg'
            copy.save(path, quality=quality)
            planted[str(path)] = (f'val{i}', edit)
            pool.append(str(path))
    rnd.shuffle(pool)
    items = [Item(p, f'img{n:03d}') for n, p in enumerate(pool)]
    build(val, BuildOptions(str(root / 'val'), 'val', samples_per_shard=4, progress=False))
    build(items, BuildOptions(str(root / 'train'), 'pool', samples_per_shard=8, progress=False))
    ids = {it.id: it.path for it in items}
    return root, planted, ids


def run_decontaminate(root, out='excl/v1.parquet'):
    assert cli(['decontaminate', str(root / 'train'), '--against', str(root / 'val'), '--out', str(root / out)]) == 0
    return load_exclusions(str(root / out))


def sample_ids(folder):
    """key -> input id of every sample of the shards in ``folder`` (from the sample metadata)."""
    out = {}
    for tar in sorted(folder.glob('*.tar')):
        for raw in iter_shard_samples(str(tar)):
            out[raw['__key__']] = json.loads(raw['json'])['id']
    return out


def test_every_planted_copy_is_found_and_no_distinct_photo_matches(contaminated, capsys):
    root, planted, ids = contaminated
    excl = run_decontaminate(root)
    assert 'pool               40 of         64 samples excluded' in capsys.readouterr().out
    train_ids, val_ids = sample_ids(root / 'train'), sample_ids(root / 'val')
    found = {ids[train_ids[r['key']]]: val_ids[r['eval_key']] for r in pq.read_table(root / 'excl/v1.parquet').to_pylist()}
    assert set(found) == set(planted)  # all 40 copies, nothing else
    assert {path: found[path] for path in planted} == {path: val_id for path, (val_id, _) in planted.items()}
    report = json.loads((root / 'excl/v1.report.json').read_text())
    assert report['sources'] == {'pool': {'samples': 64, 'excluded': 40}}
    assert (report['against']['images'], report['against']['too_plain']) == (8, 1)
    assert report['id'] == excl.id and excl.info['version'] == 1
    assert (root / 'excl/v1.pairs.png').stat().st_size > 5000


def test_the_stream_leaves_out_excluded_samples_with_exact_epochs_and_resume(contaminated):
    root, _, _ = contaminated
    excl = run_decontaminate(root)
    excluded = {k for _, _, keys in excl.by_shard.values() for k in keys}

    def loader(rank=0, exclude=str(root / 'excl/v1.parquet')):
        ds = ShardStream([SourceSpec('pool', str(root / 'train'))],
                         StreamConfig(shuffle_buffer=4, exclude=exclude),
                         lambda img: torch.zeros(1), rank, 2, 1, batch_size=2)
        return ResumableLoader(ds, num_workers=0)

    epoch = [k for r in range(2) for b in loader(r) for k in b['key']]
    assert len(epoch) == len(set(epoch)) == 24 and not set(epoch) & excluded  # 24 kept, 12 per rank
    reference = loader()
    expected = [k for _ in range(2) for b in reference for k in b['key']]
    run = loader()
    got = []
    for i, batch in enumerate(run):
        got += batch['key']
        if i == 2:
            break
    fresh = loader()
    fresh.load_state_dict(run.state_dict())
    got += [k for _ in range(2) for b in fresh for k in b['key']]
    assert got == expected
    with pytest.raises(ValueError, match='saved with exclusion list .*, this run has None'):
        plain = loader(exclude=None)
        plain.load_state_dict(run.state_dict())


def test_kept_positions_map_past_excluded_ones():
    assert [kept_to_raw(k, (1, 2, 5)) for k in range(5)] == [0, 3, 4, 6, 7]
    assert [kept_to_raw(k, ()) for k in range(3)] == [0, 1, 2]


def test_a_list_for_rebuilt_or_other_shards_is_an_error_naming_it(contaminated, tmp_path):
    root, _, _ = contaminated
    run_decontaminate(root)
    other = tmp_path / 'other'
    img = tmp_path / 'x.jpg'
    distinct_photos()[0].save(img)
    build([Item(str(img), f'x{i}') for i in range(4)], BuildOptions(str(other), 'pool', samples_per_shard=4,
                                                                     progress=False))
    with pytest.raises(ValueError, match='was made for other bytes of .*pool-000000.tar'):
        ShardStream([SourceSpec('pool', str(other))], StreamConfig(exclude=str(root / 'excl/v1.parquet')),
                    lambda img: img, 0, 1, 1, batch_size=1)
    (tmp_path / 'bad.parquet').write_bytes(b'not parquet')
    with pytest.raises(ValueError, match='bad.parquet is not an exclusion list'):
        load_exclusions(str(tmp_path / 'bad.parquet'))
    with pytest.raises(FileNotFoundError, match='missing.parquet not found'):
        load_exclusions(str(tmp_path / 'missing.parquet'))


def test_shards_built_without_hashes_are_hashed_by_a_separate_pass(contaminated, tmp_path, capsys):
    root, _, _ = contaminated
    copy = tmp_path / 'train'
    shutil.copytree(root / 'train', copy)
    before = load_hashes(str(copy), 'pool')
    folder = Path(source_folder(str(copy), 'pool'))
    for seg in folder.glob('hashes.*.parquet'):
        seg.unlink()
    assert cli(['decontaminate', str(copy), '--against', str(root / 'val'), '--out', str(tmp_path / 'x.parquet')]) == 2
    assert 'no perceptual hashes for 8 shards of \'pool\'' in capsys.readouterr().err
    capsys.readouterr()
    assert cli(['hash', str(copy), '--num-jobs', '2', '--job-index', '1']) == 0
    assert cli(['hash', str(copy), '--num-jobs', '2', '--job-index', '0']) == 0
    assert capsys.readouterr().out.splitlines() == ['pool: 4 shards hashed by job 1 of 2', 'pool: 4 shards hashed by job 0 of 2']
    after = load_hashes(str(copy), 'pool')
    assert after.to_pylist() == before.to_pylist()
    assert np.all(after['phash'].to_numpy() > 0)


def test_a_mistyped_source_or_an_empty_prefix_is_an_error_naming_it(contaminated, tmp_path, capsys):
    root, _, _ = contaminated
    out = str(tmp_path / 'x.parquet')
    assert cli(['decontaminate', str(root / 'train'), '--source', 'pol', '--against', str(root / 'val'),
                '--out', out]) == 2
    assert "source 'pol': no shards indexed under" in capsys.readouterr().err
    assert cli(['decontaminate', str(tmp_path / 'nothing'), '--against', str(root / 'val'), '--out', out]) == 2
    assert 'no shard index under' in capsys.readouterr().err
    assert cli(['hash', str(root / 'train'), '--source', 'pol']) == 2
    assert "source 'pol': no shards indexed" in capsys.readouterr().err
    assert not (tmp_path / 'x.parquet').exists()
