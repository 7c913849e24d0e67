"""The large-kernel depthwise convolution as a PyTorch operator backed by Triton kernels.

``depthwise_conv(x, weight, bias)`` is a registered custom op (``replk::depthwise_conv``, with its
gradients as the ops ``replk::depthwise_conv_input_grad`` and ``replk::depthwise_conv_weight_grad``),
so autograd differentiates it and ``torch.compile`` traces around it. Semantics are
``F.conv2d(x, weight, bias, stride=1, padding=k // 2, groups=C)`` for odd ``k``; the output keeps
the input's memory format. It runs on CUDA, and on CPU under Triton's interpreter
(``TRITON_INTERPRET=1``, how the tests run it); anywhere else it raises rather than falling back.
"""
import math
from typing import Optional

import torch

try:
    import triton

    from .lk_conv_kernels import (
        depthwise_fwd_kernel,
        depthwise_toeplitz_fwd_kernel,
        depthwise_toeplitz_wgrad_kernel,
        depthwise_wgrad_kernel,
    )
except ImportError:  # triton is optional; 'native' needs none of this module
    triton = None

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_ELEMENTS = 2 ** 31               # offsets are 32-bit
ALGORITHMS = ('direct', 'toeplitz')   # toeplitz: maps at most TOEPLITZ_MAX_WIDTH columns wide
TOEPLITZ_MAX_WIDTH = 128             # a reduction step holds whole input rows; a band block is pitch^2 taps
# BLOCK_N images share each band tile a program loads (the band is the costly operand).
TOEPLITZ_TILE = dict(BLOCK_N=64, BLOCK_S=64, BLOCK_K=32)
TOEPLITZ_WGRAD_BLOCK_R = 64
TOEPLITZ_MIN_PITCH = 8               # 16 bytes of bf16: a planar row is at least one vector load
# The tiles under the interpreter: several output rows per program, so the tests cover the row
# blocking and its edge masks.
INTERPRETER_FWD_TILE = dict(BLOCK_H=4, BLOCK_W=16, BLOCK_C=32, SPREAD_TAPS=False)
WGRAD_BLOCK_W, WGRAD_BLOCK_C = 4, 32
WGRAD_TARGET_PROGRAMS = 1024   # enough programs to fill 132 SMs several times over
# On a GPU each kernel is autotuned over these tiles at its first call per shape (the key): none
# of them has been timed yet, so the choice is left to the card. Channel stride in the key:
# channels-last and NCHW want different tiles. Forward tiles are (BLOCK_H, BLOCK_W, BLOCK_C, warps,
# SPREAD_TAPS): more rows per program issue fewer instructions per multiply-add; spread taps trade a
# barrier and a shared-memory exchange per tap for more (L1) loads; which wins is the card's to say.
# None spills registers on sm_90 (bench/lk_conv_sass.py; tested). Weight-gradient tiles are
# (BLOCK_W, warps).
TUNE_KEY = ['C', 'H', 'W', 'K', 'sxc']
FWD_TILES = [(1, 16, 64, 4, False), (2, 16, 64, 4, True), (4, 16, 64, 4, False), (4, 16, 64, 4, True),
             (4, 8, 128, 4, True), (8, 16, 64, 8, False), (4, 32, 64, 8, False), (4, 32, 64, 8, True)]
WGRAD_TILES = [(2, 4), (4, 4), (8, 8), (16, 8)]


def forward_tiles() -> list:
    """[(kernel meta-parameters, warps)] of FWD_TILES: what the autotuner tries (and
    bench/lk_conv_sass.py compiles)."""
    return [(dict(BLOCK_H=bh, BLOCK_W=bw, BLOCK_C=bc, SPREAD_TAPS=spread), warps)
            for bh, bw, bc, warps, spread in FWD_TILES]


def weight_grad_tiles() -> list:
    """[(kernel meta-parameters, warps)] of WGRAD_TILES."""
    return [(dict(BLOCK_W=bw), warps) for bw, warps in WGRAD_TILES]


def interpreting() -> bool:
    """Whether the kernels were built for Triton's interpreter (TRITON_INTERPRET=1 when imported)."""
    return triton is not None and type(depthwise_fwd_kernel).__name__ == 'InterpretedFunction'


def autotuned(kernel, tiles: list):
    """The kernel behind Triton's autotuner over ``tiles``, its results kept in Triton's on-disk cache
    (``cache_results``, triton >= 3.2) so a card tunes a shape once, not once per process and rank."""
    import inspect
    cache = {'cache_results': True} if 'cache_results' in inspect.signature(triton.autotune).parameters else {}
    return triton.autotune([triton.Config(meta, num_warps=warps) for meta, warps in tiles], key=TUNE_KEY,
                           **cache)(kernel)


