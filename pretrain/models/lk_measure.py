"""Timing the large-kernel depthwise convolution's implementations on one layer shape.

A *candidate* is ``'cudnn'`` (``F.conv2d`` and ``aten.convolution_backward``: cuDNN on a GPU,
under whatever ``torch.backends.cudnn.benchmark`` says) or one of the Triton algorithms of
:mod:`pretrain.models.lk_conv` (``'direct'``, ``'toeplitz'``). Each is timed on its three passes —
forward, input gradient, weight gradient — because a training step runs all three and the
fastest forward is not always the fastest of the three together. Used by ``lk_impl='auto'``
(:mod:`pretrain.models.lk_choice`) at a shape's first call, and by ``bench/lk_conv.py``.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict

import torch
import torch.nn.functional as F

CANDIDATES = ('cudnn', 'direct', 'toeplitz')
TRITON_ALGORITHMS = ('direct', 'toeplitz')
PASSES = ('fwd', 'dgrad', 'wgrad')


@dataclass(frozen=True)
class LayerShape:
    """What a decision depends on, batch excepted (a training run keeps it fixed, and an evaluation's
    last, smaller batch must not start a new measurement on one rank only)."""
    dtype: str            # 'bfloat16', 'float16', 'float32'
    channels_last: bool
    channels: int
    kernel: int
    height: int
    width: int

    @classmethod
    def of(cls, x: torch.Tensor, kernel: int, dtype: torch.dtype) -> 'LayerShape':
        cl = x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last)
        return cls(str(dtype).replace('torch.', ''), bool(cl), x.shape[1], kernel, x.shape[-2], x.shape[-1])

    def key(self) -> str:
        return (f'{self.dtype},{"channels_last" if self.channels_last else "nchw"},'
                f'{self.channels},{self.kernel},{self.height},{self.width}')

    def describe(self) -> str:
        return (f'{self.kernel}x{self.kernel} depthwise convolution of {self.channels} channels on '
                f'{self.height}x{self.width} maps ({self.dtype}, {"channels-last" if self.channels_last else "NCHW"})')


def candidates_for(shape: LayerShape) -> tuple:
    """The candidates that can run this shape (the Toeplitz kernels take small maps only)."""
    from . import lk_conv
    return ('cudnn', 'direct') + (('toeplitz',) if lk_conv.toeplitz_fits(shape.height, shape.width) else ())


def layer_tensors(shape: LayerShape, batch: int, device: torch.device, seed: int = 0):
    """Random input, kernel and output gradient of the shape, in its dtype and memory format."""
    dtype = getattr(torch, shape.dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    size = (batch, shape.channels, shape.height, shape.width)
    x = torch.randn(size, device=device, dtype=dtype, generator=gen)
    dy = torch.randn(size, device=device, dtype=dtype, generator=gen)
    if shape.channels_last:
        x, dy = (t.contiguous(memory_format=torch.channels_last) for t in (x, dy))
    w = torch.randn(shape.channels, 1, shape.kernel, shape.kernel, device=device, dtype=dtype,
                    generator=gen) / shape.kernel
    return x, w, dy


def passes(candidate: str, x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor) -> Dict[str, Callable]:
    """The three passes of one candidate as zero-argument callables returning a tensor."""
    k, c = w.shape[-1], w.shape[0]
    if candidate == 'cudnn':
        def backward(mask, pick):
            return lambda: torch.ops.aten.convolution_backward(
                dy, x, w, None, [1, 1], [k // 2, k // 2], [1, 1], False, [0, 0], c, mask)[pick]
        return dict(fwd=lambda: F.conv2d(x, w, None, 1, k // 2, 1, c),
                    dgrad=backward([True, False, False], 0), wgrad=backward([False, True, False], 1))
    from . import lk_conv
    return dict(fwd=lambda: lk_conv.depthwise_conv(x, w, None, candidate),
                dgrad=lambda: lk_conv.depthwise_conv_input_grad(dy, w, candidate),
                wgrad=lambda: lk_conv.depthwise_conv_weight_grad(x, dy, k, candidate))


def median_ms(fn: Callable, device: torch.device, reps: int, warmup: int = 2) -> float:
    """Median milliseconds of ``fn`` over ``reps`` runs after ``warmup`` (the first pays Triton's
    autotuning and cuDNN's benchmarking); CUDA events on a GPU, the wall clock elsewhere."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type != 'cuda':
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize(device)
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def time_passes(candidate: str, x, w, dy, reps: int = 5, warmup: int = 2) -> Dict[str, float]:
    """{'fwd', 'dgrad', 'wgrad', 'total'} in ms for one candidate on these tensors."""
    out = {p: round(median_ms(fn, x.device, reps, warmup), 4) for p, fn in passes(candidate, x, w, dy).items()}
    out['total'] = round(sum(out[p] for p in PASSES), 4)
    return out


def autotuned_tiles() -> Dict[str, str]:
    """The tiles the GPU autotuner picked at the last launch of each direct kernel (empty when
    interpreted or never launched)."""
    from . import lk_conv
    picked = {name: getattr(launcher, 'best_config', None)
              for name, launcher in (('forward', getattr(lk_conv, 'forward_launcher', None)),
                                     ('weight_grad', getattr(lk_conv, 'wgrad_launcher', None)))}
    return {name: str(config) for name, config in picked.items() if config is not None}
