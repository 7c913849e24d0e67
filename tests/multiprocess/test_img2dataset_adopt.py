"""Shards written by img2dataset itself (its own venv: ``make .venv-img2dataset``), downloading from
an http.server on loopback, adopted as a source: trained on beside a built source and resumed
exactly, labels imported, and decontaminated against."""
import functools
import json
import os
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import REPO_ROOT, train_tiny, write_image

from labeling.human import import_human
from labeling.store import LabelStore
from labeling.tasks import TaskRegistry
from pretrain.apps.tiny_data import make
from shards.cli import main as shards_cli

pytestmark = pytest.mark.multiprocess
IMG2DATASET = REPO_ROOT / '.venv-img2dataset' / 'bin' / 'img2dataset'


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return make(str(tmp_path_factory.mktemp('tiny_data')), per_source=32)


@pytest.fixture
def web(tmp_path, tiny):
    """Images served on 127.0.0.1: 12 photos, one copy of an evaluation image (``val``'s first),
    one file that is not an image, and one URL that answers 404."""
    root = tmp_path / 'www'
    for i in range(12):
        write_image(root / f'{i}.jpg', seed=100 + i, size=(48, 40))
    shutil.copy(Path(tiny['shards']).parent / 'images' / 'val_0000.jpg', root / 'copy.jpg')
    (root / 'broken.jpg').write_bytes(b'<html>not an image</html>')
    server = ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(SimpleHTTPRequestHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()


def run_img2dataset(base_url: str, out: Path) -> None:
    if not IMG2DATASET.exists():
        pytest.fail(f'{IMG2DATASET} is missing: `make test` builds it (or `make .venv-img2dataset/.installed`)')
    names = [f'{i}.jpg' for i in range(12)] + ['copy.jpg', 'broken.jpg', 'missing.jpg']
    urls = out.parent / 'urls.jsonl'
    urls.write_text('\n'.join(json.dumps({'url': f'{base_url}/{n}', 'caption': n, 'label': i % 4})
                              for i, n in enumerate(names)))
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE='1', WANDB_MODE='disabled')
    subprocess.run([str(IMG2DATASET), '--url_list', str(urls), '--input_format', 'jsonl', '--url_col', 'url',
                    '--caption_col', 'caption', '--save_additional_columns', '["label"]', '--output_format',
                    'webdataset', '--output_folder', str(out), '--processes_count', '1', '--thread_count', '4',
                    '--number_sample_per_shard', '5', '--resize_mode', 'no', '--enable_wandb', 'False'],
                   check=True, capture_output=True, env=env, timeout=300)


def train(tiny, run_dir: Path, adopted: str, labels: str, max_steps: int) -> dict:
    return train_tiny(tiny, run_dir, {'data.sources': [{'name': 'lab', 'url': tiny['shards']}, {'name': 'web', 'url': adopted}],
                                      'data.label_store': labels, 'schedule.max_steps': max_steps,
                                      'checkpoint.every_steps': 2})


def test_img2dataset_shards_are_adopted_trained_on_resumed_labeled_and_decontaminated(web, tiny, tmp_path, capsys):
    out = tmp_path / 'i2d'
    run_img2dataset(web, out)
    assert sorted(p.name for p in out.glob('*.tar')) == ['00000.tar', '00001.tar', '00002.tar']

    # its _stats.json files are checked against the count; 13 of 15 URLs became samples
    assert shards_cli(['adopt', str(out), '--source', 'web', '--label', 'shape=json:label',
                       '--tasks-file', tiny['tasks_file']]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary['tars'], summary['samples'], summary['labels']) == (3, 13, {'shape': 13})
    assert shards_cli(['verify', str(out)]) == 0

    labels = tmp_path / 'labels'
    shutil.copytree(tiny['labels'], labels)
    store = LabelStore(str(labels), TaskRegistry.from_json(tiny['tasks_file']))
    assert import_human(store, str(out), ['shape']) == {'shape': 13}

    straight = train(tiny, tmp_path / 'straight', str(out), str(labels), 4)
    train(tiny, tmp_path / 'resumed', str(out), str(labels), 2)
    resumed = train(tiny, tmp_path / 'resumed', str(out), str(labels), 4)
    assert sorted(resumed) == [1, 2, 3, 4] and [resumed[s] for s in (3, 4)] == [straight[s] for s in (3, 4)]

    # the copy of an evaluation image among the downloads is found and excluded
    assert shards_cli(['hash', str(out)]) == 0
    exclusions = tmp_path / 'excl' / 'val.v1.parquet'
    assert shards_cli(['decontaminate', str(out), '--against', tiny['shards'], '--against-source', 'val',
                       '--out', str(exclusions)]) == 0
    printed = capsys.readouterr().out
    assert 'web' in printed and '       1 of         13 samples excluded' in printed
