"""DeepSpeed ZeRO smoke run: a small RepLKNet trained for a few steps on synthetic images.

Proves the distributed stack (launcher, process group, ZeRO stage, optimizer, BN) end to
end on any machine. Until the demo lands, ``make demo`` runs it with two processes:

    deepspeed --num_gpus 2 pretrain/smoke.py --zero-stage 2        # GPUs, or CPU ranks
    torchrun --nproc_per_node 2 pretrain/smoke.py --zero-stage 3
    python pretrain/smoke.py                                      # one plain process
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from shards.helpformat import HelpFormatter

if __package__ in (None, ''):  # run as a script by a launcher: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.distributed import init_distributed  # noqa: E402
from pretrain.models import RepLKNet  # noqa: E402


def tiny_replknet(num_classes: int) -> RepLKNet:
    """All RepLKNet parts (stem, transitions, re-param branch, inverted bottleneck) at toy size."""
    return RepLKNet(kernel_sizes=(7, 5), depths=(1, 1), channels=(16, 32), small_kernel=3,
                    dw_ratio=1.5, num_classes=num_classes, drop_path_rate=0.1)


def synthetic_batch(rank: int, batch: int, size: int, num_classes: int, device) -> tuple:
    """A fixed batch per rank: the smoke run overfits it, so the loss must fall."""
    gen = torch.Generator().manual_seed(1000 + rank)
    images = torch.randn(batch, 3, size, size, generator=gen)
    labels = torch.randint(0, num_classes, (batch,), generator=gen)
    return images.to(device), labels.to(device)


def param_fingerprint(model: torch.nn.Module, zero_stage: int) -> float:
    """Sum of |w| over all parameters, gathered under ZeRO-3 so every rank sees the full model."""
    import deepspeed

    params = list(model.parameters())
    with deepspeed.zero.GatheredParameters(params, enabled=zero_stage == 3):
        return float(sum(p.detach().double().abs().sum() for p in params))


def run(args: argparse.Namespace) -> dict:
    import deepspeed

    env, device = init_distributed(args.local_rank)
    model = tiny_replknet(args.num_classes)
    config = {
        'train_micro_batch_size_per_gpu': args.micro_batch,
        'gradient_accumulation_steps': 1,
        'train_batch_size': args.micro_batch * env.world_size,
        'zero_optimization': {'stage': args.zero_stage},
        'gradient_clipping': 1.0,
        'steps_per_print': 10 ** 9,
    }
    engine, _, _, _ = deepspeed.initialize(
        model=model, config=config,
        optimizer=torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05))
    images, labels = synthetic_batch(env.rank, args.micro_batch, args.image_size, args.num_classes, device)
    losses = []
    for _ in range(args.steps):
        loss = F.cross_entropy(engine(images), labels)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    result = dict(rank=env.rank, world_size=env.world_size, zero_stage=args.zero_stage, losses=losses,
                  fingerprint=param_fingerprint(engine.module, args.zero_stage))
    if not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f'rank {env.rank}: non-finite loss in smoke run: {losses}')
    print(f'[rank {env.rank}/{env.world_size}] ZeRO-{args.zero_stage} on {device}: '
          f'loss {losses[0]:.4f} -> {losses[-1]:.4f} over {args.steps} steps', flush=True)
    return result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--zero-stage', type=int, default=2, choices=(0, 1, 2, 3))
    p.add_argument('--steps', type=int, default=8)
    p.add_argument('--micro-batch', type=int, default=4)
    p.add_argument('--image-size', type=int, default=32)
    p.add_argument('--num-classes', type=int, default=10)
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--out', type=Path, help='write each rank\'s result as OUT/rank{N}.json')
    p.add_argument('--local_rank', '--local-rank', type=int, default=None,
                   help='set by the deepspeed launcher')
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    result = run(args)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f'rank{result["rank"]}.json').write_text(json.dumps(result))


if __name__ == '__main__':
    main()