if triton is not None and not interpreting():
    forward_launcher = autotuned(depthwise_fwd_kernel, forward_tiles())
    wgrad_launcher = autotuned(depthwise_wgrad_kernel, weight_grad_tiles())
    FWD_TILE, WGRAD_TILE = {}, {}
elif triton is not None:
    forward_launcher, wgrad_launcher = depthwise_fwd_kernel, depthwise_wgrad_kernel
    FWD_TILE, WGRAD_TILE = INTERPRETER_FWD_TILE, dict(BLOCK_W=WGRAD_BLOCK_W)


def triton_supported(device: torch.device) -> bool:
    """Whether the kernels can run on ``device``: CUDA with Triton, or CPU under the interpreter."""
    if triton is None:
        return False
    return device.type == 'cuda' or (device.type == 'cpu' and interpreting())


def check_inputs(x: torch.Tensor, weight: torch.Tensor) -> None:
    """Clear errors for what the kernels do not do, instead of wrong numbers."""
    if not triton_supported(x.device):
        raise RuntimeError("the Triton depthwise convolution needs a CUDA device (or TRITON_INTERPRET=1 set before it is "
                           f"imported, on CPU), "
                           f"got a tensor on {x.device}{'' if triton is not None else ' and triton is not installed'}")
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[0] != x.shape[1]:
        raise ValueError(f'depthwise convolution needs x [N, C, H, W] and weight [C, 1, k, k]; '
                         f'got x {tuple(x.shape)}, weight {tuple(weight.shape)}')
    k = weight.shape[-1]
    if weight.shape[-2] != k or k % 2 == 0:
        raise ValueError(f'depthwise convolution needs a square, odd kernel; got {tuple(weight.shape[-2:])}')
    if x.numel() >= MAX_ELEMENTS:
        raise ValueError(f'the Triton depthwise convolution indexes with 32 bits; x {tuple(x.shape)} has '
                         f'{x.numel()} elements (split the batch)')
    if x.dtype not in SUPPORTED_DTYPES or weight.dtype != x.dtype:
        raise TypeError(f'depthwise convolution takes x and weight of one dtype among {SUPPORTED_DTYPES}; '
                        f'got x {x.dtype}, weight {weight.dtype}')


