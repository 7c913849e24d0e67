"""A tiny labeled + unlabeled image set for ``configs/tiny_cpu.json`` (tests, CPU smoke runs).

    python -m pretrain.apps.tiny_data runs/tiny_data

Two tasks over synthetic images whose class is visible (a colour per ``shape`` class, a
stripe direction per ``stripes`` class): source ``lab`` carries human labels for both,
``unl`` none, ``val`` is held out. Human labels are imported into a label store.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from labeling.human import import_human
from labeling.store import LabelStore
from labeling.tasks import TaskRegistry
from shards.build import BuildOptions, build
from shards.common.helpformat import HelpFormatter, command_name
from shards.inputs import Item

TASKS = {'shape': 4, 'stripes': 3}


def _image(path: Path, shape: int, stripes: int, rng) -> None:
    colours = [(220, 40, 40), (40, 200, 40), (40, 60, 220), (220, 200, 40)]
    img = np.full((40, 48, 3), colours[shape], dtype=np.float32)
    y, x = np.mgrid[0:40, 0:48]
    wave = [np.sin(x / 2.0), np.sin(y / 2.0), np.sin((x + y) / 2.0)][stripes]
    img += 40 * wave[..., None] + rng.normal(0, 12, img.shape)
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, 'JPEG', quality=90)


def make(out: str, per_source: int = 48, seed: int = 0) -> dict:
    root = Path(out)
    rng = np.random.default_rng(seed)
    (root / 'images').mkdir(parents=True, exist_ok=True)
    for source, labeled in (('lab', True), ('unl', False), ('val', True)):
        items = []
        for i in range(per_source):
            shape, stripes = int(rng.integers(4)), int(rng.integers(3))
            path = root / 'images' / f'{source}_{i:04d}.jpg'
            _image(path, shape, stripes, rng)
            items.append(Item(str(path), path.name, {'shape': shape, 'stripes': stripes} if labeled else {}))
        build(items, BuildOptions(str(root / 'shards'), source, samples_per_shard=8, progress=False))
    tasks_file = root / 'tasks.json'
    tasks_file.write_text(json.dumps({t: {'num_classes': n} for t, n in TASKS.items()}))
    store = LabelStore(str(root / 'labels'), TaskRegistry.from_json(str(tasks_file)))
    import_human(store, str(root / 'shards'), list(TASKS))
    return dict(shards=str(root / 'shards'), labels=str(root / 'labels'), tasks_file=str(tasks_file))


MEGADATA_SOURCES = ('in1k', 'in22k', 'places365', 'yfcc')   # the source names of configs/xl_megadata.json
BUILTIN_CLASSES = {'in1k': 1000, 'in22k': 21841, 'places365': 365}


def make_megadata(out: str, per_source: int = 8, samples_per_shard: int = 4, seed: int = 0) -> dict:
    """Random images under the recipe's source names, with human labels of the built-in tasks
    (in1k, in22k, places365; yfcc unlabeled) in a label store: configs/xl_megadata.json runs on
    it with only locations and sizes overridden."""
    root = Path(out)
    rng = np.random.default_rng(seed)
    (root / 'images').mkdir(parents=True, exist_ok=True)
    for prefix, source in [('megadata', s) for s in MEGADATA_SOURCES] + [('megadata_val', 'in1k_val')]:
        task = 'in1k' if source == 'in1k_val' else source
        items = []
        for i in range(per_source):
            path = root / 'images' / f'{source}_{i:05d}.jpg'
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path, 'JPEG', quality=90)
            labels = {task: int(rng.integers(BUILTIN_CLASSES[task]))} if task in BUILTIN_CLASSES else {}
            items.append(Item(str(path), path.name, labels))
        build(items, BuildOptions(str(root / prefix), source, samples_per_shard=samples_per_shard, progress=False))
    store = LabelStore(str(root / 'labels'), TaskRegistry())
    for prefix in ('megadata', 'megadata_val'):
        import_human(store, str(root / prefix), list(BUILTIN_CLASSES))
    return dict(shards=str(root / 'megadata'), val_shards=str(root / 'megadata_val'), labels=str(root / 'labels'))


def megadata_overrides(data: dict) -> dict:
    """``--set`` values that point configs/xl_megadata.json at :func:`make_megadata`'s output."""
    return {'data.sources': [{'name': s, 'url': data['shards']} for s in MEGADATA_SOURCES],
            'data.val_sources': [{'name': 'in1k_val', 'url': data['val_shards']}],
            'data.label_store': data['labels']}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog=command_name('pretrain.apps.tiny_data'), description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('out')
    p.add_argument('--per-source', type=int, default=48)
    args = p.parse_args(argv)
    print(json.dumps(make(args.out, args.per_source)))


if __name__ == '__main__':
    main()
