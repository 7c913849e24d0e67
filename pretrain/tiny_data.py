"""A tiny labeled + unlabeled image set for ``configs/tiny_cpu.json`` (tests, CPU smoke runs).

    python -m pretrain.tiny_data runs/tiny_data

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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('out')
    p.add_argument('--per-source', type=int, default=48)
    args = p.parse_args(argv)
    print(json.dumps(make(args.out, args.per_source)))


if __name__ == '__main__':
    main()
