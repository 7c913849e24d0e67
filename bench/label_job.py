"""The labeling job end to end vs the bare teacher forward on the same batches.

A ViT (timm ``vit_tiny_patch16_224`` by default; ``--model vit_large_patch16_224`` for the
recipe's teacher; random weights from a local file) labels shards of photo-like 500x375 JPEGs.
"bare" times only the teacher forward over the job's batches, preprocessed in advance and
already on the device; "job" is ``run_job`` with DataLoader workers decoding while the main
process infers, writing and committing parts. ratio = job / bare (goal >= 0.9).

    python bench/label_job.py --images 512
    python bench/label_job.py --model vit_large_patch16_224 --device cuda --precision bf16 \
        --images 2048 --batch-size 256 --workers 12 [--decode device]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from labeling.config import JobConfig  # noqa: E402
from labeling.job import Labeler, run_job  # noqa: E402
from labeling.teachers import Ensemble, TeacherSpec, load_teacher  # noqa: E402
from shards.build import BuildOptions, build  # noqa: E402
from shards.inputs import Item  # noqa: E402
from shards.stream import SourceSpec  # noqa: E402


def photo_like(path: Path, seed: int) -> Path:
    """Smooth gradients plus mild noise: decodes like a photo, unlike pure noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:375, 0:500].astype(np.float32)
    base = np.stack([np.sin(x / rng.uniform(20, 80) + c) * np.cos(y / rng.uniform(20, 80)) for c in range(3)], -1)
    img = (base * 100 + 128 + rng.normal(0, 6, (375, 500, 3))).clip(0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, 'JPEG', quality=90)
    return path


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--images', type=int, default=512)
    ap.add_argument('--batch-size', type=int, default=32)
    ap.add_argument('--threads', type=int, default=1, help='torch threads for inference (both sides)')
    ap.add_argument('--model', default='vit_tiny_patch16_224')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--precision', default='fp32', choices=('fp32', 'bf16', 'fp16'))
    ap.add_argument('--workers', type=int, default=1, help='decode workers of the job')
    ap.add_argument('--decode', default='workers', choices=('workers', 'device'))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix='replk-jobbench-'))
    (tmp / 'img').mkdir()
    items = [Item(str(photo_like(tmp / 'img' / f'{i}.jpg', i)), f'{i:05d}') for i in range(args.images)]
    build(items, BuildOptions(str(tmp / 'shards'), 'photos', samples_per_shard=128, progress=False))

    import timm
    from safetensors.torch import save_file
    torch.manual_seed(0)
    save_file(timm.create_model(args.model, num_classes=1000).state_dict(), str(tmp / 'vit.safetensors'))
    spec = TeacherSpec(kind='timm', model=args.model, weights=str(tmp / 'vit.safetensors'))

    # bare: the same preprocessing done in advance, then only the forward, batch by batch
    ensemble = Ensemble([load_teacher(spec, 1000)])
    labeler = Labeler(ensemble, 10, device, args.precision)
    transform = ensemble.preprocess.transform()
    tensors = [transform(Image.open(it.path).convert('RGB')) for it in items]
    batches = [torch.stack(tensors[i:i + args.batch_size]).to(device)
               for i in range(0, len(tensors), args.batch_size)]
    labeler.probabilities(batches[0])  # warm-up
    _sync(device)
    start = time.perf_counter()
    for b in batches:
        labeler.probabilities(b)
    _sync(device)
    bare = len(items) / (time.perf_counter() - start)

    cfg = JobConfig(task='in1k', store=str(tmp / 'store'), sources=[SourceSpec('photos', str(tmp / 'shards'))],
                    teachers=[spec], topk=10, batch_size=args.batch_size, workers=args.workers,
                    precision=args.precision, decode=args.decode)
    summary = run_job(cfg, device=device, progress=False)
    job = summary['images_per_s']
    print(f'{args.images} photos 500x375, {args.model} at 224 on {device} in {args.precision}, batch '
          f'{args.batch_size}, {args.threads} inference thread(s) + {args.workers} decode worker(s), '
          f'decode on {args.decode}')
    print(f'{"bare teacher forward":24} {bare:8.1f} images/s')
    print(f'{"labeling job":24} {job:8.1f} images/s')
    headline = dict(bench='label_job', metric='images/s', ours=round(job, 1), peer=round(bare, 1),
                    ratio=round(job / bare, 3),
                    config=dict(images=args.images, batch_size=args.batch_size, threads=args.threads,
                                model=args.model, device=str(device), precision=args.precision,
                                workers=args.workers, decode=args.decode))
    print(json.dumps(headline))
    return headline


if __name__ == '__main__':
    main()
