"""RepLKNet-XL training throughput and peak memory on one GPU, side by side in one run:

- ours: ``configs/xl_megadata.json`` through our Trainer (shards -> label join -> DeepSpeed
  ZeRO-2, nccl, bf16 autocast, channels-last inputs), only locations and sizes overridden;
- bare XL: the same model and heads (in1k + in22k + places365) in a plain timm-style loop on
  pre-built tensors (torch AdamW, bf16 autocast, channels-last inputs): the peer of ours;
- convnext_xlarge: timm's ConvNeXt-XL (similar MACs at 224) through the same bare loop.

Every measurement runs in its own process (one engine per process, fresh memory statistics).
ratio = ours / bare XL at the same micro-batch.

    python bench/gpu_train.py --micro-batches 32 64 --steps 10 [--timeout 60] [--out DIR]
    python bench/gpu_train.py --cpu-dry-run          # every step on tiny shapes on CPU
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

XL_CONFIG = 'configs/xl_megadata.json'
HEADS = {'in1k': 1000, 'in22k': 21841, 'places365': 365}
TINY_XL = {'depths': [1, 1], 'channels': [16, 32], 'kernel_sizes': [7, 5]}
WARMUP = 3


def _sync(device):
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize()


def _peak_gb(device) -> float:
    import torch
    return round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if device.type == 'cuda' else 0.0


def bare(name: str, kwargs: dict, heads, micro_batch: int, size: int, steps: int) -> dict:
    import timm
    import torch
    import torch.nn.functional as F

    import pretrain.models  # noqa: F401  (registers RepLKNet)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    model = timm.create_model(name, num_classes=heads, drop_path_rate=0.2, **kwargs).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=device.type == 'cuda')
    x = torch.randn(micro_batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    n_classes = heads if isinstance(heads, dict) else {'cls': heads}
    y = {t: torch.randint(0, n, (micro_batch,), device=device) for t, n in n_classes.items()}

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(x)
        out = out if isinstance(out, dict) else {'cls': out}
        loss = sum(F.cross_entropy(out[t].float(), y[t]) for t in y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return _time(step, device, micro_batch, steps)


def _time(step, device, micro_batch: int, steps: int) -> dict:
    for _ in range(WARMUP):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return dict(images_per_s=round(steps * micro_batch / (time.perf_counter() - start), 1), peak_gb=_peak_gb(device))


def ours(micro_batch: int, size: int, steps: int, tiny: bool, workers: int) -> dict:
    from pretrain.apps.tiny_data import make_megadata, megadata_overrides
    from pretrain.config import load_config
    from pretrain.distributed import init_distributed
    from pretrain.engine import Trainer

    tmp = tempfile.mkdtemp(prefix='replk-gputrain-')
    per_source = max(32, (WARMUP + steps) * micro_batch // 2)  # the measured steps stay in one epoch
    data = make_megadata(tmp, per_source=per_source, samples_per_shard=max(1, per_source // (2 * workers)))
    sets = dict(megadata_overrides(data), **{
        'data.transform.image_size': size, 'train.micro_batch': micro_batch, 'deepspeed.train_batch_size': micro_batch,
        'data.workers': workers, 'checkpoint.dir': f'{tmp}/run', 'log.tensorboard': False})
    if tiny:
        sets['model.kwargs'] = TINY_XL
    cfg = load_config(XL_CONFIG, [f'{k}={json.dumps(v)}' for k, v in sets.items()])
    env, device = init_distributed()
    trainer = Trainer(cfg, env, device)
    batches = iter(trainer.loader)
    return _time(lambda: trainer.micro_step(next(batches)), device, micro_batch, steps)


def run_one(args) -> dict:
    from pretrain.config import load_config
    # The bare loop builds XL as the config does (its lk_impl too): the ratio measures our
    # pipeline, not a different convolution.
    kwargs = dict(load_config(XL_CONFIG).model.kwargs, **(TINY_XL if args.tiny else {}))
    if args.one == 'ours':
        return ours(args.micro_batch, args.size, args.steps, args.tiny, args.workers)
    if args.one == 'bare_xl':
        return bare('replknet_xl', kwargs, HEADS, args.micro_batch, args.size, args.steps)
    return bare('convnext_atto' if args.tiny else 'convnext_xlarge', {}, 1000, args.micro_batch, args.size, args.steps)


def measure(kind: str, micro_batch: int, size: int, steps: int, tiny: bool, workers: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, '--one', kind, '--micro-batch', str(micro_batch), '--size', str(size),
           '--steps', str(steps), '--workers', str(workers)] + (['--tiny'] if tiny else [])
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ), timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f'timed out after {timeout:.0f} s')
    if proc.returncode != 0:
        return dict(error=(proc.stderr or proc.stdout)[-1500:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list, size: int) -> str:
    lines = [f'training at {size}px, one GPU          img/s   peak GB']
    for row in rows:
        for kind, name in (('ours', 'ours (Trainer, XL config)'), ('bare_xl', 'bare loop, same XL'),
                           ('convnext', 'timm convnext_xlarge')):
            r = row[kind]
            cell = f"{r['images_per_s']:>7.1f} {r['peak_gb']:>8.2f}" if 'images_per_s' in r else r['error'][-200:]
            lines.append(f"mb {row['micro_batch']:<3} {name:<26} {cell}")
        lines.append(f"ours / bare XL: {row['ratio']}")
    return '\n'.join(lines)[:2000]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--micro-batches', type=int, nargs='+', default=[32, 64])
    ap.add_argument('--size', type=int, default=224)
    ap.add_argument('--steps', type=int, default=10)
    ap.add_argument('--workers', type=int, default=10)
    ap.add_argument('--timeout', type=float, default=600, help='seconds per measurement (each its own process)')
    ap.add_argument('--out', help='folder to write gpu_train.json into')
    ap.add_argument('--cpu-dry-run', action='store_true', help='tiny shapes on CPU: proves the script runs')
    ap.add_argument('--one', choices=('ours', 'bare_xl', 'convnext'), help=argparse.SUPPRESS)
    ap.add_argument('--micro-batch', type=int, help=argparse.SUPPRESS)
    ap.add_argument('--tiny', action='store_true', help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args)), flush=True)
        return {}
    if args.cpu_dry_run:
        args.micro_batches, args.size, args.steps, args.workers = [4], 32, 2, 1
    rows = []
    for mb in args.micro_batches:
        row = dict(micro_batch=mb)
        for kind in ('ours', 'bare_xl', 'convnext'):
            row[kind] = measure(kind, mb, args.size, args.steps, args.cpu_dry_run, args.workers, args.timeout)
        o, b = row['ours'].get('images_per_s'), row['bare_xl'].get('images_per_s')
        row['ratio'] = round(o / b, 3) if o and b else None
        rows.append(row)
    headline = dict(bench='gpu_train', metric='images/s', size=args.size, steps=args.steps, rows=rows,
                    dry_run=args.cpu_dry_run, table=table(rows, args.size))
    print(headline['table'], flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / 'gpu_train.json').write_text(json.dumps(headline, indent=1))
    print(json.dumps(headline))
    if any('error' in row[k] for row in rows for k in ('ours', 'bare_xl', 'convnext')):
        raise SystemExit('gpu_train: a measurement failed (its error is in the JSON line above)')
    return headline


if __name__ == '__main__':
    main()
