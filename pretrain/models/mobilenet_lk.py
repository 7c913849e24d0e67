"""MobileNet V2 with large or dilated depthwise kernels (the paper's Sec. 3 and Appendix E).

``timm.create_model('mobilenetv2_lk', kernel_size=13)`` replaces every 3x3 depthwise conv of
MobileNet V2 1.0 by a 13x13 one; ``kernel_size=3, dilation=6`` makes them 3x3 dilated by 6
(the same maximum receptive field, 13); ``small_kernel=3`` adds the parallel 3x3 conv-BN branch of
Guideline 3 (the paper's 73.24 % model, Appendix F), merged into the large kernel by
``reparameterize()`` exactly as RepLKNet's. Built with timm's EfficientNet builder.
"""
from __future__ import annotations

from functools import partial
from typing import Iterator, Optional

from timm.models import generate_default_cfgs, register_model
from timm.models._efficientnet_builder import decode_arch_def, resolve_act_layer, resolve_bn_args, round_channels
from timm.models.efficientnet import _create_effnet
from torch import nn

from shards.common.errors import BadValue

from .layers import ReparamLargeKernelConv


def _arch(kernel_size: int) -> list:
    k = kernel_size
    return [[f'ds_r1_k{k}_s1_c16'], [f'ir_r2_k{k}_s2_e6_c24'], [f'ir_r3_k{k}_s2_e6_c32'],
            [f'ir_r4_k{k}_s2_e6_c64'], [f'ir_r3_k{k}_s1_e6_c96'], [f'ir_r3_k{k}_s2_e6_c160'],
            [f'ir_r1_k{k}_s1_e6_c320']]


def dilate_depthwise(model: nn.Module, dilation: int) -> nn.Module:
    """Dilate every depthwise conv, padding so the spatial size is unchanged."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1 and m.kernel_size[0] > 1:
            k = m.kernel_size[0]
            m.dilation, m.padding = (dilation, dilation), (dilation * (k // 2),) * 2
    return model


def depthwise_blocks(model: nn.Module) -> Iterator[nn.Module]:
    """timm's blocks that hold a depthwise ``conv_dw``."""
    return (m for m in model.modules() if hasattr(m, 'conv_dw'))


def norm_after_depthwise(block: nn.Module) -> str:
    """The name of the norm-act that follows ``conv_dw`` in a timm block: ``bn2`` in an
    InvertedResidual (``conv_pw, bn1, conv_dw, bn2, ...``), ``bn1`` in a DepthwiseSeparableConv."""
    return 'bn2' if hasattr(block, 'conv_pwl') else 'bn1'


def add_small_kernel_branches(model: nn.Module, small_kernel: int) -> nn.Module:
    """Every depthwise conv and its BatchNorm become a ReparamLargeKernelConv (large conv-BN plus a
    ``small_kernel`` conv-BN, summed); the block's activation stays after them."""
    for block in depthwise_blocks(model):
        dw, norm_name = block.conv_dw, norm_after_depthwise(block)
        norm = getattr(block, norm_name)
        block.conv_dw = ReparamLargeKernelConv(dw.in_channels, dw.kernel_size[0], small_kernel, stride=dw.stride[0])
        setattr(block, norm_name, nn.Sequential(norm.drop, norm.act))
    return model


default_cfgs = generate_default_cfgs({'mobilenetv2_lk.untrained': {
    'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7), 'crop_pct': 0.875,
    'interpolation': 'bilinear', 'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225),
    'first_conv': 'conv_stem', 'classifier': 'classifier'}})


@register_model
def mobilenetv2_lk(pretrained: bool = False, kernel_size: int = 13, dilation: int = 1,
                   small_kernel: Optional[int] = None, **kwargs):
    if kernel_size % 2 == 0 or kernel_size < 3 or dilation < 1:
        raise BadValue(f'kernel_size must be odd and >= 3 and dilation >= 1, got {kernel_size}, {dilation}')
    if small_kernel is not None and (dilation > 1 or small_kernel % 2 == 0 or small_kernel >= kernel_size):
        raise BadValue(f'small_kernel must be odd and smaller than kernel_size ({kernel_size}), without dilation; '
                         f'got {small_kernel} (dilation {dilation})')
    model_kwargs = dict(
        block_args=decode_arch_def(_arch(kernel_size)),
        num_features=1280, stem_size=32, round_chs_fn=partial(round_channels, multiplier=1.0),
        norm_layer=kwargs.pop('norm_layer', None) or partial(nn.BatchNorm2d, **resolve_bn_args(kwargs)),
        act_layer=resolve_act_layer(kwargs, 'relu6'), **kwargs)
    model = _create_effnet('mobilenetv2_lk', pretrained, **model_kwargs)
    if small_kernel is not None:
        return add_small_kernel_branches(model, small_kernel)
    return dilate_depthwise(model, dilation) if dilation > 1 else model
