"""Building blocks of RepLKNet that know how to re-parameterize themselves.

Every module here exposes ``reparameterize()`` (the hook timm's generic
``timm.utils.reparameterize_model`` calls) and is idempotent: calling it on an
already-fused module changes nothing.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from shards.common.errors import BadValue

LargeKernelConvFactory = Callable[[int, int, bool], nn.Module]


def depthwise_conv2d(channels: int, kernel_size: int, bias: bool) -> nn.Module:
    """The default large-kernel depthwise convolution: a plain ``nn.Conv2d``.

    Any replacement (e.g. an implicit-GEMM GPU kernel) must accept the same
    three arguments, keep the spatial size, and expose ``weight`` shaped
    ``(channels, 1, k, k)`` and ``bias`` (or ``None``) so re-parameterization
    can read and write it.
    """
    return nn.Conv2d(channels, channels, kernel_size, stride=1, padding=kernel_size // 2,
                     groups=channels, bias=bias)


def bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as an affine map ``y = x * scale + shift`` per channel."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    return scale, shift


def fuse_conv_bn_weights(conv: nn.Module, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of one conv equivalent to ``bn(conv(x))`` in eval mode."""
    scale, shift = bn_scale_shift(bn)
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias * scale + shift
    return weight, bias


def conv_like(conv: nn.Conv2d, bias: bool) -> nn.Conv2d:
    """A new ``nn.Conv2d`` with the geometry of ``conv``."""
    return nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                     padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=bias,
                     device=conv.weight.device, dtype=conv.weight.dtype)


def is_bn(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


class ConvNorm(nn.Module):
    """conv -> BN (-> ReLU). After ``reparameterize()``: one biased conv (-> ReLU).

    Parameter names (``conv``, ``bn``) match the official implementation's
    ``conv_bn``/``conv_bn_relu`` sequentials, so checkpoints load unchanged.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, act: bool = False,
                 conv: Optional[nn.Module] = None):
        super().__init__()
        self.conv = conv if conv is not None else nn.Conv2d(
            in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2,
            groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if not is_bn(self.bn):
            return
        weight, bias = fuse_conv_bn_weights(self.conv, self.bn)
        fused = conv_like(self.conv, bias=True)
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
        self.conv, self.bn = fused, nn.Identity()


@torch.no_grad()
def fold_bn_into_following_pointwise(bn: nn.Module, conv: nn.Conv2d) -> None:
    """Fold ``conv(bn(x))`` into ``conv`` in place (exact only for 1x1, no padding).

    The conv must already carry a bias (it has been fused with its own BN).
    """
    assert conv.kernel_size == (1, 1) and conv.padding == (0, 0) and conv.groups == 1
    scale, shift = bn_scale_shift(bn)
    w = conv.weight  # (out, in, 1, 1)
    conv.bias.add_(w.flatten(1) @ shift)
    w.mul_(scale.reshape(1, -1, 1, 1))


@torch.no_grad()
def fold_bn_into_following_linear(bn: nn.Module, fc: nn.Linear) -> None:
    """Fold ``fc(pool(bn(x)))`` into ``fc`` in place (average pooling is linear)."""
    scale, shift = bn_scale_shift(bn)
    fc.bias.add_(fc.weight @ shift)
    fc.weight.mul_(scale.reshape(1, -1))


class ReparamLargeKernelConv(nn.Module):
    """Large-kernel depthwise conv-BN, plus an optional parallel small-kernel conv-BN.

    ``reparameterize()`` merges both branches into one biased large-kernel conv
    (the official ``merge_kernel``); the result is stored as ``lkb_reparam``. ``stride`` 2 (MobileNet
    V2's downsampling depthwise convs) uses ``nn.Conv2d`` for the large kernel: ``conv_layer``
    builds stride-1 convs; both kernels stay centred on the same pixels, so they still merge.
    """

    def __init__(self, channels: int, kernel_size: int, small_kernel: Optional[int],
                 conv_layer: LargeKernelConvFactory = depthwise_conv2d, stride: int = 1):
        super().__init__()
        if small_kernel is not None and small_kernel > kernel_size:
            raise BadValue(f'small_kernel {small_kernel} is larger than kernel_size {kernel_size}')
        self.channels, self.kernel_size, self.small_kernel = channels, kernel_size, small_kernel
        self.conv_layer, self.stride = conv_layer, stride
        self.lkb_origin = ConvNorm(channels, channels, kernel_size, conv=self._large_conv(bias=False))
        self.small_conv = None
        if small_kernel is not None:
            self.small_conv = ConvNorm(channels, channels, small_kernel, stride=stride, groups=channels)
        self.lkb_reparam = None

    def _large_conv(self, bias: bool) -> nn.Module:
        if self.stride == 1:
            return self.conv_layer(self.channels, self.kernel_size, bias)
        return nn.Conv2d(self.channels, self.channels, self.kernel_size, stride=self.stride,
                         padding=self.kernel_size // 2, groups=self.channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lkb_reparam is not None:
            return self.lkb_reparam(x)
        out = self.lkb_origin(x)
        if self.small_conv is not None:
            out = out + self.small_conv(x)
        return out

    @torch.no_grad()
    def equivalent_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = fuse_conv_bn_weights(self.lkb_origin.conv, self.lkb_origin.bn)
        if self.small_conv is not None:
            small_w, small_b = fuse_conv_bn_weights(self.small_conv.conv, self.small_conv.bn)
            pad = (self.kernel_size - self.small_kernel) // 2
            weight = weight + nn.functional.pad(small_w, [pad] * 4)
            bias = bias + small_b
        return weight, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.lkb_reparam is not None:
            return
        weight, bias = self.equivalent_kernel_bias()
        merged = self._large_conv(bias=True)
        merged.to(device=weight.device, dtype=weight.dtype)
        merged.weight.copy_(weight)
        merged.bias.copy_(bias)
        self.lkb_reparam = merged
        self.lkb_origin = None
        self.small_conv = None
