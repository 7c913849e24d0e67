"""Building from a Hugging Face dataset in Parquet, as ``datasets`` writes it and the Hub serves it:
an ``image`` struct ``{bytes, path}``, a ``label`` column whose ClassLabel names are in the
``huggingface`` schema metadata. Written here with pyarrow in that exact schema (``datasets`` is
not a dependency)."""
import io
import json
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from helpers import write_image
from PIL import Image

from shards import item_bytes
from shards.build import BuildOptions, build
from shards.cli import main as cli
from shards.index import ShardIndex
from shards.inputs import InputError
from shards.parquet_inputs import parquet_items

NAMES = ['cat', 'dog', 'fox']
HF_IMAGE = pa.struct([('bytes', pa.binary()), ('path', pa.string())])


def write_hf_parquet(path, images, labels, names=NAMES, row_group_size=3):
    """One Parquet file of a ``datasets`` dataset with Image and ClassLabel features."""
    features = {'image': {'_type': 'Image'}, 'label': {'names': names, '_type': 'ClassLabel'}}
    schema = pa.schema([('image', HF_IMAGE), ('label', pa.int64())],
                       metadata={'huggingface': json.dumps({'info': {'features': features}})})
    table = pa.table({'image': [{'bytes': b, 'path': f'{i}.jpg'} for i, b in enumerate(images)], 'label': labels},
                     schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


@pytest.fixture
def hf_dataset(tmp_path):
    """data/train-0000{0,1}-of-00002.parquet: 7 + 5 rows, row groups of 3; row 4 of file 0 unlabeled (-1)."""
    pics = [write_image(tmp_path / 'pics' / f'{i}.jpg', seed=i).read_bytes() for i in range(12)]
    labels = [i % 3 for i in range(12)]
    labels[4] = -1
    root = tmp_path / 'hf' / 'data'
    write_hf_parquet(root / 'train-00000-of-00002.parquet', pics[:7], labels[:7])
    write_hf_parquet(root / 'train-00001-of-00002.parquet', pics[7:], labels[7:])
    return root, pics, labels


def test_a_parquet_dataset_builds_with_its_labels_class_names_and_exact_image_bytes(hf_dataset, tmp_path):
    root, pics, labels = hf_dataset
    items, names = parquet_items(str(root / 'train-*.parquet'), 'animals')
    assert names == NAMES and len(items) == 12
    assert items[7].id == 'train-00001-of-00002.parquet#000000000'
    out = tmp_path / 'shards'
    report = build(items, BuildOptions(str(out), 'hf', samples_per_shard=5, progress=False), {'animals': names})
    assert report.samples == 12 and report.skipped == []
    index = ShardIndex.load(str(out))
    assert index.builds['hf']['classes'] == {'animals': NAMES}
    samples = list(wds.WebDataset(sorted(str(p) for p in out.glob('*.tar')), shardshuffle=False))
    assert [json.loads(s['json'])['labels'] for s in samples] == [{} if v < 0 else {'animals': v} for v in labels]
    assert [s['jpg'] for s in samples] == pics   # JPEGs are stored as given


def test_the_builder_reads_row_groups_never_whole_files(hf_dataset, tmp_path, monkeypatch):
    root, _, _ = hf_dataset
    items, names = parquet_items(str(root), 'animals')
    reads = []

    class Watched(pq.ParquetFile):
        def read(self, *a, **k):
            pytest.fail('a whole Parquet file was read')

        def read_row_group(self, i, columns=None, **k):
            reads.append((i, tuple(columns)))
            return super().read_row_group(i, columns, **k)
    monkeypatch.setattr(item_bytes, 'pq', SimpleNamespace(ParquetFile=Watched))
    build(items, BuildOptions(str(tmp_path / 'out'), 'hf', samples_per_shard=5, progress=False), {'animals': names})
    assert all(cols == ('image',) for _, cols in reads)
    assert len(reads) <= 3 + 2 + 2   # 5 row groups; a shard boundary inside a group reads it once more


def test_a_row_without_image_bytes_is_skipped_and_named(tmp_path):
    pics = [write_image(tmp_path / f'{i}.jpg', seed=i).read_bytes() for i in range(3)]
    path = write_hf_parquet(tmp_path / 'd' / 'x.parquet', pics, [0, 1, 2])
    table = pq.read_table(path)
    images = table.column('image').to_pylist()
    images[1] = {'bytes': None, 'path': '/data/elsewhere/1.jpg'}
    pq.write_table(table.set_column(0, table.schema.field('image'), pa.array(images, HF_IMAGE)), path)
    items, _ = parquet_items(str(path), 'animals')
    report = build(items, BuildOptions(str(tmp_path / 'out'), 'hf', progress=False))
    assert report.samples == 2
    assert report.skipped[0]['path'] == f'{path} row group 0 row 1'
    assert "only the path '/data/elsewhere/1.jpg'" in report.skipped[0]['reason']


def test_a_label_out_of_the_class_names_range_is_refused_naming_file_and_row(tmp_path):
    pic = write_image(tmp_path / 'a.jpg', seed=1).read_bytes()
    path = write_hf_parquet(tmp_path / 'd' / 'x.parquet', [pic, pic], [1, 3])
    with pytest.raises(InputError, match=r'x.parquet row 1: label 3 is out of range for the 3 ClassLabel names'):
        parquet_items(str(path), 'animals')


def test_files_that_disagree_on_class_names_are_refused(tmp_path):
    pic = write_image(tmp_path / 'a.jpg', seed=1).read_bytes()
    write_hf_parquet(tmp_path / 'd' / 'a.parquet', [pic], [0])
    write_hf_parquet(tmp_path / 'd' / 'b.parquet', [pic], [0], names=['dog', 'cat', 'fox'])
    with pytest.raises(InputError, match='ClassLabel names for .label. differ'):
        parquet_items(str(tmp_path / 'd'), 'animals')


def test_a_missing_image_column_names_the_columns_and_the_option(tmp_path):
    path = tmp_path / 'x.parquet'
    pq.write_table(pa.table({'img': [b'x'], 'label': [0]}), path)
    with pytest.raises(InputError, match=r"no image column 'image' \(columns: img, label\); name it with --image-column"):
        parquet_items(str(path), 'animals')


def test_the_cli_builds_a_parquet_split_and_says_what_it_labeled(hf_dataset, tmp_path, capsys):
    root, _, _ = hf_dataset
    out = tmp_path / 'shards'
    assert cli(['build', '--parquet', str(root / 'train-*.parquet'), '--source', 'hf', '--output', str(out),
                '--no-progress']) == 0
    printed = capsys.readouterr().out
    assert "12 rows, 11 labeled for task 'hf' (3 ClassLabel names)" in printed
    assert ShardIndex.load(str(out)).builds['hf']['classes'] == {'hf': NAMES}
    image = Image.open(io.BytesIO(next(iter(wds.WebDataset(str(out / 'hf-000000.tar'), shardshuffle=False)))['jpg']))
    assert image.size == (24, 20)
