"""Loader throughput on one core: our shard stream vs a plain webdataset + timm pipeline.

Builds shards of realistic photos (JPEG ~500x375, quality 90, cut and scaled from the real
photos scikit-learn ships), then measures samples/s in three modes -- read only; decode;
decode + RandomResizedCrop 224 + flip + RandAugment (uint8 out) in batches -- for both pipelines
on the same shards. The peer is what its users run: plain ``webdataset`` with ``.decode("pil")``,
timm's ``create_transform(use_prefetcher=True)`` and ``.batched()``. Both get the same
Pillow-13-safe posterize (timm's own crashes on Pillow 13). A shared machine's speed drifts (20%
from one minute to the next on the box these figures come from), so the two pipelines run
interleaved, a batch of 32 samples each in turn (who goes first alternates), each restarting at
its epoch's end; a rate is the samples over the summed time of its own turns, and the spread is
the range of the ratio over ``--blocks`` equal parts of the run.
The line ``full, timm warps`` is our stream with timm's own transform (``compose_warps=False``):
what the stream gives without the transform's gain.

``--adopted`` compares our stream on an adopted source with our stream on a built one instead: the
same photos written by ``webdataset.ShardWriter`` in timm's layout (``.jpg`` + ``.cls``), made a
source by ``replk-shards adopt`` (``ours``), against the same photos built by ``replk-shards build``
(``peer``); the ratio should be 1.

    pip install scikit-learn   # the bench extra
    python bench/loader.py --images 400 --turns 100
    python bench/loader.py --adopted --images 400 --turns 60
"""
from __future__ import annotations

import argparse
import json
import os
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


def ours(prefix: str, mode: str, source: str = 'photos'):
    cfg = TransformConfig(compose_warps=mode != 'full-timm-warps')
    src = resolve_source(SourceSpec(source, prefix))
    raw = (s for url, c in zip(src.urls, src.counts) for s in iter_shard_samples(url, 0, c, storage.DEFAULT_RETRY))
    if mode == 'read':
        return raw
    min_side = cfg.decode_min_side(train=True)
    if mode == 'decode':
        return (decode_rgb(s['jpg'], min_side) for s in raw)
    ds = ShardStream([SourceSpec(source, prefix)], StreamConfig(shuffle_buffer=1),
                     train_transform(cfg), 0, 1, 1, decode_min_side=min_side, batch_size=BATCH)
    return (b['image'] for b in ResumableLoader(ds))


def peer(prefix: str, mode: str):
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


def adopted_copy(work: Path, items: list) -> str:
    """The photos as another tool writes shards (webdataset's ShardWriter, timm's .jpg + .cls), adopted."""
    import webdataset as wds

    from shards.adopt import AdoptOptions, adopt
    folder = work / 'foreign'
    if not (folder / '_index' / 'foreign').exists():
        folder.mkdir(parents=True, exist_ok=True)
        with wds.ShardWriter(str(folder / 'train-%04d.tar'), maxcount=100, verbose=0) as sink:
            for it in sorted(items, key=lambda it: it.id):
                sink.write({'__key__': it.id.rsplit('.', 1)[0], 'jpg': Path(it.path).read_bytes(),
                            'cls': str(it.labels['bench']).encode()})
        adopt(AdoptOptions(str(folder), 'foreign', labels={'bench': 'cls'}))
    return str(folder)


def timed_turns(make, prefix: str, mode: str):
    """Endless (seconds, samples) of ``BATCH`` samples each (a batch in the full modes), the pipeline
    restarted at each epoch's end (the cut-short last turn of an epoch is dropped)."""
    while True:
        it, turns = make(prefix, mode), 0
        while True:
            start, count = time.perf_counter(), 0
            try:
                while count < BATCH:
                    item = next(it)
                    count += len(item) if torch.is_tensor(item) else 1
            except StopIteration:
                break
            turns += 1
            yield time.perf_counter() - start, count
        if turns == 0:
            raise ValueError(f'an epoch of {mode!r} holds fewer than {BATCH} samples: use more --images')


