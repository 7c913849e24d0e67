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
from shards.common.helpformat import HelpFormatter, command_name
from shards.common.safe_files import add_trust_pickle_argument


def large_kernel_layers(model: torch.nn.Module) -> dict:
    """{name: layer}: re-parameterizable large-kernel convs (RepLKNet's, MobileNet V2's with
    ``small_kernel``), or a timm block whose plain depthwise ``conv_dw`` (kernel > 3, undilated)
    is followed by its BatchNorm (MobileNet V2 without re-param)."""
    from pretrain.models.mobilenet_lk import depthwise_blocks
    layers = {n: m for n, m in model.named_modules() if isinstance(m, ReparamLargeKernelConv) and m.lkb_origin is not None}
    blocks = {id(b) for b in depthwise_blocks(model)}
    layers.update({f'{n}.conv_dw': m for n, m in model.named_modules()
                   if id(m) in blocks and isinstance(m.conv_dw, torch.nn.Conv2d) and m.conv_dw.kernel_size[0] > 3
                   and m.conv_dw.dilation == (1, 1)})
    return layers


def default_layer(model: torch.nn.Module, size: int = 224) -> str:
    """The paper's representative layer: the first stride-1 large-kernel conv at the smallest map
    (RepLKNet: the last stage's first; MobileNet V2: the first stride-1 conv at 7x7, Appendix F),
    found by one forward of a ``size`` image recording each layer's input and stride."""
    layers = large_kernel_layers(model)
    seen = {}

    def record(name):
        def hook(module, inputs, output):   # returns None: the output is left as it is
            seen.setdefault(name, (inputs[0].shape[-1], module.stride[0]))
        return hook
    hooks = [conv_of(layer).register_forward_hook(record(name)) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    stride_1 = [(seen[n][0], i, n) for i, n in enumerate(layers) if n in seen and seen[n][1] == 1]
    if not stride_1:
        raise SystemExit(f'{type(model).__name__} has no large-kernel layer to show (kernels above 3x3, not '
                         'dilated); build it with larger kernels, or name a layer with --layer')
    return min(stride_1)[2]


def conv_of(layer: torch.nn.Module) -> torch.nn.Module:
    """The large-kernel conv of a layer as :func:`large_kernel_layers` names it."""
    return layer.lkb_origin.conv if isinstance(layer, ReparamLargeKernelConv) else layer.conv_dw


def aggregate(kernel: torch.Tensor) -> np.ndarray:
    a = kernel.detach().abs().sum(dim=(0, 1)).double().numpy()
    return a / a.max() if a.max() > 0 else a


@torch.no_grad()
def kernel_maps(layer: torch.nn.Module) -> dict:
    if not isinstance(layer, ReparamLargeKernelConv):   # a plain depthwise conv: its BN fused, as the paper does
        from pretrain.models.mobilenet_lk import norm_after_depthwise
        large, _ = fuse_conv_bn_weights(layer.conv_dw, getattr(layer, norm_after_depthwise(layer)))
        return {'large kernel (BN fused)': aggregate(large)}
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
    p = argparse.ArgumentParser(prog=command_name('pretrain.analysis.kernels'), description=__doc__,
                                formatter_class=HelpFormatter)
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
    summary = dict(model=args.model, layer=name, maps=list(maps),
                   center_weight={k: float(a[a.shape[0] // 2, a.shape[1] // 2]) for k, a in maps.items()})
    print(json.dumps(summary))
    return summary


if __name__ == '__main__':
    main()
