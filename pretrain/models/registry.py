"""RepLKNet variants registered with timm: ``timm.create_model('replknet_31b', ...)``."""
from __future__ import annotations

import logging
from typing import Optional, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from shards.common.errors import BadValue
from shards.common.safe_files import load_torch_file

from .checkpoint import checkpoint_filter_fn, export_folder_file, export_meta, export_model_args, unwrap_state_dict
from .replknet import RepLKNet

log = logging.getLogger(__name__)
OFFICIAL_REPO = 'https://github.com/DingXiaoH/RepLKNet-pytorch'


def _create_replknet(variant: str, pretrained: bool = False, defaults: Optional[dict] = None, **kwargs) -> RepLKNet:
    """``defaults``: the variant's shape; an export's own model arguments come next, then the caller's."""
    file, exported = _export_beside(variant, kwargs) if pretrained else (None, {})
    kwargs = {**(defaults or {}), **export_model_args(exported), **kwargs}
    if pretrained:
        _read_torch_file_ourselves(kwargs)
    if exported and kwargs.get('pretrained_cfg_overlay'):
        # The export's pretrained_cfg describes the exported model (classes, input size, crop);
        # the caller's overlay (its file, at least) wins. With it, timm keeps the trained head.
        # (Through 'local-dir:' timm has read that pretrained_cfg itself.)
        kwargs['pretrained_cfg_overlay'] = dict(exported['pretrained_cfg'], **kwargs['pretrained_cfg_overlay'])
    if exported:
        asked = kwargs.get('num_classes', exported['num_classes'])
        if asked != exported['num_classes']:
            log.warning('%s: the export classifies %d classes; num_classes=%s was asked, so its head is not '
                        'loaded and a new, random one is built (omit num_classes to keep the trained head)',
                        file, exported['num_classes'], asked)
    model = build_model_with_cfg(
        RepLKNet, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)),
        **kwargs)
    for cfg in {id(c): c for c in (model.pretrained_cfg, getattr(model, 'default_cfg', None)) if c}.values():
        cfg.pop('state_dict', None)   # the weights handed over above: no second copy kept on the model
    return model


def _read_torch_file_ourselves(kwargs: dict) -> None:
    """A torch file named in the overlay (an official release's ``.pth``) is read by the project's
    loader, which runs no code (``shards.common.safe_files``), and handed to timm as a state dict: timm's
    own loader unpickles fully in releases before 1.0.26. Safetensors files stay timm's to read."""
    overlay = kwargs.get('pretrained_cfg_overlay') or {}
    file = overlay.get('file')
    if file and not str(file).endswith('.safetensors'):
        state = unwrap_state_dict(load_torch_file(file))
        kwargs['pretrained_cfg_overlay'] = dict({k: v for k, v in overlay.items() if k != 'file'}, state_dict=state)


def _export_beside(variant: str, kwargs: dict) -> Tuple[Optional[str], dict]:
    """(the file, the ``config.json`` that ``pretrain.export`` writes beside ``model.safetensors``) when
    the weights being loaded have one: a file named in ``pretrained_cfg_overlay``, or the folder of
    ``timm.create_model('local-dir:FOLDER')`` (an older export's config.json there holds its shape as
    ``model_kwargs``, which timm does not read)."""
    file = (kwargs.get('pretrained_cfg_overlay') or {}).get('file') or export_folder_file(kwargs.get('pretrained_cfg'))
    meta = export_meta(file) if file else None
    if meta is None:
        return None, {}
    if meta['architecture'] != variant:
        raise BadValue(f'{file} is an export of {meta["architecture"]}, not {variant}: '
                         f'timm.create_model({meta["architecture"]!r}, ...)')
    return str(file), meta


def _cfg(**kwargs) -> dict:
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0.conv', 'classifier': 'head.fc', 'license': 'mit',
        'origin_url': OFFICIAL_REPO, **kwargs,
    }


# No hub copies exist: weights come from local files, e.g.
# pretrained_cfg_overlay=dict(file='RepLKNet-31B_ImageNet-1K_224.pth').
default_cfgs = generate_default_cfgs({
    'replknet_31b.in1k': _cfg(),
    'replknet_31b.in1k_384': _cfg(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
    'replknet_31b.in22k_ft_in1k': _cfg(),
    'replknet_31b.in22k': _cfg(num_classes=21841),
    'replknet_31l.in22k_ft_in1k_384': _cfg(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0),
    'replknet_31l.in22k': _cfg(num_classes=21841),
    # The official XL evaluation resizes to 365, center-crops 320 and normalizes with 0.5/0.5.
    'replknet_xl.megdata73m_ft_in1k_320': _cfg(
        input_size=(3, 320, 320), pool_size=(10, 10), crop_pct=320 / 365,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    'replknet_13.untrained': _cfg(),
    'replknet_3.untrained': _cfg(),
})


@register_model
def replknet_31b(pretrained: bool = False, **kwargs) -> RepLKNet:
    args = dict(kernel_sizes=(31, 29, 27, 13), depths=(2, 2, 18, 2), channels=(128, 256, 512, 1024),
                small_kernel=5)
    return _create_replknet('replknet_31b', pretrained, args, **kwargs)


@register_model
def replknet_31l(pretrained: bool = False, **kwargs) -> RepLKNet:
    args = dict(kernel_sizes=(31, 29, 27, 13), depths=(2, 2, 18, 2), channels=(192, 384, 768, 1536),
                small_kernel=5)
    return _create_replknet('replknet_31l', pretrained, args, **kwargs)


@register_model
def replknet_xl(pretrained: bool = False, **kwargs) -> RepLKNet:
    """XL: inverted bottleneck (the RepLK block runs at 1.5x width), no small-kernel branch."""
    args = dict(kernel_sizes=(27, 27, 27, 13), depths=(2, 2, 18, 2), channels=(256, 512, 1024, 2048),
                small_kernel=None, dw_ratio=1.5)
    return _create_replknet('replknet_xl', pretrained, args, **kwargs)


@register_model
def replknet_13(pretrained: bool = False, **kwargs) -> RepLKNet:
    """31B with 13x13 kernels everywhere: the paper's ERF baseline (Table 10)."""
    args = dict(kernel_sizes=(13, 13, 13, 13), depths=(2, 2, 18, 2), channels=(128, 256, 512, 1024),
                small_kernel=5)
    return _create_replknet('replknet_13', pretrained, args, **kwargs)


@register_model
def replknet_3(pretrained: bool = False, **kwargs) -> RepLKNet:
    """31B with 3x3 kernels and no re-param branch: the small-kernel baseline of Appendix C."""
    args = dict(kernel_sizes=(3, 3, 3, 3), depths=(2, 2, 18, 2), channels=(128, 256, 512, 1024),
                small_kernel=None)
    return _create_replknet('replknet_3', pretrained, args, **kwargs)
