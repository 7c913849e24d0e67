"""Mixup / CutMix on images and dense multi-task targets (timm's parameter sampling)."""
from __future__ import annotations

from typing import Dict

import torch
from timm.data.mixup import cutmix_bbox_and_lam


class MultiTaskMixup:
    def __init__(self, mixup_alpha: float, cutmix_alpha: float, prob: float = 1.0, switch_prob: float = 0.5):
        self.mixup_alpha, self.cutmix_alpha, self.prob, self.switch_prob = mixup_alpha, cutmix_alpha, prob, switch_prob

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def _params(self, gen):
        if gen.random() > self.prob:
            return 1.0, False
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or gen.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(gen.beta(alpha, alpha)), use_cutmix

    def __call__(self, images: torch.Tensor, targets: Dict[str, dict], gen):
        """Mixes each sample with the batch reversed (timm's default pairing); a task's mixed
        target counts only where both samples are labeled for it."""
        lam, use_cutmix = self._params(gen)
        if lam == 1.0:
            return images, targets
        flipped = images.flip(0)
        if use_cutmix:
            (y0, y1, x0, x1), lam = cutmix_bbox_and_lam(images.shape, lam, correct_lam=True)
            images = images.clone()
            images[:, :, y0:y1, x0:x1] = flipped[:, :, y0:y1, x0:x1]
        else:
            images = images * lam + flipped * (1 - lam)
        mixed = {}
        for task, t in targets.items():
            mixed[task] = dict(target=t['target'] * lam + t['target'].flip(0) * (1 - lam),
                               mask=t['mask'] & t['mask'].flip(0), human=t['human'] & t['human'].flip(0))
        return images, mixed
