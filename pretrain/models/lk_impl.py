"""Which implementation runs the large-kernel depthwise convolutions: ``lk_impl`` by name.

- ``native``: ``nn.Conv2d`` (cuDNN on GPUs), the default.
- ``triton``: our Triton kernels (``pretrain.models.lk_conv``) everywhere; an error where they
  cannot run (CPU without ``TRITON_INTERPRET=1``, an unsupported dtype), never a quiet fallback.
  The algorithm per shape (``direct`` or ``toeplitz``) is the faster one on this card, measured at
  the shape's first call (:mod:`pretrain.models.lk_choice`).
- ``auto``: the fastest of cuDNN and the Triton algorithms for each layer shape on this very card,
  measured at the shape's first call like ``cudnn.benchmark`` and cached on disk per card and
  torch/triton version (:mod:`pretrain.models.lk_choice`); ``nn.Conv2d`` where Triton cannot run
  (no CUDA, no Triton, another dtype, an even kernel) and for a call the kernels refuse (an empty
  batch, 2**31 elements or more). Each decision and each fallback is logged once.

``lk_conv_measured.json`` beside this file is an optional override: a card, dtype and shape
listed there runs the algorithm written there, unmeasured (``bench/lk_conv.py --write-table``).

Every module here is an ``nn.Conv2d`` (weight ``[C, 1, k, k]``, bias ``[C]``), so state dicts,
official checkpoints, re-parameterization and export are the same whichever runs.
"""
import abc
import functools
import logging
from typing import Callable, Dict, Optional, Union

import torch
from torch import nn

from shards.common.errors import BadValue

from .layers import depthwise_conv2d
from .lk_choice import EVERY_CANDIDATE, card_identity, choose, remembered
from .lk_measure import TRITON_ALGORITHMS

