"""Loader throughput on one core: our shard stream vs a plain webdataset + timm pipeline.

Builds shards of realistic photos (JPEG ~500x375, quality 90, cut and scaled from the real
photos scikit-learn ships), then measures samples/s in three modes -- read only; decode;
decode + RandomResizedCrop 224 + flip + RandAugment (uint8 out) in batches -- for both pipelines
on the same shards. The peer is what its users run: plain ``webdataset`` with ``.decode("pil")``,
timm's ``create_transform(use_prefetcher=True)`` and ``.batched()``. Both get the same
Pillow-13-safe posterize (timm's own crashes on Pillow 13). A shared machine's speed drifts, so
the two run alternately, ``--repeats`` times, and the ratio is the median of the per-pair ratios.
The line ``full, timm warps`` is our stream with timm's own transform (``compose_warps=False``):
what the stream gives without the transform's gain.

    pip install scikit-learn   # the bench extra
    python bench/loader.py --images 400 --repeats 7
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shards import storage  # noqa: E402
from shards.build import BuildOptions, build  # noqa: E402
from shards.images import decode_rgb  # noqa: E402
from shards.inputs import Item  # noqa: E402
from shards.loader import ResumableLoader, ShardStream  # noqa: E402
from shards.reader import iter_shard_samples  # noqa: E402
from shards.stream import SourceSpec, StreamConfig, resolve_source  # noqa: E402
from shards.transforms import TransformConfig, _patch_posterize, train_transform  # noqa: E402


def make_photos(folder: Path, n: int, size: tuple, seed: int = 0) -> list:
    """``n`` distinct photos: random crops of the sample photos, scaled to ``size``, JPEG q90."""
    from sklearn.datasets import load_sample_images

    sources = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        src = sources[i % len(sources)]
        w, h = src.size
        cw = int(rng.uniform(0.5, 1.0) * w)
        ch = min(h, int(cw * size[1] / size[0]))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = src.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f'{i:06d}.jpg'
        img.save(path, 'JPEG', quality=90)
        items.append(Item(str(path), path.name, {'bench': i % 10}))
    return items


BATCH = 32


def ours(prefix: str, mode: str, n: int):
    cfg = TransformConfig(compose_warps=mode != 'full-timm-warps')
    src = resolve_source(SourceSpec('photos', prefix))
    raw = (s for url, c in zip(src.urls, src.counts) for s in iter_shard_samples(url, 0, c, storage.DEFAULT_RETRY))
    if mode == 'read':
        return raw
    min_side = cfg.decode_min_side(train=True)
    if mode == 'decode':
        return (decode_rgb(s['jpg'], min_side) for s in raw)
    ds = ShardStream([SourceSpec('photos', prefix)], StreamConfig(batch_size=BATCH, shuffle_buffer=1),
                     train_transform(cfg), 0, 1, 1, decode_min_side=min_side)
    return (b['image'] for b in ResumableLoader(ds))


def peer(prefix: str, mode: str, n: int):
    import webdataset as wds
    from timm.data import create_transform

    urls = sorted(str(p) for p in Path(prefix).glob('photos-*.tar'))
    pipe = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    if mode == 'read':
        return iter(pipe)
    pipe = pipe.decode('pil').to_tuple('jpg', 'json')
    if mode.startswith('full'):
        # The recipe's interpolation (bicubic, as the official RepLKNet training) for both pipelines.
        t = create_transform(224, is_training=True, auto_augment='rand-m9-mstd0.5-inc1', interpolation='bicubic',
                             use_prefetcher=True)
        _patch_posterize(t)
        pipe = pipe.map_tuple(t, lambda j: j).batched(BATCH, partial=False)
        return (images for images, _ in pipe)
    return iter(pipe)


def rate(make, prefix: str, mode: str, n: int) -> float:
    """Samples per second over the first ``n`` samples (batches count their images)."""
    it = make(prefix, mode, n)
    start, count = time.perf_counter(), 0
    for item in it:
        count += len(item) if torch.is_tensor(item) else 1
        if count >= n:
            break
    return count / (time.perf_counter() - start)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--images', type=int, default=400)
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--photo-size', default='500x375', help='WxH of the stored photos')
    p.add_argument('--workdir', help='keep the shards here (default: a temp folder)')
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one core: samples/s/core
    size = tuple(int(v) for v in args.photo_size.split('x'))
    work = Path(args.workdir or tempfile.mkdtemp(prefix='replk-bench-'))
    prefix = str(work / 'shards')
    if not (Path(prefix) / '_index' / 'photos').exists():
        items = make_photos(work / 'photos', args.images, size)
        build(items, BuildOptions(prefix, 'photos', samples_per_shard=100, progress=False))
    mb = sum(os.path.getsize(p) for p in Path(prefix).glob('*.tar')) / 1e6
    results = {}
    for mode in ('read', 'decode', 'full', 'full-timm-warps'):
        samples = {'ours': [], 'peer': [], 'ratio': []}
        for _ in range(args.repeats):
            for name, make in (('ours', ours), ('peer', peer)):
                samples[name].append(rate(make, prefix, mode, args.images))
            samples['ratio'].append(samples['ours'][-1] / samples['peer'][-1])
        results[mode] = {k: statistics.median(v) for k, v in samples.items()}
    print(f'{args.images} photos {args.photo_size} JPEG q90 ({mb:.1f} MB in shards), 1 core, batches of {BATCH} '
          f'in the full modes, {args.repeats} alternating repeats: median rates, median of the per-pair ratios')
    print(f'{"mode":16} {"ours/s":>10} {"peer/s":>10} {"ratio":>7}')
    for mode, r in results.items():
        print(f'{mode:16} {r["ours"]:>10.1f} {r["peer"]:>10.1f} {r["ratio"]:>7.2f}')
    full = results['full']
    headline = dict(bench='loader', metric='samples/s/core', ours=round(full['ours'], 1),
                    peer=round(full['peer'], 1), ratio=round(full['ratio'], 3),
                    modes={m: {k: round(v, 3 if k == 'ratio' else 1) for k, v in r.items()} for m, r in results.items()},
                    config=dict(images=args.images, photo_size=args.photo_size, repeats=args.repeats, batch=BATCH))
    print(json.dumps(headline))
    return headline


if __name__ == '__main__':
    main()
