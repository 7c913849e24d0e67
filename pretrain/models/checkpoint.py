"""Loading RepLKNet weights from the official releases and common containers (timm convention)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from shards.common.errors import BadValue, UnknownName

# Containers in which training scripts wrap a state dict, most specific first.
_CONTAINER_KEYS = ('state_dict_ema', 'model_ema', 'state_dict', 'model', 'module')
_WRAPPER_PREFIXES = ('module.', '_orig_mod.')

# official name -> ours. Official transitions[i] precede stage i+1; we keep them in that stage.
_RENAMES = (
    (re.compile(r'^transitions\.(\d+)\.(\d+)\.nonlinear'), None),  # parameter-free ReLU
    (re.compile(r'^transitions\.(\d+)\.'), lambda m: f'stages.{int(m.group(1)) + 1}.downsample.'),
    (re.compile(r'^norm\.'), lambda m: 'head.norm.'),
    (re.compile(r'^head\.(weight|bias)$'), lambda m: f'head.fc.{m.group(1)}'),
)


def unwrap_state_dict(checkpoint: Any) -> Dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint and strip DDP/compile prefixes."""
    while isinstance(checkpoint, dict):
        key = next((k for k in _CONTAINER_KEYS if isinstance(checkpoint.get(k), dict)), None)
        if key is None:
            break
        checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise BadValue('checkpoint holds no state dict of tensors (looked inside '
                         f'{", ".join(_CONTAINER_KEYS)})')
    cleaned = {}
    for key, value in checkpoint.items():
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split('.', 1)[1]
        cleaned[key] = value
    return cleaned


def rename_official_key(key: str) -> str:
    for pattern, repl in _RENAMES:
        if pattern.search(key):
            return pattern.sub(repl, key, count=1) if repl else key
    return key


def _describe(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f' ... and {len(keys) - limit} more' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


_FORMS = ('train', 'merged', 'fused')


def checkpoint_form(keys) -> str:
    """'train' (BN branches), 'merged' (large kernels merged) or 'fused' (no BatchNorm left)."""
    keys = list(keys)
    if not any('lkb_reparam' in k for k in keys):
        return 'train'
    return 'merged' if any(k.endswith('running_mean') for k in keys) else 'fused'


def checkpoint_filter_fn(state_dict: Any, model: nn.Module) -> Dict[str, torch.Tensor]:
    """Map an official RepLKNet (or our own) checkpoint onto ``model``'s parameter names.

    A re-parameterized checkpoint (e.g. from ``python -m pretrain.export``) converts the
    freshly built model to the same form first, so ``timm.create_model(..., pretrained=True,
    pretrained_cfg_overlay=dict(file=...))`` loads it as it is. Raises a ``KeyError`` naming
    the missing and unexpected keys when the layouts do not match, except for the
    classifier, which timm drops itself when the class counts differ.
    """
    state_dict = {rename_official_key(k): v for k, v in unwrap_state_dict(state_dict).items()}
    theirs, ours = checkpoint_form(state_dict), checkpoint_form(model.state_dict())
    if _FORMS.index(theirs) > _FORMS.index(ours) and hasattr(model, 'reparameterize'):
        model.reparameterize(merge_only=theirs == 'merged')
    expected = set(model.state_dict())
    missing = {k for k in expected - set(state_dict) if not k.startswith('head.fc')}
    unexpected = {k for k in set(state_dict) - expected if not k.startswith('head.fc')}
    if missing or unexpected:
        hint = ''
        if any('lkb_origin' in k for k in unexpected):
            hint = ' (the checkpoint is in training form: build the model without reparam)'
        raise UnknownName(f'checkpoint does not match {type(model).__name__}{hint}; '
                       f'missing: [{_describe(missing)}]; unexpected: [{_describe(unexpected)}]')
    return state_dict


# timm.create_model arguments that point its loader at weights: in timm before 1.0.26 that loader
# unpickles fully (code runs). Model arguments read from configs and teacher specs must not hold
# them: weights come through the project's own loaders (``init.checkpoint``, a teacher's
# ``weights``). A pretrained config may still set what is not a source (input_size, crop_pct, ...).
LOADER_ARGS = frozenset({'pretrained', 'checkpoint_path'})
# What an export's model arguments never carry: how to run it (lk_impl) and timm's loader arguments
# (the export's own pretrained_cfg and file are what a loader uses).
NOT_SHAPE = LOADER_ARGS | {'pretrained_cfg', 'pretrained_cfg_overlay', 'lk_impl'}
PRETRAINED_CFG_SOURCES = frozenset({'file', 'url', 'hf_hub_id', 'hf_hub_filename', 'state_dict', 'source', 'custom_load'})


def loader_args_in(kwargs: dict) -> list:
    """What in ``kwargs`` would steer timm's weight loader (see :data:`LOADER_ARGS`), e.g.
    ``['checkpoint_path', 'pretrained_cfg_overlay.file']``."""
    found = sorted(set(kwargs) & LOADER_ARGS)
    for name in ('pretrained_cfg', 'pretrained_cfg_overlay'):
        value = kwargs.get(name)
        if isinstance(value, dict):
            found += [f'{name}.{key}' for key in sorted(set(value) & PRETRAINED_CFG_SOURCES)]
        elif value is not None:   # a tag or a config object: it can name any source
            found.append(name)
    return found


def export_meta(file) -> Optional[dict]:
    """The ``config.json`` that ``pretrain.export`` writes beside ``model.safetensors``, when ``file``
    is such an export (a config.json of anything else does not count)."""
    meta_path = Path(file).with_name('config.json')
    if not Path(file).is_file() or not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    return meta if 'pretrained_cfg' in meta and 'architecture' in meta else None


def export_model_args(meta: dict) -> dict:
    """The arguments that rebuild an export's model: timm's ``model_args`` (the Hugging Face layout
    ``save_config_for_hf`` writes, exports since issue 38) or ``model_kwargs`` (older exports)."""
    return dict(meta['model_args'] if 'model_args' in meta else meta.get('model_kwargs') or {})


def export_folder_file(pretrained_cfg) -> Optional[Path]:
    """The ``model.safetensors`` that ``timm.create_model('local-dir:FOLDER')`` is loading (timm
    hands the folder over as the pretrained_cfg's ``file``, its source ``local-dir``), else None."""
    if not isinstance(pretrained_cfg, dict) or pretrained_cfg.get('source') != 'local-dir':
        return None
    return Path(pretrained_cfg.get('file') or '') / 'model.safetensors'


def load_exported(file):
    """(the model an export describes, in its exported form with its trained head, its ``config.json``).
    The weights are safetensors (no code runs); ``pretrained_cfg`` gives timm its input size, crop and
    statistics; the model arguments come from the export, not from the caller."""
    import timm

    from . import registry  # noqa: F401  (registers the project's models with timm)
    meta = export_meta(file)
    if meta is None or Path(file).suffix != '.safetensors':
        raise BadValue(f'{file}: not an export of pretrain.export (a model.safetensors with a config.json naming '
                         'its architecture and pretrained_cfg beside it)')
    model_args = export_model_args(meta)
    loader_args = sorted(set(model_args) & NOT_SHAPE)
    if loader_args:   # a downloaded export must not steer timm's loader (e.g. to a pickle elsewhere)
        raise BadValue(f'{file}: its config.json puts {loader_args} among the model arguments; an export of '
                         'pretrain.export never does: re-export it, or remove them if you trust the file')
    model = timm.create_model(meta['architecture'], pretrained=True,
                              pretrained_cfg_overlay=dict(meta['pretrained_cfg'], file=str(file)), **model_args)
    return model, meta