log = logging.getLogger(__name__)
LK_IMPLS = ('native', 'triton', 'auto')


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` with the geometry of :func:`depthwise_conv2d` (stride 1, padding k//2, groups = C)."""

    def __init__(self, channels: int, kernel_size: int, bias: bool):
        super().__init__(channels, channels, kernel_size, stride=1, padding=kernel_size // 2,
                         groups=channels, bias=bias)


class DecidingDepthwiseConv2d(DepthwiseConv2d, metaclass=abc.ABCMeta):
    """A large-kernel conv whose algorithm is decided per input signature (map size, dtype, memory
    format) at its first eager call, and kept on the module: a compiled graph reads the decision
    as a constant, with no measuring, file access or logging inside it (zero graph breaks), so
    decisions are made before tracing (:func:`decide_before_compiling`)."""

    def __init__(self, channels: int, kernel_size: int, bias: bool):
        super().__init__(channels, kernel_size, bias)
        self.decided: Dict[tuple, str] = {}   # signature -> 'cudnn' | 'direct' | 'toeplitz'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = autocast_dtype(x) or x.dtype
        signature = (x.shape[-2], x.shape[-1], dtype, x.is_contiguous(memory_format=torch.channels_last))
        if torch.compiler.is_compiling():
            algorithm = self.decided.get(signature)
            if algorithm is None:
                raise RuntimeError(f'{type(self).__name__}: no decision for {signature} before compiling: run '
                                   'one eager forward at this size first (pretrain.models.decide_before_compiling)')
        else:
            algorithm = self.decided[signature] = self.decide(x, dtype)
        if algorithm != 'cudnn' and self.falls_back(x):   # decided for the shape; this one call is refused
            algorithm = 'cudnn'
        if algorithm == 'cudnn':
            return super().forward(x)
        from .lk_conv import depthwise_conv
        return depthwise_conv(*autocast_inputs(x, self.weight, self.bias), algorithm)

    @abc.abstractmethod
    def decide(self, x: torch.Tensor, dtype: torch.dtype) -> str:
        """The algorithm for this input signature: 'cudnn', 'direct' or 'toeplitz'."""

    @abc.abstractmethod
    def falls_back(self, x: torch.Tensor) -> bool:
        """Whether this one call goes to ``nn.Conv2d`` although the shape was decided for Triton."""


class TritonDepthwiseConv2d(DecidingDepthwiseConv2d):
    """Depthwise ``k x k`` convolution (stride 1, padding k//2) computed by the Triton kernels."""

    def __init__(self, channels: int, kernel_size: int, bias: bool):
        if kernel_size % 2 == 0:
            raise BadValue(f'the Triton depthwise convolution needs an odd kernel size, got {kernel_size}')
        super().__init__(channels, kernel_size, bias)

    def decide(self, x: torch.Tensor, dtype: torch.dtype) -> str:
        return choose(x, self.kernel_size[0], dtype, TRITON_ALGORITHMS).algorithm

    def falls_back(self, x: torch.Tensor) -> bool:
        return False   # 'triton' never falls back: the op itself raises, naming the limit


class AutoDepthwiseConv2d(DecidingDepthwiseConv2d):
    """The fastest of ``nn.Conv2d`` and the Triton algorithms for this shape on this card."""

    def decide(self, x: torch.Tensor, dtype: torch.dtype) -> str:
        kernel = self.kernel_size[0]
        refused = remembered(('refuses', x.device, dtype, kernel), lambda: triton_refuses(x, kernel, dtype))
        if refused:
            log_fallback_once(str(x.device), tuple(x.shape[1:]), kernel, refused)
            return 'cudnn'
        return choose(x, kernel, dtype, EVERY_CANDIDATE).algorithm

    def falls_back(self, x: torch.Tensor) -> bool:
        if triton_takes(x):
            return False
        if not torch.compiler.is_compiling():
            log_fallback_once(str(x.device), tuple(x.shape[1:]), self.kernel_size[0],
                              f'the Triton kernels refuse a batch of {x.shape[0]} ({x.numel()} elements)')
        return True


@torch.no_grad()
def decide_before_compiling(model: nn.Module, example: torch.Tensor) -> int:
    """One eager forward of ``example`` (in eval mode: BatchNorm statistics untouched) so every
    large-kernel conv decides its algorithm for this input size before ``torch.compile`` traces;
    call it under the autocast the compiled model will run in. Returns the number of such convs."""
    convs = [m for m in model.modules() if isinstance(m, DecidingDepthwiseConv2d)]
    if convs:
        was_training = model.training
        model.eval()
        try:
            model(example)
        finally:
            model.train(was_training)
    return len(convs)


def triton_refuses(x: torch.Tensor, kernel: int, dtype: torch.dtype) -> Optional[str]:
    """Why the Triton kernels cannot run this layer here at all (None: they can; decide by measuring)."""
    from . import lk_conv
    if kernel % 2 == 0:
        return f'the kernels handle odd sizes only, not {kernel}'
    if lk_conv.triton is None:
        return 'triton is not installed'
    if card_identity(x.device) is None or not lk_conv.triton_supported(x.device):
        return f'{x.device.type} is not CUDA'
    if dtype not in lk_conv.SUPPORTED_DTYPES:
        return f'{dtype} is not among the kernel dtypes'
    return None


def triton_takes(x: torch.Tensor) -> bool:
    """Whether the kernels take this call's tensor (they refuse an empty batch and 32-bit overflow)."""
    from . import lk_conv
    return 0 < x.numel() < lk_conv.MAX_ELEMENTS


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


@functools.lru_cache(maxsize=None)
def log_fallback_once(device: str, shape: tuple, kernel: int, why: str) -> None:
    log.info("lk_impl='auto': nn.Conv2d for the %dx%d depthwise convolution of %d channels on %s maps on %s: %s",
             kernel, kernel, shape[0], 'x'.join(map(str, shape[1:])), device, why)


FACTORIES: Dict[str, Callable[[int, int, bool], nn.Module]] = {
    'native': depthwise_conv2d, 'triton': TritonDepthwiseConv2d, 'auto': AutoDepthwiseConv2d}


def lk_conv_factory(lk_impl: Union[str, Callable[[int, int, bool], nn.Module]]) -> Callable[[int, int, bool], nn.Module]:
    """A factory ``(channels, kernel_size, bias) -> module`` from a name (JSON configs) or a callable (code)."""
    if callable(lk_impl):
        return lk_impl
    if lk_impl not in FACTORIES:
        raise BadValue(f'lk_impl {lk_impl!r} is not one of {LK_IMPLS}')
    return FACTORIES[lk_impl]
