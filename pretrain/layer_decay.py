"""Stage-wise (or block-wise) learning-rate decay from the model's ``group_matcher`` (BEiT style)."""
from __future__ import annotations

from typing import Collection, Dict, List, Optional

from timm.models import group_parameters
from torch import nn

from shards.common.errors import BadValue

from .weight_decay import exempt_names, split_by_weight_decay


def layer_decay_groups(model: nn.Module, weight_decay: float, decay: float, coarse: bool = True,
                       exempt: Optional[Collection[str]] = None) -> List[dict]:
    """Parameter groups with ``lr_scale = decay ** (last_id - id)``: the head trains at the full lr,
    each earlier stage (or block) at ``decay`` times the next. Weight decay as ``weight_decay.param_groups``
    (none on norms and biases).

    With ``coarse`` (the default) the groups are stem, stage 1..N, head; else one per block.
    ``exempt`` as in ``weight_decay.param_groups``.
    """
    if not hasattr(model, 'group_matcher'):
        raise BadValue(f'{type(model).__name__} has no group_matcher: layer decay needs one (timm convention)')
    groups_by_id = group_parameters(model, model.group_matcher(coarse=coarse))  # ordered: stem ... head
    last = len(groups_by_id) - 1
    params = dict(model.named_parameters())
    exempt = exempt_names(model) if exempt is None else exempt
    out: List[dict] = []
    for layer_id, names in enumerate(groups_by_id.values()):
        scale = decay ** (last - layer_id)
        label = ('stem' if layer_id == 0 else 'head' if layer_id == last else f'stage{layer_id}') if coarse \
            else f'layer{layer_id}'
        decay_p, plain_p = split_by_weight_decay(((n, params[n]) for n in names), exempt)
        for plist, wd, kind in ((decay_p, weight_decay, 'decay'), (plain_p, 0.0, 'no_decay')):
            if plist:
                out.append(dict(params=plist, weight_decay=wd, lr_scale=scale, layer_id=layer_id,
                                name=f'{label}_{kind}'))
    return out


def apply_lr_scale(groups: List[dict], base_lr: float) -> List[dict]:
    """Each group's lr = base lr x its scale; the schedule then multiplies every group alike."""
    for g in groups:
        g['lr'] = base_lr * g.get('lr_scale', 1.0)
    return groups


def describe(groups: List[dict]) -> Dict[str, float]:
    return {g.get('name', str(i)): g['lr'] for i, g in enumerate(groups)}
