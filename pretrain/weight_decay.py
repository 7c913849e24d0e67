"""Which parameters take weight decay, decided in one place for every optimizer grouping (plain and
layer-decayed): timm's rule (``timm.optim.param_groups_weight_decay``), none on norms and biases
(every 1-d parameter or ``*.bias``) nor on what the model names in ``no_weight_decay()`` (a ViT's
position embedding, say; fnmatch patterns as timm reads them).

timm's own function is not called: it orders its groups no-decay first and drops empty ones (all
of them no-decay when the decay is 0), and a resumed optimizer's state is matched to its groups by
position and size, so our groups' order and count must not depend on a timm release."""
from __future__ import annotations

import fnmatch
from datetime import datetime, timezone
from typing import Collection, Iterable, List, Optional, Tuple

from torch import nn

from shards.common.errors import BadValue


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


def param_groups(model: nn.Module, weight_decay: float, exempt: Optional[Collection[str]] = None) -> List[dict]:
    """Two groups, always in this order (resume matches them by position): decayed, then not.
    ``exempt``: the names kept out of weight decay besides norms and biases (default: the model's)."""
    decay, no_decay = split_by_weight_decay(model.named_parameters(), exempt_names(model) if exempt is None else exempt)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def group_sizes(groups: List[dict]) -> List[int]:
    """Elements per optimizer group: what a checkpoint's optimizer state must fit (ZeRO flattens each
    group into one partition, so a parameter moved between groups changes two sizes)."""
    return [sum(p.numel() for p in g['params']) for g in groups]


# When the parameters a model names in no_weight_decay() stopped taking weight decay (commit d4d0bd9):
# checkpoints written before then, which record no group sizes, were grouped without those exemptions.
EXEMPTIONS_SINCE = datetime(2026, 12, 7, 18, 44, 24, tzinfo=timezone.utc).timestamp()


def check_groups_fit(saved: Optional[List[int]], now: List[int], legacy: List[int], written_at: float,
                     tag: str) -> None:
    """Refuse a resume whose optimizer groups differ from those the checkpoint's state was made for:
    ``saved`` as it records them, or (None: written before checkpoints recorded them) ``legacy``, the
    groups without exemptions, when it was written before ``EXEMPTIONS_SINCE``."""
    if saved is not None:
        expected, why = list(saved), 'which parameters take weight decay changed'
    elif written_at < EXEMPTIONS_SINCE:
        expected, why = list(legacy), ('the parameters the model names in no_weight_decay() took weight decay '
                                       'when it was written (before 2026-12-07)')
    else:
        return   # written by the version that made the exemptions, before sizes were recorded: its groups
    if expected != list(now):
        raise BadValue(f'{tag}: its optimizer state holds groups of {expected} elements, this run groups '
                       f'{list(now)}: {why}. Finish the run with the version that started it, or start a new run '
                       'from its weights with init.checkpoint: <this run folder>')
