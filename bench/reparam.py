"""Forward throughput of a RepLKNet in training form vs its deployed (re-parameterized) form.

Both forms run side by side in one process, alternating, several repeats; medians are
reported. The last line is the JSON headline (README, "Benchmarks"):
ratio = deployed images/s / training-form images/s (above 1: deploying pays).

    python bench/reparam.py --model replknet_31b --size 224 --batch 8 --repeats 5
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pretrain.models  # noqa: E402,F401  (registers the variants with timm)


def images_per_second(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        model(x)
    return x.shape[0] / (time.perf_counter() - start)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='replknet_31b')
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--channels-last', action='store_true',
                   help='run both forms channels-last (much faster for large kernels on CPU)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = p.parse_args(argv)

    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    train_form = timm.create_model(args.model).eval().to(args.device, memory_format=fmt)
    deployed = copy.deepcopy(train_form).reparameterize().to(memory_format=fmt)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device).to(memory_format=fmt)
    forms = {'training form': train_form, 'deployed': deployed}
    for model in forms.values():  # warm-up: allocator, kernel selection
        images_per_second(model, x)
    samples = {name: [] for name in forms}
    for _ in range(args.repeats):
        for name, model in forms.items():
            if args.device == 'cuda':
                torch.cuda.synchronize()
            samples[name].append(images_per_second(model, x))
    med = {name: statistics.median(v) for name, v in samples.items()}

    print(f'{args.model} @ {args.size}px, batch {args.batch}, {args.device}, '
          f'{"channels-last" if args.channels_last else "NCHW"}, threads {torch.get_num_threads()}, '
          f'{args.repeats} alternating repeats')
    print(f'{"form":15} {"median img/s":>12} {"min":>8} {"max":>8}')
    for name, v in samples.items():
        print(f'{name:15} {med[name]:>12.2f} {min(v):>8.2f} {max(v):>8.2f}')
    headline = dict(bench='reparam', metric='images/s', ours=round(med['deployed'], 3),
                    peer=round(med['training form'], 3),
                    ratio=round(med['deployed'] / med['training form'], 3),
                    config=dict(model=args.model, size=args.size, batch=args.batch, device=args.device,
                                channels_last=args.channels_last, threads=torch.get_num_threads()))
    print(json.dumps(headline))
    return headline


if __name__ == '__main__':
    main()
