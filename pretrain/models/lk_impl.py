"""Which implementation runs the large-kernel depthwise convolutions: ``lk_impl`` by name.

- ``native``: ``nn.Conv2d`` (cuDNN on GPUs), the default.
- ``triton``: our Triton kernels (``pretrain.models.lk_conv``) everywhere; an error where they
  cannot run (CPU without ``TRITON_INTERPRET=1``, an unsupported dtype), never a quiet fallback.
  The algorithm per shape (``direct`` or ``toeplitz``) is the measured winner on this card where
  there is one, else ``direct``.
- ``auto``: the Triton kernels on CUDA for the layer shapes where ``bench/lk_conv.py`` measured
  them faster than cuDNN on this very card (``lk_conv_measured.json``, written by
  ``bench/lk_conv.py --write-table``, with the faster algorithm), ``nn.Conv2d`` everywhere else
  (CPU, another dtype, no Triton, no measurement for this card or shape); it logs each choice once.

Every module here is an ``nn.Conv2d`` (weight ``[C, 1, k, k]``, bias ``[C]``), so state dicts,
official checkpoints, re-parameterization and export are the same whichever runs.
"""
import functools
import json
import logging
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import torch
from torch import nn

from .layers import depthwise_conv2d

log = logging.getLogger(__name__)
MEASURED_TABLE = Path(__file__).with_name('lk_conv_measured.json')
LK_IMPLS = ('native', 'triton', 'auto')


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` with the geometry of :func:`depthwise_conv2d` (stride 1, padding k//2, groups = C)."""

    def __init__(self, channels: int, kernel_size: int, bias: bool):
        super().__init__(channels, channels, kernel_size, stride=1, padding=kernel_size // 2,
                         groups=channels, bias=bias)


class TritonDepthwiseConv2d(DepthwiseConv2d):
    """Depthwise ``k x k`` convolution (stride 1, padding k//2) computed by the Triton kernels."""

    def __init__(self, channels: int, kernel_size: int, bias: bool):
        if kernel_size % 2 == 0:
            raise ValueError(f'the Triton depthwise convolution needs an odd kernel size, got {kernel_size}')
        super().__init__(channels, kernel_size, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .lk_conv import depthwise_conv
        x, weight, bias = autocast_inputs(x, self.weight, self.bias)
        return depthwise_conv(x, weight, bias, measured_algorithm(x.device, x.dtype, x.shape[1],
                                                                 self.kernel_size[0], tuple(x.shape[-2:])))


class AutoDepthwiseConv2d(DepthwiseConv2d):
    """``nn.Conv2d`` unless this card's measurements say the Triton kernel is faster for this shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = autocast_dtype(x) or x.dtype
        use_triton, algorithm, why = auto_choice(x.device, dtype, x.shape[1], self.kernel_size[0],
                                                 tuple(x.shape[-2:]))
        log_choice_once(str(x.device), str(dtype), tuple(x.shape[1:]), self.kernel_size[0], use_triton, why)
        if not use_triton:
            return super().forward(x)
        from .lk_conv import depthwise_conv
        return depthwise_conv(*autocast_inputs(x, self.weight, self.bias), algorithm)


def autocast_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype autocast would run a convolution in on x's device, or None when it is off."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return None


def autocast_inputs(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
    """What autocast does for ``F.conv2d`` (a custom op is not on its list): all in the autocast
    dtype when it is on; otherwise the weight follows the input."""
    dtype = autocast_dtype(x) or x.dtype
    return x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


TABLE_FORMAT = 2


def shape_key(channels: int, kernel: int, height: int, width: int) -> str:
    return f'{channels},{kernel},{height},{width}'


@functools.lru_cache(maxsize=None)
def measured_faster(device_name: str, dtype: str) -> Dict[str, str]:
    """Shapes ("channels,kernel,height,width") where Triton beat cuDNN on this card -> the faster
    Triton algorithm, from the table."""
    if not MEASURED_TABLE.exists():
        return {}
    table = json.loads(MEASURED_TABLE.read_text())
    if table.get('format') != TABLE_FORMAT:
        raise ValueError(f'{MEASURED_TABLE}: format {table.get("format")!r} is not {TABLE_FORMAT}; '
                         'rerun bench/lk_conv.py --write-table')
    return dict(table.get('devices', {}).get(device_name, {}).get(dtype, {}))


def measured_winner(device: torch.device, dtype: torch.dtype, channels: int, kernel: int,
                    size: Tuple[int, int]) -> Optional[str]:
    """The Triton algorithm the table says beat cuDNN for this shape on this CUDA card, or None."""
    found = measured_faster(torch.cuda.get_device_name(device), str(dtype).replace('torch.', ''))
    return found.get(shape_key(channels, kernel, *size))


def measured_algorithm(device: torch.device, dtype: torch.dtype, channels: int, kernel: int,
                       size: Tuple[int, int]) -> str:
    """The Triton algorithm measured faster for this shape on this card, else 'direct'."""
    if device.type != 'cuda':
        return 'direct'
    return measured_winner(device, dtype, channels, kernel, size) or 'direct'


def auto_choice(device: torch.device, dtype: torch.dtype, channels: int, kernel: int,
                size: Tuple[int, int]) -> Tuple[bool, str, str]:
    """(use Triton?, its algorithm, why) for ``lk_impl='auto'``."""
    from . import lk_conv
    if kernel % 2 == 0:
        return False, '', f'the kernel handles odd sizes only, not {kernel}'
    if device.type != 'cuda':
        return False, '', f'{device.type} is not CUDA'
    if not lk_conv.triton_supported(device):
        return False, '', 'triton is not installed'
    if dtype not in lk_conv.SUPPORTED_DTYPES:
        return False, '', f'{dtype} is not among the kernel dtypes'
    name = torch.cuda.get_device_name(device)
    algorithm = measured_winner(device, dtype, channels, kernel, size)
    if algorithm is not None:
        return True, algorithm, f'measured faster than cuDNN on {name} ({algorithm}; {MEASURED_TABLE.name})'
    return False, '', f'no measurement on {name} shows it faster for this shape ({MEASURED_TABLE.name})'


@functools.lru_cache(maxsize=None)
def log_choice_once(device: str, dtype: str, shape: tuple, kernel: int, use_triton: bool, why: str) -> None:
    log.info("lk_impl='auto': %s for the %dx%d depthwise convolution of %d channels on %s maps, %s on %s: %s",
             'Triton' if use_triton else 'nn.Conv2d', kernel, kernel, shape[0], 'x'.join(map(str, shape[1:])),
             dtype, device, why)


FACTORIES: Dict[str, Callable[[int, int, bool], nn.Module]] = {
    'native': depthwise_conv2d, 'triton': TritonDepthwiseConv2d, 'auto': AutoDepthwiseConv2d}


def lk_conv_factory(lk_impl: Union[str, Callable[[int, int, bool], nn.Module]]) -> Callable[[int, int, bool], nn.Module]:
    """A factory ``(channels, kernel_size, bias) -> module`` from a name (JSON configs) or a callable (code)."""
    if callable(lk_impl):
        return lk_impl
    if lk_impl not in FACTORIES:
        raise ValueError(f'lk_impl {lk_impl!r} is not one of {LK_IMPLS}')
    return FACTORIES[lk_impl]
