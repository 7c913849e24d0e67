"""Effective receptive field (Appendix B): ``python -m pretrain.analysis.erf``.

For each image, the gradient w.r.t. the input of the summed central points of the last
stage's feature map; negative parts removed; aggregated over images and input channels;
A = log10(sum / (3n) + 1); rescaled to [0, 1] by its maximum. The high-contribution area
ratio r(t) is the smallest centered square whose share of the total contribution of A
passes t, as a fraction of the image area (Table 10).

``--definition paper`` (the default) is the appendix's formula above. ``--definition official``
is the official script (erf/visualize_erf.py of RepLKNet-pytorch), which differs in two ways that
change the numbers: it applies a ReLU to the central points before summing them, and it averages
over images (divides by n, not 3n). Every output names the definition used.

    python -m pretrain.analysis.erf --model replknet_31b --model replknet_13 --images val_images/ \\
        --num 50 --size 1024 --out erf/ [--checkpoint replknet_31b=RepLKNet-31B.pth]
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import numpy as np
import torch
from PIL import Image

from shards.common.errors import BadValue, NotFound
from shards.common.helpformat import HelpFormatter, command_name
from shards.common.safe_files import add_trust_pickle_argument

log = logging.getLogger(__name__)

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
DEFINITIONS = ('paper', 'official')


def last_stage_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if hasattr(model, 'forward_features'):
        out = model.forward_features(x)
    else:
        out = model(x)
    if out.ndim != 4:
        raise BadValue(f'{type(model).__name__}.forward_features gives shape {tuple(out.shape)}, not a feature map')
    return out


def contribution_sum(model: torch.nn.Module, images: torch.Tensor, relu_center: bool = False) -> torch.Tensor:
    """Sum over the batch and input channels of max(d(sum of central points)/dI, 0); with
    ``relu_center`` the central points pass a ReLU first (the official script)."""
    x = images.clone().requires_grad_(True)
    feats = last_stage_features(model, x)
    h, w = feats.shape[-2:]
    center = feats[:, :, h // 2, w // 2]
    (center.relu() if relu_center else center).sum().backward()
    return x.grad.clamp(min=0).sum(dim=(0, 1))


def aggregate(model: torch.nn.Module, batches: Iterable[torch.Tensor], device,
              definition: str = 'paper') -> np.ndarray:
    """A = log10(contribution / (3n) + 1) (paper) or log10(contribution / n + 1) with ReLU'd central
    points (official), rescaled to [0, 1] (Appendix B, eq. 1-2)."""
    if definition not in DEFINITIONS:
        raise BadValue(f'ERF definition {definition!r} is not one of {DEFINITIONS}')
    model.eval().to(device)
    total, n = None, 0
    for images in batches:
        c = contribution_sum(model, images.to(device), relu_center=definition == 'official').double().cpu()
        total = c if total is None else total + c
        n += images.shape[0]
    if total is None:
        raise BadValue('no images')
    a = torch.log10(total / ((3 if definition == 'paper' else 1) * n) + 1).numpy()
    return a / a.max() if a.max() > 0 else a


def area_ratio(a: np.ndarray, threshold: float) -> Optional[float]:
    """Smallest centered square holding more than ``threshold`` of the total; None when none does."""
    h, w = a.shape
    total = a.sum()
    if total <= 0:
        return None
    for i in range(0, min(h, w) // 2 + 1):
        window = a[max(h // 2 - i, 0):h // 2 + i + 1, max(w // 2 - i, 0):w // 2 + i + 1]
        if window.sum() / total > threshold:
            return window.shape[0] * window.shape[1] / (h * w)
    return None


def load_images(folder: str, num: int, size: int, mean, std, batch: int) -> List[torch.Tensor]:
    """The first ``num`` images of ``folder`` that decode (the same checks as a shard build); an
    unreadable file is skipped, counted and named in one warning, as the builder does."""
    from shards.images import INPUT_FORMATS, BadImage, decode_rgb

    paths = sorted(p for p in Path(folder).rglob('*') if p.suffix.lower() in ('.jpg', '.jpeg', '.png', '.webp'))
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    tensors, skipped = [], []
    for p in paths:
        if len(tensors) == num:
            break
        try:
            img = decode_rgb(p.read_bytes(), formats=INPUT_FORMATS).resize((size, size), Image.Resampling.BICUBIC)
        except BadImage as exc:
            skipped.append(f'{p.name} ({exc})')
            continue
        tensors.append((torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1) - m) / s)
    if skipped:
        log.warning('%d unreadable images skipped: %s', len(skipped), '; '.join(skipped[:5]))
    if not tensors:
        raise NotFound(f'no readable images under {folder}')
    return [torch.stack(tensors[i:i + batch]) for i in range(0, len(tensors), batch)]


def heatmap(a: np.ndarray, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    im = ax.imshow(a, cmap='RdYlGn', vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis('off')
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(rows: Dict[str, Dict[float, Optional[float]]]) -> str:
    head = '| model | ' + ' | '.join(f't = {int(t * 100)}%' for t in THRESHOLDS) + ' |'
    lines = [head, '|---' * (len(THRESHOLDS) + 1) + '|']
    for name, r in rows.items():
        cells = [f'{100 * r[t]:.1f}%' if r[t] is not None else 'n/a' for t in THRESHOLDS]
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def build(name: str, checkpoint: Optional[str], kwargs: Optional[dict] = None, trust_pickle: bool = False):
    import timm

    import pretrain.models  # noqa: F401
    from pretrain.export import export_file, load_export
    exported = export_file(checkpoint) if checkpoint else None
    if exported is not None:  # an export folder: its config.json says the form and shape
        model, _ = load_export(exported)
        model.reset_classifier(0)
        return model
    model = timm.create_model(name, num_classes=0, **(kwargs or {}))
    if checkpoint:
        from pretrain.weights import load_analysis_weights
        load_analysis_weights(model, checkpoint, trust_pickle)
    return model


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog=command_name('pretrain.analysis.erf'), description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--model', action='append', required=True, help='registered or timm model (repeatable)')
    p.add_argument('--checkpoint', action='append', default=[], metavar='MODEL=PATH',
                   help='weights of one model: a run folder, an export, a weights file or an official release')
    p.add_argument('--model-kwargs', action='append', default=[], metavar='MODEL=JSON',
                   help='timm.create_model kwargs for one model (e.g. a toy size)')
    p.add_argument('--images', required=True, help='a folder of images')
    p.add_argument('--num', type=int, default=50, help='images averaged (the paper: 50 ImageNet validation images)')
    p.add_argument('--size', type=int, default=1024, help='input size the images are resized to (the paper: 1024)')
    p.add_argument('--batch', type=int, default=4, help='images per forward and backward')
    p.add_argument('--out', required=True, help='folder for the .npy maps, the PNG heatmaps and erf.json')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', help='where the models run')
    p.add_argument('--definition', choices=DEFINITIONS, default='paper',
                   help="paper: Appendix B's formula; official: the official script's (ReLU on the central "
                        'points, mean over images)')
    add_trust_pickle_argument(p)
    args = p.parse_args(argv)
    ckpts = dict(c.split('=', 1) for c in args.checkpoint)
    model_kwargs = {k: json.loads(v) for k, v in (c.split('=', 1) for c in args.model_kwargs)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, timing = {}, {}
    for name in args.model:
        start = time.monotonic()
        model = build(name, ckpts.get(name), model_kwargs.get(name), args.trust_pickle)
        cfg = model.pretrained_cfg
        batches = load_images(args.images, args.num, args.size, cfg.get('mean', (0.485, 0.456, 0.406)),
                              cfg.get('std', (0.229, 0.224, 0.225)), args.batch)
        a = aggregate(model, batches, torch.device(args.device), args.definition)
        np.save(out / f'{name}_erf.npy', a)
        heatmap(a, out / f'{name}_erf.png', f'{name} ERF')
        rows[name] = {t: area_ratio(a, t) for t in THRESHOLDS}
        timing[name] = time.monotonic() - start
    md = f'ERF definition: {args.definition}\n\n' + table(rows)
    (out / 'erf_table.md').write_text(md + '\n')
    summary = dict(definition=args.definition, size=args.size, images=sum(b.shape[0] for b in batches), seconds=timing,
                   ratios={n: {str(t): r for t, r in rows[n].items()} for n in rows})
    (out / 'erf.json').write_text(json.dumps(summary, indent=1))
    print(md)
    print(json.dumps(summary))
    return summary


if __name__ == '__main__':
    main()
