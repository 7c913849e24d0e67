"""Multi-task soft-target cross-entropy over the samples labeled for each task."""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F


def dense_targets(idx: torch.Tensor, prob: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.zeros(idx.shape[0], num_classes, device=prob.device, dtype=prob.dtype).scatter_add_(1, idx, prob)


def smooth_human(target: torch.Tensor, human: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label smoothing on human labels only; teacher soft labels are already soft."""
    if smoothing <= 0:
        return target
    smoothed = target * (1 - smoothing) + smoothing / target.shape[1]
    return torch.where(human[:, None], smoothed, target)


def task_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean soft-target CE over the masked samples; zero, still in the graph, when none is labeled
    (so every head gets a gradient and no rank's backward differs in shape from another's)."""
    per_sample = -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    return (per_sample * mask).sum() / mask.sum().clamp(min=1)


def multitask_loss(logits: Dict[str, torch.Tensor], targets: Dict[str, dict], weights: Dict[str, float],
                   smoothing: Dict[str, float]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Weighted sum of the per-task losses; ``targets[task]`` holds dense ``target`` and ``mask``."""
    per_task = {}
    for task, out in logits.items():
        t = targets[task]
        target = smooth_human(t['target'], t['human'], smoothing[task])
        per_task[task] = task_loss(out, target, t['mask'])
    total = sum(weights[t] * loss for t, loss in per_task.items())
    return total, per_task
