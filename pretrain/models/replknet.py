"""RepLKNet (Ding et al., CVPR 2022), as the paper and its official code define it.

Layout follows timm: ``stem`` -> ``stages`` (each stage owns the transition
that precedes it as ``downsample``) -> ``head``. The official checkpoints keep
transitions in a separate list and the head at the top level;
``checkpoint_filter_fn`` maps them. Inside blocks the official names are kept.
"""

from typing import Dict, List, Optional, Sequence, Union

import torch
from timm.layers import DropPath
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import nn

from shards.common.errors import BadValue

from .layers import (
    ConvNorm,
    LargeKernelConvFactory,
    ReparamLargeKernelConv,
    depthwise_conv2d,
    fold_bn_into_following_linear,
    fold_bn_into_following_pointwise,
    is_bn,
)
from .lk_impl import lk_conv_factory
from .task_heads import TaskLinears

NumClasses = Union[int, Dict[str, int]]
# One task: logits (or features); several: logits by task. TorchScript needs the union spelled out.
HeadOutput = Union[torch.Tensor, Dict[str, torch.Tensor]]


class RepLKBlock(nn.Module):
    """pre-BN, 1x1 conv-BN-ReLU, large-kernel depthwise conv-BN, ReLU, 1x1 conv-BN, residual."""

    def __init__(self, channels: int, dw_channels: int, kernel_size: int,
                 small_kernel: Optional[int], drop_path: float,
                 conv_layer: LargeKernelConvFactory = depthwise_conv2d):
        super().__init__()
        self.prelkb_bn = nn.BatchNorm2d(channels)
        self.pw1 = ConvNorm(channels, dw_channels, 1, act=True)
        self.large_kernel = ReparamLargeKernelConv(dw_channels, kernel_size, small_kernel, conv_layer)
        self.lk_nonlinear = nn.ReLU()
        self.pw2 = ConvNorm(dw_channels, channels, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pw2(self.lk_nonlinear(self.large_kernel(self.pw1(self.prelkb_bn(x)))))
        return x + self.drop_path(out)

    @torch.no_grad()
    def reparameterize(self) -> None:
        self.pw1.reparameterize()
        if is_bn(self.prelkb_bn):
            fold_bn_into_following_pointwise(self.prelkb_bn, self.pw1.conv)
            self.prelkb_bn = nn.Identity()


class ConvFFN(nn.Module):
    """pre-BN, 1x1 conv-BN expanding, GELU, 1x1 conv-BN, residual."""

    def __init__(self, channels: int, hidden_channels: int, drop_path: float):
        super().__init__()
        self.preffn_bn = nn.BatchNorm2d(channels)
        self.pw1 = ConvNorm(channels, hidden_channels, 1)
        self.nonlinear = nn.GELU()
        self.pw2 = ConvNorm(hidden_channels, channels, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pw2(self.nonlinear(self.pw1(self.preffn_bn(x))))
        return x + self.drop_path(out)

    @torch.no_grad()
    def reparameterize(self) -> None:
        self.pw1.reparameterize()
        if is_bn(self.preffn_bn):
            fold_bn_into_following_pointwise(self.preffn_bn, self.pw1.conv)
            self.preffn_bn = nn.Identity()


class RepLKStage(nn.Module):
    """Optional transition (1x1 conv-BN-ReLU, 3x3 dw s2 conv-BN-ReLU), then N x (RepLK + ConvFFN)."""

    def __init__(self, in_chs: int, channels: int, depth: int, kernel_size: int,
                 small_kernel: Optional[int], drop_path_rates: Sequence[float],
                 dw_ratio: float, ffn_ratio: float, downsample: bool,
                 conv_layer: LargeKernelConvFactory = depthwise_conv2d):
        super().__init__()
        self.downsample = nn.Sequential(
            ConvNorm(in_chs, channels, 1, act=True),
            ConvNorm(channels, channels, 3, stride=2, groups=channels, act=True),
        ) if downsample else nn.Identity()
        blocks = []
        for rate in drop_path_rates:
            blocks.append(RepLKBlock(channels, int(channels * dw_ratio), kernel_size, small_kernel,
                                     rate, conv_layer))
            blocks.append(ConvFFN(channels, int(channels * ffn_ratio), rate))
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class RepLKHead(nn.Module):
    """BN, global average pool, linear classifier (one per task when ``num_classes`` is a dict).

    ``global_pool=''`` (timm's convention, with ``num_classes=0``): no pooling, the normalized
    NCHW feature map comes out."""

    def __init__(self, in_chs: int, num_classes: NumClasses, global_pool: str = 'avg'):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_chs)
        self.in_chs = in_chs
        self.reset(num_classes, global_pool)

    def reset(self, num_classes: NumClasses, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            if global_pool not in ('avg', ''):
                raise BadValue(f'RepLKNet supports global_pool "avg" or "" (no pooling), got {global_pool!r}')
            self.global_pool = global_pool
            self.pool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
        if not self.global_pool and num_classes:
            raise BadValue('global_pool="" gives unpooled feature maps: it needs num_classes=0')
        self.num_classes = num_classes
        if isinstance(num_classes, dict):
            self.fc = TaskLinears.for_tasks(self.in_chs, num_classes)
        else:
            self.fc = nn.Linear(self.in_chs, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> HeadOutput:
        x = self.pool(self.norm(x))
        if not self.global_pool:
            return x
        x = x.flatten(1)
        if pre_logits:
            return x
        return self.fc(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        fcs = list(self.fc.values()) if isinstance(self.fc, TaskLinears) else [self.fc]
        if not is_bn(self.norm) or not all(isinstance(fc, nn.Linear) for fc in fcs):
            return  # without a linear classifier the BN is the output's last op: keep it
        for fc in fcs:
            fold_bn_into_following_linear(self.norm, fc)
        self.norm = nn.Identity()


class RepLKNet(nn.Module):
    """RepLKNet backbone with a classification head (or a dict of task heads)."""

    def __init__(self, kernel_sizes: Sequence[int] = (31, 29, 27, 13),
                 depths: Sequence[int] = (2, 2, 18, 2),
                 channels: Sequence[int] = (128, 256, 512, 1024),
                 small_kernel: Optional[int] = 5, dw_ratio: float = 1.0, ffn_ratio: float = 4.0,
                 in_chans: int = 3, num_classes: NumClasses = 1000, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, global_pool: str = 'avg',
                 lk_impl: Union[str, LargeKernelConvFactory] = 'native',
                 reparam: str = 'none'):
        super().__init__()
        if not len(kernel_sizes) == len(depths) == len(channels):
            raise BadValue(f'kernel_sizes {kernel_sizes}, depths {depths} and channels {channels} '
                             'must have one entry per stage')
        if drop_rate:
            raise BadValue('RepLKNet supports only drop_rate=0')
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = channels[-1]
        width = channels[0]
        self.stem = nn.Sequential(
            ConvNorm(in_chans, width, 3, stride=2, act=True),
            ConvNorm(width, width, 3, groups=width, act=True),
            ConvNorm(width, width, 1, act=True),
            ConvNorm(width, width, 3, stride=2, groups=width, act=True),
        )
        # Stochastic depth rises linearly over the (RepLK + ConvFFN) block pairs, as in the official code.
        n = sum(depths)
        rates = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        stages, prev, self.feature_info = [], width, []
        conv_layer = lk_conv_factory(lk_impl)
        for i, (depth, chs, k) in enumerate(zip(depths, channels, kernel_sizes)):
            start = sum(depths[:i])
            stages.append(RepLKStage(prev, chs, depth, k, small_kernel, rates[start:start + depth],
                                     dw_ratio, ffn_ratio, downsample=i > 0, conv_layer=conv_layer))
            self.feature_info.append(dict(num_chs=chs, reduction=4 * 2 ** i, module=f'stages.{i}'))
            prev = chs
        self.stages = nn.Sequential(*stages)
        self.head = RepLKHead(prev, num_classes, global_pool)
        if reparam != 'none':
            # Build directly in a deployed form, e.g. to load an exported checkpoint.
            self.reparameterize(merge_only={'merged': True, 'fused': False}[reparam])

    # --- timm model interface -------------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: NumClasses, global_pool: Optional[str] = None) -> None:
        """timm's convention: ``global_pool=None`` keeps the pooling, ``''`` turns it off
        (``model(x)`` then gives the normalized feature map, with ``num_classes=0``)."""
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> HeadOutput:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> HeadOutput:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = 'NCHW',
                              intermediates_only: bool = False):
        """timm's feature API: the outputs of the stages ``indices`` names (an int n: the last n; a
        list: those; None: all), at strides 4, 8, 16, 32. ``norm`` applies the head's norm to the
        last stage's map; ``stop_early`` skips the stages after the last one taken. Returns the
        intermediates, or ``(final features, intermediates)``."""
        if output_fmt != 'NCHW':
            raise BadValue(f'RepLKNet gives NCHW feature maps, not {output_fmt!r}')
        take, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        last = len(self.stages) - 1
        x, intermediates = self.stem(x), []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                intermediates.append(self.head.norm(x) if norm and i == last else x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last one ``indices`` takes (and the classifier, the head's norm)."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        if prune_norm or max_index < len(self.stages) - 1:  # the head's norm belongs to the last stage
            self.head.norm = nn.Identity()
        self.stages = self.stages[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_head:
            self.reset_classifier(0, '')
        return take

    # --- structural re-parameterization -----------------------------------------------------
    @torch.no_grad()
    def reparameterize(self, merge_only: bool = False) -> 'RepLKNet':
        """Convert to the deploy form in place; harmless to call more than once.

        Step 1 (always): merge each large-kernel conv-BN with its small-kernel conv-BN
        into one biased conv (the official ``structural_reparam``).
        Step 2 (unless ``merge_only``): fuse every remaining conv-BN pair, fold the
        pre-block BNs into the following 1x1 convs and the head BN into the classifier.
        """
        for m in self.modules():
            if isinstance(m, ReparamLargeKernelConv):
                m.reparameterize()
        if not merge_only:
            for m in list(self.modules()):
                if m is not self and hasattr(m, 'reparameterize'):
                    m.reparameterize()
        return self