def kernel_taps_last(weight: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """[C, 1, k, k] -> contiguous fp32 [k, k, C]: channels innermost for coalesced loads, and
    converted once here instead of once per multiply-add in the kernels (exact from bf16/fp16)."""
    w = weight[:, 0]
    if flip:
        w = w.flip(-1, -2)
    return w.permute(1, 2, 0).to(torch.float32).contiguous()


def empty_output(like: torch.Tensor) -> torch.Tensor:
    """The output buffer (same memory format as ``like``); the tests poison it to prove every element is written."""
    return torch.empty_like(like)


def empty_partials(shape, device) -> torch.Tensor:
    """The weight gradient's per-slice fp32 partial sums; the tests poison it too."""
    return torch.empty(shape, device=device, dtype=torch.float32)


def toeplitz_fits(height: int, width: int) -> bool:
    """Whether the Toeplitz kernels take a map of this size."""
    return width <= TOEPLITZ_MAX_WIDTH


def check_algorithm(algorithm: str, x: torch.Tensor) -> None:
    if algorithm not in ALGORITHMS:
        raise ValueError(f'algorithm {algorithm!r} is not one of {ALGORITHMS}')
    if algorithm == 'toeplitz' and not toeplitz_fits(*x.shape[-2:]):
        raise ValueError(f"algorithm 'toeplitz' is for maps at most {TOEPLITZ_MAX_WIDTH} columns wide; "
                         f'got {tuple(x.shape[-2:])}')


def toeplitz_pitch(width: int) -> int:
    """The row width of the Toeplitz kernels' planar maps: a power of two, at least one vector."""
    return max(TOEPLITZ_MIN_PITCH, triton.next_power_of_2(width))


def toeplitz_warps(width: int) -> int:
    """Warps of a Toeplitz program: 8 for rows of 128, whose [128, 128] tiles would spill registers
    over 4 warps in fp32 (bench/lk_conv_sass.py), 4 otherwise."""
    return 8 if toeplitz_pitch(width) >= 128 else 4


def toeplitz_tile(width: int) -> dict:
    """The Toeplitz kernel's tile for a map ``width`` wide: output blocks and reduction steps of
    whole planar rows."""
    pitch = toeplitz_pitch(width)
    return dict(TOEPLITZ_TILE, WPAD=pitch, BLOCK_S=max(TOEPLITZ_TILE['BLOCK_S'], pitch),
                BLOCK_K=max(TOEPLITZ_TILE['BLOCK_K'], pitch))


def toeplitz_wgrad_tile(width: int) -> dict:
    """The Toeplitz weight gradient's tile: planar rows of ``toeplitz_pitch``, products of at least
    16 columns (the smallest tensor-core product), rows of the batch x height in blocks of BLOCK_R."""
    pitch = toeplitz_pitch(width)
    return dict(WPAD=pitch, COLS=max(16, pitch), BLOCK_R=TOEPLITZ_WGRAD_BLOCK_R)


def to_planar(x: torch.Tensor, pitch: int) -> torch.Tensor:
    """[N, C, H, W] in any memory format -> [N, C, H, pitch], zeros past column W, each channel's
    plane starting at a multiple of 16 elements (Triton's launcher then knows the channel stride's
    alignment and loads whole vectors): each channel's rows whole and aligned, what the Toeplitz
    kernels load. One copy of a small map, made once per call."""
    n, c, h, w = x.shape
    if w == pitch and x.is_contiguous() and (h * w) % 16 == 0:
        return x
    plane = triton.cdiv(h * pitch, 16) * 16
    planar = empty_planes(x, plane)[..., :h * pitch].view(n, c, h, pitch)
    planar[..., :w] = x
    planar[..., w:] = 0
    return planar


def empty_planes(like: torch.Tensor, plane: int) -> torch.Tensor:
    """[N, C, plane] storage of planar maps; the tests poison it (what lies past the map's rows must
    never be read)."""
    return like.new_empty((*like.shape[:2], plane))


def toeplitz_band(weight: torch.Tensor, width: int, pitch: int, flip: bool = False) -> torch.Tensor:
    """[C, 1, k, k] -> contiguous [C, k, pitch, pitch] in the weight's dtype: for each kernel row kh,
    the Toeplitz block band[c, kh, w_in, w_out] = weight[c, kh, w_in - w_out + k // 2] inside the
    kernel and the map's ``width``, else 0. Built once per call (k x pitch^2 taps a channel) so the
    kernel's band tiles are contiguous loads, not a gather per element."""
    taps = weight[:, 0].flip(-1, -2) if flip else weight[:, 0]
    k = taps.shape[-1]
    cols = torch.arange(pitch, device=weight.device)
    kw = cols[:, None] - cols[None, :] + k // 2                     # [w_in, w_out]
    inside = (kw >= 0) & (kw < k) & (cols[:, None] < width) & (cols[None, :] < width)
    band = taps[:, :, kw.clamp(0, k - 1)]                            # [C, k, pitch, pitch], a new tensor
    return band.masked_fill_(~inside, 0).contiguous()


def check_toeplitz_offsets(x: torch.Tensor, k: int, pitch: int) -> None:
    """The planar copy and the band are indexed with 32 bits too: both must stay under 2**31 elements."""
    n, c, h, _ = x.shape
    planar, band = n * c * triton.cdiv(h * pitch, 16) * 16, c * k * pitch * pitch
    if max(planar, band) >= MAX_ELEMENTS:
        raise ValueError(f"algorithm 'toeplitz' on x {tuple(x.shape)}: its planar copy ({planar} elements) or band "
                         f'({band}) reaches 2**31, past 32-bit offsets; split the batch or use the direct algorithm')


def run_toeplitz_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         flip: bool) -> torch.Tensor:
    n, c, h, w = x.shape
    k = weight.shape[-1]
    tile = toeplitz_tile(w)
    pitch = tile['WPAD']
    check_toeplitz_offsets(x, k, pitch)
    xp, band, y = to_planar(x, pitch), toeplitz_band(weight, w, pitch, flip), empty_output(x)
    grid = (c, triton.cdiv(n, tile['BLOCK_N']), triton.cdiv(h * pitch, tile['BLOCK_S']))
    depthwise_toeplitz_fwd_kernel[grid](
        xp, band, bias if bias is not None else band, y, n, h, w, xp.stride(0), xp.stride(1), y.stride(0),
        y.stride(1), y.stride(2), y.stride(3), K=k, HAS_BIAS=bias is not None, UPCAST=interpreting(),
        IEEE=x.dtype == torch.float32, num_warps=toeplitz_warps(w), **tile)
    return y


def run_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                algorithm: str = 'direct', flip: bool = False) -> torch.Tensor:
    if algorithm == 'toeplitz':
        return run_toeplitz_forward(x, weight, bias, flip)
    n, c, h, w = x.shape
    taps = kernel_taps_last(weight, flip)
    y = empty_output(x)

    def grid(meta):
        return n * triton.cdiv(h, meta['BLOCK_H']), triton.cdiv(w, meta['BLOCK_W']), triton.cdiv(c, meta['BLOCK_C'])
    forward_launcher[grid](x, taps, bias if bias is not None else taps, y, c, h, w,
                           *x.stride(), *y.stride(), K=weight.shape[-1], HAS_BIAS=bias is not None, **FWD_TILE)
    return y


