"""Kernel weights (Appendix F): ``python -m pretrain.analysis.kernels``.

The aggregated |kernel| (summed over channels, rescaled to [0, 1]) of one large-kernel layer,
with its BN fused, before and after adding the small kernel onto its centre (re-param).

    python -m pretrain.analysis.kernels --model replknet_31b --checkpoint RepLKNet-31B.pth --out kernels/
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pretrain.models.layers import ReparamLargeKernelConv, fuse_conv_bn_weights
from shards.helpformat import HelpFormatter, command_name
from shards.safe_files import add_trust_pickle_argument


def large_kernel_layers(model: torch.nn.Module) -> dict:
    return {n: m for n, m in model.named_modules() if isinstance(m, ReparamLargeKernelConv) and m.lkb_origin is not None}


def default_layer(model: torch.nn.Module) -> str:
    """The first large-kernel conv of the last stage (the paper's representative layer)."""
    names = list(large_kernel_layers(model))
    last_stage = names[-1].split('.blocks')[0]
    return next(n for n in names if n.startswith(last_stage))


def aggregate(kernel: torch.Tensor) -> np.ndarray:
    a = kernel.detach().abs().sum(dim=(0, 1)).double().numpy()
    return a / a.max() if a.max() > 0 else a


@torch.no_grad()
def kernel_maps(layer: ReparamLargeKernelConv) -> dict:
    large, _ = fuse_conv_bn_weights(layer.lkb_origin.conv, layer.lkb_origin.bn)
    maps = {'large kernel (BN fused)': aggregate(large)}
    if layer.small_conv is not None:
        merged, _ = layer.equivalent_kernel_bias()
        maps['after adding the small kernel'] = aggregate(merged)
    return maps


def plot(maps: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(maps), figsize=(3.6 * len(maps), 3.4), squeeze=False)
    for ax, (name, a) in zip(axes[0], maps.items()):
        im = ax.imshow(a, cmap='viridis', vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
        ax.axis('off')
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.046)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog=command_name('pretrain.analysis.kernels'), description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--model', required=True)
    p.add_argument('--checkpoint')
    p.add_argument('--layer', help='module name (default: the first large-kernel conv of the last stage)')
    p.add_argument('--out', required=True)
    p.add_argument('--model-kwargs', default='{}', help='JSON kwargs for timm.create_model')
    add_trust_pickle_argument(p)
    args = p.parse_args(argv)
    from .erf import build
    model = build(args.model, args.checkpoint, json.loads(args.model_kwargs), args.trust_pickle)
    layers = large_kernel_layers(model)
    name = args.layer or default_layer(model)
    if name not in layers:
        raise SystemExit(f'{name} is not a large-kernel layer; choose one of {list(layers)[:6]} ...')
    maps = kernel_maps(layers[name])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for key, a in maps.items():
        np.save(out / f'{args.model}_{name}_{"merged" if "small" in key else "large"}.npy', a)
    plot(maps, out / f'{args.model}_kernels.png', f'{args.model} {name}')
    summary = dict(model=args.model, layer=name, maps=list(maps), center_weight={k: float(a[a.shape[0] // 2, a.shape[1] // 2]) for k, a in maps.items()})
    print(json.dumps(summary))
    return summary


if __name__ == '__main__':
    main()