def interleaved(prefix: str, mode: str, turns: int, blocks: int, pipelines=None) -> dict:
    """Rates of ours and the peer over ``turns`` turns each, interleaved; the ratio's range over blocks."""
    pipelines = pipelines or {'ours': ours, 'peer': peer}
    gens = {name: timed_turns(make, prefix, mode) for name, make in pipelines.items()}
    per_block = max(1, turns // blocks)
    seconds = {k: [0.0] * blocks for k in gens}
    samples = {k: [0] * blocks for k in gens}
    for t in range(per_block * blocks):
        for name in (('ours', 'peer') if t % 2 == 0 else ('peer', 'ours')):
            dt, n = next(gens[name])
            seconds[name][t // per_block] += dt
            samples[name][t // per_block] += n
    rate = {k: sum(samples[k]) / sum(seconds[k]) for k in gens}
    block_ratios = [(samples['ours'][b] / seconds['ours'][b]) / (samples['peer'][b] / seconds['peer'][b])
                    for b in range(blocks)]
    return dict(ours=rate['ours'], peer=rate['peer'], ratio=rate['ours'] / rate['peer'],
                low=min(block_ratios), high=max(block_ratios))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--images', type=int, default=400)
    p.add_argument('--turns', type=int, default=100, help='batches of 32 per pipeline and mode')
    p.add_argument('--blocks', type=int, default=5, help='parts of the run the ratio range is taken over')
    p.add_argument('--photo-size', default='500x375', help='WxH of the stored photos')
    p.add_argument('--workdir', help='keep the shards here (default: a temp folder)')
    p.add_argument('--adopted', action='store_true', help='our stream on an adopted copy vs on the built shards')
    args = p.parse_args(argv)
    if args.images < 2 * BATCH:
        p.error(f'--images must be at least {2 * BATCH} (a turn is a batch of {BATCH})')
    torch.set_num_threads(1)  # one core: samples/s/core
    size = tuple(int(v) for v in args.photo_size.split('x'))
    work = Path(args.workdir or tempfile.mkdtemp(prefix='replk-bench-'))
    prefix = str(work / 'shards')
    items = make_photos(work / 'photos', args.images, size)
    if not (Path(prefix) / '_index' / 'photos').exists():
        build(items, BuildOptions(prefix, 'photos', samples_per_shard=100, progress=False))
    mb = sum(os.path.getsize(p) for p in Path(prefix).glob('*.tar')) / 1e6
    if args.adopted:
        foreign = adopted_copy(work, items)
        pipelines = {'ours': lambda _, mode: ours(foreign, mode, 'foreign'), 'peer': ours}
        modes = ('read', 'decode', 'full')
    else:
        pipelines, modes = None, ('read', 'decode', 'full', 'full-timm-warps')
    results = {mode: interleaved(prefix, mode, args.turns, args.blocks, pipelines) for mode in modes}
    print(f'{args.images} photos {args.photo_size} JPEG q90 ({mb:.1f} MB in shards), 1 core, {args.turns} turns '
          f'of {BATCH} samples each, interleaved: rates over the whole run, the ratio, its range over '
          f'{args.blocks} parts of the run' + ('; ours = the adopted copy, peer = the built shards' if args.adopted else ''))
    print(f'{"mode":16} {"ours/s":>10} {"peer/s":>10} {"ratio":>7} {"range":>12}')
    for mode, r in results.items():
        print(f'{mode:16} {r["ours"]:>10.1f} {r["peer"]:>10.1f} {r["ratio"]:>7.2f} {r["low"]:>5.2f}-{r["high"]:<5.2f}')
    full = results['full']
    headline = dict(bench='loader-adopted' if args.adopted else 'loader', metric='samples/s/core', ours=round(full['ours'], 1),
                    peer=round(full['peer'], 1), ratio=round(full['ratio'], 3),
                    modes={m: {k: round(v, 3 if k in ('ratio', 'low', 'high') else 1) for k, v in r.items()}
                           for m, r in results.items()},
                    config=dict(images=args.images, photo_size=args.photo_size, turns=args.turns, blocks=args.blocks,
                                batch=BATCH, adopted=args.adopted))
    print(json.dumps(headline))
    return headline


if __name__ == '__main__':
    main()
