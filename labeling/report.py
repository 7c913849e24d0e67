"""``labeling report``: coverage, confidence, entropy and teacher agreement per task."""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .store import LabelStore


def task_stats(store: LabelStore, task: str, shard_totals: Optional[Dict[str, int]] = None) -> dict:
    """Numbers for one task; ``shard_totals`` (samples per image source) adds the unlabeled count."""
    coverage: Dict[str, Counter] = defaultdict(Counter)
    confidence, entropy, top1, topk = [], [], [], []
    per_class: Counter = Counter()   # pseudo-labels by top-1 class
    for stem in sorted(store.committed_parts(task)):
        cols = store.read_part(task, stem).to_pydict()
        for key, idx, prob, source, t_idx in zip(cols['key'], cols['idx'], cols['prob'], cols['source'],
                                                 cols['teacher_idx']):
            coverage[key.split('/', 1)[0]][source] += 1
            if source == 'pseudo':
                p = np.asarray(prob, dtype=np.float64)
                confidence.append(float(p.max()))
                per_class[idx[int(p.argmax())]] += 1
                entropy.append(float(-(p * np.log(np.clip(p, 1e-12, None))).sum()))
            elif t_idx:
                top1.append(t_idx[0] == idx[0])
                topk.append((idx[0] in t_idx[:5], min(5, len(t_idx))))
    for src, total in (shard_totals or {}).items():
        coverage[src]['none'] = max(0, total - sum(coverage[src].values()))
    names = store.task(task).class_names
    stored_topk = store.manifest(task).get('topk')
    return dict(
        task=task,
        coverage={src: dict(c) for src, c in sorted(coverage.items())},
        # the store keeps each image's top-k teacher probabilities renormalized over those k: the
        # teacher's own top-1 probability is lower wherever k < classes (a random 3-class teacher
        # with k = 2 shows ~0.5 here)
        pseudo=dict(count=len(confidence), stored_topk=stored_topk, mean_top1_of_stored_topk=_mean(confidence),
                    mean_entropy_of_stored_topk=_mean(entropy),
                    per_class={names[i]: n for i, n in sorted(per_class.items())}),
        teacher_agreement=agreement(top1, topk, len(names)),
        _confidence=confidence, _entropy=entropy)


def agreement(top1: List[bool], topk: List[tuple], num_classes: int) -> dict:
    """How often the teacher's top-1 is the human label, and its top-k (k: 5, or fewer when the store
    keeps fewer; only when k < classes, else 1 by construction), or why unknown."""
    if not top1:
        return dict(images=0, top1=None, why_none='no human-labeled image went through the teacher: put a labeled '
                                                  'source in the label job\'s sources to measure this')
    out = dict(images=len(top1), top1=_mean(top1))
    k = min(kept for _, kept in topk)
    if 1 < k < num_classes:
        out[f'top{k}'] = _mean([hit for hit, _ in topk])
    return out


def _mean(values) -> Optional[float]:
    return float(np.mean(values)) if len(values) else None


def _plot(stats: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].hist(stats['_confidence'], bins=20, range=(0, 1), color='tab:blue')
    axes[0].set(title=f'{stats["task"]}: pseudo-label confidence', xlabel='top-1 probability', ylabel='images')
    axes[1].hist(stats['_entropy'], bins=20, color='tab:orange')
    axes[1].set(title='entropy of the top-k distribution', xlabel='nats')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(store: LabelStore, tasks: List[str], out: str,
                 shard_totals: Optional[Dict[str, int]] = None) -> dict:
    """report.json plus one PNG per task under ``out``; returns the JSON summary."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    summary = {}
    for task in tasks:
        stats = task_stats(store, task, shard_totals)
        if stats['_confidence']:
            _plot(stats, folder / f'{task}_confidence.png')
        summary[task] = {k: v for k, v in stats.items() if not k.startswith('_')}
    (folder / 'report.json').write_text(json.dumps(summary, indent=1))
    return summary
