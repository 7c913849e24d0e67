"""Which parameters take weight decay, decided in one place for every optimizer grouping (plain and
layer-decayed): timm's rule (``timm.optim.param_groups_weight_decay``), none on norms and biases
(every 1-d parameter or ``*.bias``) nor on what the model names in ``no_weight_decay()`` (a ViT's
position embedding, say; fnmatch patterns as timm reads them).

timm's own function is not called: it orders its groups no-decay first and drops empty ones (all
of them no-decay when the decay is 0), and a resumed optimizer's state is matched to its groups by
position and size, so our groups' order and count must not depend on a timm release."""
from __future__ import annotations

import fnmatch
from typing import Collection, Iterable, List, Tuple

from torch import nn


def exempt_names(model: nn.Module) -> Tuple[str, ...]:
    """The parameter names (or patterns) the model itself keeps out of weight decay."""
    return tuple(model.no_weight_decay()) if hasattr(model, 'no_weight_decay') else ()


def takes_weight_decay(name: str, param: nn.Parameter, exempt: Collection[str] = ()) -> bool:
    if param.ndim <= 1 or name.endswith('.bias'):
        return False
    return not any(fnmatch.fnmatch(name, pattern) for pattern in exempt)


def split_by_weight_decay(named: Iterable[Tuple[str, nn.Parameter]], exempt: Collection[str]
                          ) -> Tuple[List[nn.Parameter], List[nn.Parameter]]:
    """(decayed, not decayed) trainable parameters, each in the order given."""
    decay, no_decay = [], []
    for name, p in named:
        if p.requires_grad:
            (decay if takes_weight_decay(name, p, exempt) else no_decay).append(p)
    return decay, no_decay


def param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    """Two groups, always in this order (resume matches them by position): decayed, then not."""
    decay, no_decay = split_by_weight_decay(model.named_parameters(), exempt_names(model))
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]