@torch.library.custom_op('replk::depthwise_conv', mutates_args=())
def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   algorithm: str = 'direct') -> torch.Tensor:
    check_inputs(x, weight)
    check_algorithm(algorithm, x)
    return run_forward(x, weight, None if bias is None else bias.contiguous(), algorithm)


@torch.library.custom_op('replk::depthwise_conv_input_grad', mutates_args=())
def depthwise_conv_input_grad(grad_out: torch.Tensor, weight: torch.Tensor, algorithm: str = 'direct') -> torch.Tensor:
    """Stride 1 and padding k//2: the transposed convolution is the convolution with the kernel flipped."""
    check_inputs(grad_out, weight)
    check_algorithm(algorithm, grad_out)
    return run_forward(grad_out, weight, None, algorithm, flip=True)


def weight_grad_split(n: int, c: int, k: int):
    """(channel blocks, batch slices, images per slice) of the weight gradient's grid: enough
    programs to fill the card, each slice's partial sums added afterwards."""
    c_blocks = math.ceil(c / WGRAD_BLOCK_C)
    slices = max(1, min(n, math.ceil(WGRAD_TARGET_PROGRAMS / (c_blocks * k))))
    images = math.ceil(n / slices)
    return c_blocks, math.ceil(n / images), images


@torch.library.custom_op('replk::depthwise_conv_weight_grad', mutates_args=())
def depthwise_conv_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel_size: int,
                               algorithm: str = 'direct') -> torch.Tensor:
    """d loss / d weight as [C, 1, k, k] in x's dtype, summed in fp32."""
    n, c, h, w = x.shape
    k = kernel_size
    check_inputs(x, x.new_empty(c, 1, k, k))
    check_algorithm(algorithm, x)
    if algorithm == 'toeplitz':
        part = empty_partials((1, k, k, c), x.device)
        tile = toeplitz_wgrad_tile(w)
        check_toeplitz_offsets(x, k, tile['WPAD'])
        xp, dyp = to_planar(x, tile['WPAD']), to_planar(grad_out, tile['WPAD'])
        depthwise_toeplitz_wgrad_kernel[(c, k)](
            xp, dyp, part, n, c, h, xp.stride(0), xp.stride(1), dyp.stride(0), dyp.stride(1), K=k,
            UPCAST=interpreting(), IEEE=x.dtype == torch.float32, num_warps=toeplitz_warps(w), **tile)
    else:
        c_blocks, slices, images = weight_grad_split(n, c, k)
        part = empty_partials((slices, k, k, c), x.device)
        wgrad_launcher[(c_blocks, k, slices)](
            x, grad_out, part, n, c, h, w, images, *x.stride(), *grad_out.stride(),
            K=k, KPAD=triton.next_power_of_2(k), BLOCK_C=WGRAD_BLOCK_C, **WGRAD_TILE)
    return part.sum(0).permute(2, 0, 1).unsqueeze(1).to(x.dtype).contiguous()


@depthwise_conv.register_fake
def _(x, weight, bias, algorithm='direct'):
    return torch.empty_like(x)


@depthwise_conv_input_grad.register_fake
def _(grad_out, weight, algorithm='direct'):
    return torch.empty_like(grad_out)


@depthwise_conv_weight_grad.register_fake
def _(x, grad_out, kernel_size, algorithm='direct'):
    return x.new_empty(x.shape[1], 1, kernel_size, kernel_size).contiguous()


def _setup_context(ctx, inputs, output):
    x, weight, bias, algorithm = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias, ctx.algorithm = bias is not None, algorithm


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = depthwise_conv_input_grad(grad_out, weight, ctx.algorithm)
    if ctx.needs_input_grad[1]:
        grad_w = depthwise_conv_weight_grad(x, grad_out, weight.shape[-1], ctx.algorithm)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_b = grad_out.sum((0, 2, 3), dtype=torch.float32).to(grad_out.dtype)
    return grad_x, grad_w, grad_b, None


depthwise_conv.register_autograd(_backward, setup_context=_setup_context)


# The three passes by name, as bench/lk_conv.py times them.
def depthwise_forward(x, weight, bias=None, algorithm='direct'):
    return depthwise_conv(x, weight, bias, algorithm)


def depthwise_input_grad(grad_out, weight, algorithm='direct'):
    return depthwise_conv_input_grad(grad_out, weight, algorithm)


def depthwise_weight_grad(x, grad_out, kernel_size, algorithm='direct'):
    return depthwise_conv_weight_grad(x, grad_out, kernel_size, algorithm)
