"""Starting weights for fine-tuning, evaluation and export, from any of the forms we produce or accept."""
from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn

from shards.common.errors import BadValue, NotFound, UnknownName
from shards.common.safe_files import check_checkpoint_folder, load_torch_file

from . import checkpoint as ckpt
from .models.checkpoint import rename_official_key, unwrap_state_dict

log = logging.getLogger(__name__)


def check_run_folder(path: str, what: str, tag_option: str) -> None:
    """``path`` is a run folder (config.json and ckpt/), or an error saying what it is instead and
    what to pass: a missing path, one step of a run (``ckpt/step-N``), a run's ``ckpt/``, a shard
    folder. ``what`` names the option (``--checkpoint``, ``init.checkpoint``), ``tag_option`` the
    way to pick a step (``--tag``, ``init.tag``)."""
    p = Path(path)
    if not p.exists():
        raise NotFound(f'{what} {path}: no such file or folder')
    if not p.is_dir() or (p / 'config.json').is_file():
        return
    if p.name.startswith('step-') and p.parent.name == 'ckpt':
        raise BadValue(f'{what} {path} is one checkpoint of the run {p.parent.parent}: pass the run folder, '
                         f'and {tag_option} {p.name} for this step')
    if p.name == 'ckpt' and any(c.name.startswith('step-') for c in p.iterdir()):
        raise BadValue(f'{what} {path} holds the checkpoints of the run {p.parent}: pass the run folder')
    if (p / '_index').is_dir():
        raise BadValue(f'{what} {path} is a shard folder (it has _index/): pass a run folder, an export folder '
                         'or a weights file')
    raise BadValue(f'{what} {path}: not a run folder (no config.json) nor an export (no model.safetensors with '
                     'its config.json)')


def consolidate_run(run_dir: str, tag: Optional[str] = None, trust_pickle: bool = False) -> Dict[str, torch.Tensor]:
    """fp32 weights of a run's newest committed (or the given) ZeRO checkpoint, via DeepSpeed's own
    zero-to-fp32 utility (works for stages 1, 2 and 3). DeepSpeed unpickles its files fully, so
    each is checked first for globals beyond tensors, plain data and DeepSpeed's own classes."""
    from .distributed import import_deepspeed
    import_deepspeed()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tags = ckpt.committed_tags(run_dir)
    tag = tag or (tags[-1] if tags else None)
    if tag is None or tag not in tags:
        raise NotFound(f'{run_dir}: no committed checkpoint {tag or ""} to start from '
                                f'(committed: {tags})')
    check_checkpoint_folder(ckpt.ckpt_root(run_dir) / tag, trust_pickle)
    # DeepSpeed prints its progress to stdout, where evaluate and export print their JSON result
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.ckpt_root(run_dir)), tag=tag)
    log.info('consolidated %s/%s: %s', run_dir, tag, ' / '.join(said.getvalue().split('\n')).strip(' /'))
    return state


def read_weights(source: str, tag: Optional[str] = None, trust_pickle: bool = False) -> Dict[str, torch.Tensor]:
    """A state dict from a run folder, a .safetensors file, or a torch file (any usual container;
    loaded without code execution unless ``trust_pickle``)."""
    if os.path.isdir(source):
        return consolidate_run(source, tag, trust_pickle)
    if not os.path.isfile(source):
        raise NotFound(f'starting weights {source} not found')
    if source.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(source)
    return unwrap_state_dict(load_torch_file(source, trust_pickle))


def _retarget_head(state: Dict[str, torch.Tensor], model_keys, tasks: Dict[str, int]) -> Dict[str, torch.Tensor]:
    """A single-head checkpoint (official release, timm) feeds the task head of the same size."""
    if 'head.fc.weight' not in state or 'head.fc.weight' in model_keys:
        return state
    for task, n in tasks.items():
        if f'head.fc.{task}.weight' in model_keys and state['head.fc.weight'].shape[0] == n:
            state[f'head.fc.{task}.weight'] = state.pop('head.fc.weight')
            state[f'head.fc.{task}.bias'] = state.pop('head.fc.bias')
            break
    return state


def load_initial_weights(model: nn.Module, source: str, tasks: Dict[str, int], tag: Optional[str] = None,
                         trust_pickle: bool = False) -> dict:
    """Load what fits; report what was loaded, what is new (initialised here) and what was dropped.

    Backbone keys must all be present (a missing one is an error naming it); heads of other
    tasks are dropped, heads of new tasks start fresh.
    """
    state = {rename_official_key(k): v for k, v in read_weights(source, tag, trust_pickle).items()}
    own = model.state_dict()
    state = _retarget_head(state, own, tasks)
    loaded, dropped, mismatched = {}, [], []
    for k, v in state.items():
        if k not in own:
            dropped.append(k)
        elif own[k].shape != v.shape:
            mismatched.append(f'{k} {tuple(v.shape)} vs {tuple(own[k].shape)}')
        else:
            loaded[k] = v
    new = [k for k in own if k not in loaded]
    missing_backbone = [k for k in new if not k.startswith('head.fc.')]
    if missing_backbone or [m for m in mismatched if not m.startswith('head.fc.')]:
        raise UnknownName(f'{source}: the backbone does not match the model: missing {missing_backbone[:8]}, '
                       f'shape mismatches {[m for m in mismatched if not m.startswith("head.fc.")][:8]}')
    model.load_state_dict(loaded, strict=False)
    report = dict(source=str(source), loaded=len(loaded), new=sorted(new), dropped=sorted(dropped + mismatched))
    log.info('starting weights from %s: %d tensors loaded; new: %s; dropped: %s', source, len(loaded),
             report['new'] or 'none', report['dropped'] or 'none')
    return report


HEAD_PREFIXES = ('head.fc', 'head.weight', 'head.bias', 'fc.')


def load_analysis_weights(model: nn.Module, source: str, trust_pickle: bool = False, head: bool = False) -> None:
    """``source`` (an official release, a run folder, a weights file) into ``model`` for an
    analysis, through the mapping timm's entry points apply (``checkpoint_filter_fn``: official
    names, and the model brought to the checkpoint's form) for RepLKNet. Every backbone key must
    be there; the classifier too with ``head`` (else it is ignored)."""
    from .models import RepLKNet, checkpoint_filter_fn
    state = read_weights(source, trust_pickle=trust_pickle)
    if isinstance(model, RepLKNet):
        state = checkpoint_filter_fn(state, model)
    if not head:
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    missing, _ = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if head or not k.startswith(HEAD_PREFIXES)]
    if missing:
        raise UnknownName(f'{source} lacks {missing[:5]} of {type(model).__name__}')


def load_ema_weights(model: nn.Module, run_dir: str, tag: Optional[str] = None) -> None:
    """The EMA weights a fine-tuning run saved beside its DeepSpeed checkpoint."""
    tags = ckpt.committed_tags(run_dir)
    tag = tag or (tags[-1] if tags else None)
    state = ckpt.load_part(run_dir, tag, 'ema') if tag else None
    if state is None:
        raise NotFound(f'{run_dir}: no EMA weights in checkpoint {tag} (was train.ema_decay set?)')
    model.load_state_dict(state)
