"""Shape bias (Appendix C): ``python -m pretrain.analysis.shape_bias``.

On the cue-conflict images of the model-vs-human toolbox (``{root}/{shape}/{shape}N-{texture}M.png``,
supplied by the user), each ImageNet-1K prediction is mapped to one of the 16 categories by
averaging the softmax over the category's ImageNet classes; the shape bias is the fraction of
shape decisions among the decisions that match the shape or the texture (images whose shape
and texture agree are left out), per category and on average.

The category -> ImageNet index lists come from the toolbox as well (its ``human_categories.py``);
give them as JSON: ``{"airplane": [404], "bear": [294, 295, 296, 297], ...}``.

    python -m pretrain.analysis.shape_bias --model replknet_31b --checkpoint RepLKNet-31B.pth \\
        --images model-vs-human/datasets/cue-conflict --categories categories.json --out shape_bias/
"""
from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
from PIL import Image

from shards.common.errors import BadValue
from shards.common.helpformat import HelpFormatter, command_name
from shards.common.safe_files import add_trust_pickle_argument

CATEGORIES = ('airplane', 'bear', 'bicycle', 'bird', 'boat', 'bottle', 'car', 'cat', 'chair', 'clock', 'dog',
              'elephant', 'keyboard', 'knife', 'oven', 'truck')


def parse_name(path: Path) -> Tuple[str, str]:
    """'airplane1-bicycle2.png' -> ('airplane', 'bicycle')."""
    m = re.match(r'^([a-z]+)\d+-([a-z]+)\d+$', path.stem)
    if not m:
        raise BadValue(f'{path}: not a cue-conflict name like airplane1-bicycle2.png')
    return m.group(1), m.group(2)


def load_mapping(path: str) -> Dict[str, List[int]]:
    mapping = json.loads(Path(path).read_text())
    missing = [c for c in CATEGORIES if c not in mapping]
    if missing:
        raise BadValue(f'{path}: categories {missing} have no ImageNet classes')
    return {c: [int(i) for i in mapping[c]] for c in CATEGORIES}


def decide(probs: torch.Tensor, mapping: Dict[str, List[int]]) -> List[str]:
    """The category with the highest mean probability over its ImageNet classes, per image."""
    scores = torch.stack([probs[:, idx].mean(1) for idx in mapping.values()], dim=1)
    names = list(mapping)
    return [names[i] for i in scores.argmax(1).tolist()]


def shape_bias(records: List[Tuple[str, str, str]]) -> dict:
    """records: (shape, texture, decision). Returns per-category and average shape bias."""
    per: Dict[str, Counter] = defaultdict(Counter)
    for shape, texture, decision in records:
        if shape == texture:
            continue
        if decision == shape:
            per[shape]['shape'] += 1
        elif decision == texture:
            per[shape]['texture'] += 1
    by_cat = {c: per[c]['shape'] / (per[c]['shape'] + per[c]['texture'])
              for c in CATEGORIES if per[c]['shape'] + per[c]['texture'] > 0}
    shapes = sum(c['shape'] for c in per.values())
    textures = sum(c['texture'] for c in per.values())
    return dict(per_category=by_cat, average=float(np.mean(list(by_cat.values()))) if by_cat else None,
                overall=shapes / (shapes + textures) if shapes + textures else None,
                shape_decisions=shapes, texture_decisions=textures)


def plot(results: Dict[str, dict], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 5))
    for i, (name, r) in enumerate(results.items()):
        cats = list(r['per_category'])
        ax.scatter([r['per_category'][c] for c in cats], [CATEGORIES.index(c) for c in cats], label=name,
                   color=f'C{i}', s=18)
        if r['average'] is not None:
            ax.axvline(r['average'], color=f'C{i}', linewidth=1)
    ax.set_yticks(range(len(CATEGORIES)), CATEGORIES)
    ax.set_xlim(0, 1)
    ax.set_xlabel('fraction of shape decisions')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def evaluate(model, images: List[Path], mapping, size: int, mean, std, batch: int, device) -> List[tuple]:
    model.eval().to(device)
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    records = []
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        x = torch.stack([(torch.from_numpy(np.asarray(Image.open(p).convert('RGB').resize((size, size)),
                                                      dtype=np.float32) / 255).permute(2, 0, 1) - m) / s
                         for p in chunk]).to(device)
        probs = torch.softmax(model(x).float(), dim=1).cpu()
        for p, d in zip(chunk, decide(probs, mapping)):
            records.append((*parse_name(p), d))
    return records


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog=command_name('pretrain.analysis.shape_bias'), description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument('--model', action='append', required=True)
    p.add_argument('--checkpoint', action='append', default=[], metavar='MODEL=PATH')
    p.add_argument('--model-kwargs', action='append', default=[], metavar='MODEL=JSON')
    p.add_argument('--images', required=True, help='the cue-conflict folder')
    p.add_argument('--categories', required=True, help='JSON: category -> ImageNet-1K class indices')
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--out', required=True)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    add_trust_pickle_argument(p)
    args = p.parse_args(argv)
    import timm

    import pretrain.models  # noqa: F401
    from pretrain.weights import load_analysis_weights
    mapping = load_mapping(args.categories)
    images = sorted(x for x in Path(args.images).rglob('*') if x.suffix.lower() in ('.png', '.jpg', '.jpeg'))
    if not images:
        raise SystemExit(f'no images under {args.images}')
    ckpts = dict(c.split('=', 1) for c in args.checkpoint)
    kwargs = {k: json.loads(v) for k, v in (c.split('=', 1) for c in args.model_kwargs)}
    results = {}
    for name in args.model:
        model = timm.create_model(name, num_classes=1000, **kwargs.get(name, {}))
        if name in ckpts:   # the 1000-class head included: shape bias is read from ImageNet predictions
            load_analysis_weights(model, ckpts[name], args.trust_pickle, head=True)
        cfg = model.pretrained_cfg
        records = evaluate(model, images, mapping, args.size, cfg.get('mean', (0.485, 0.456, 0.406)),
                           cfg.get('std', (0.229, 0.224, 0.225)), args.batch, torch.device(args.device))
        results[name] = shape_bias(records)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(results, out / 'shape_bias.png')
    (out / 'shape_bias.json').write_text(json.dumps(results, indent=1))
    print(json.dumps({n: dict(average=r['average'], overall=r['overall']) for n, r in results.items()}))
    return results


if __name__ == '__main__':
    main()
