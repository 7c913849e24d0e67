"""A classifier per task, in one place: ``TaskLinears`` (one linear layer per task) is what RepLKNet's
head holds as ``head.fc`` and what ``MultiHead`` puts on any other timm backbone as ``heads``.

Checkpoint keys are ``head.fc.{task}.weight`` (RepLKNet) and ``backbone.*`` + ``heads.{task}.weight``
(any other backbone): export, teacher loading and starting weights read those names."""
from typing import Dict

import torch
from torch import nn

from shards.common.errors import BadValue

from ..weight_decay import exempt_names


class TaskLinears(nn.ModuleDict):
    """One linear classifier per task, called in the fixed order the tasks were given.

    A ``ModuleDict`` so checkpoints keep ``head.fc.{task}.weight``; a module with its own
    ``forward`` so the head calls ``self.fc(x)`` whatever the classifier is, which is what lets
    TorchScript compile the single-head model (no ``isinstance`` branch on the classifier type)."""

    @classmethod
    def for_tasks(cls, in_features: int, classes: Dict[str, int]) -> 'TaskLinears':
        """Freshly initialised classifiers over ``in_features`` (``classes``: task -> its number of classes)."""
        if not classes:
            raise BadValue('num_classes dict is empty: name at least one task')
        return cls({task: nn.Linear(in_features, n) for task, n in classes.items()})

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        out: Dict[str, torch.Tensor] = {}
        for task, fc in self.items():
            out[task] = fc(x)
        return out


class MultiHead(nn.Module):
    """One linear head per task on any timm backbone without native dict heads (built with ``num_classes=0``,
    so it gives pooled features)."""

    def __init__(self, backbone: nn.Module, heads: Dict[str, int]):
        super().__init__()
        self.backbone = backbone
        self.heads = TaskLinears.for_tasks(backbone.num_features, heads)

    def forward(self, x):
        return self.heads(self.backbone(x))

    def no_weight_decay(self) -> set:
        """The backbone's own exemptions (a ViT's position embedding), under the names they have here."""
        return {f'backbone.{name}' for name in exempt_names(self.backbone)}
