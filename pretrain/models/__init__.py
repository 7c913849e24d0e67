"""Model library: RepLKNet variants registered with timm. No distributed or file I/O here."""
from .checkpoint import checkpoint_filter_fn, unwrap_state_dict
from .complexity import count_macs, count_params
from .layers import ConvNorm, ReparamLargeKernelConv, depthwise_conv2d
from .lk_impl import decide_before_compiling
from .mobilenet_lk import mobilenetv2_lk
from .registry import replknet_3, replknet_13, replknet_31b, replknet_31l, replknet_xl
from .replknet import ConvFFN, RepLKBlock, RepLKNet
from .task_heads import MultiHead, TaskLinears

__all__ = [
    'RepLKNet', 'RepLKBlock', 'ConvFFN', 'TaskLinears', 'MultiHead', 'ConvNorm', 'ReparamLargeKernelConv', 'depthwise_conv2d',
    'checkpoint_filter_fn', 'unwrap_state_dict', 'count_macs', 'count_params', 'decide_before_compiling',
    'replknet_31b', 'replknet_31l', 'replknet_xl', 'replknet_13', 'replknet_3', 'mobilenetv2_lk',
]
