"""The Triton large-kernel depthwise convolution (pretrain/models/lk_conv.py) against F.conv2d in
float64: forward, input gradient, weight gradient and bias gradient, every output element written.

Without a GPU the kernels run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
so the shapes stay tiny; with one, the same tests run the compiled kernels on CUDA."""
import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.models import lk_conv

# slow: the interpreter takes seconds a case; `make lower-bounds` skips them (torch and triton are
# the same pin there; only pure-Python dependencies change).
pytestmark = pytest.mark.slow
DEVICE = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
MAX_REL_ERROR = {torch.float32: 1e-5, torch.bfloat16: 1e-2}

# (batch, channels, height, width, kernel, channels_last, dtype): odd and even map sizes, kernels
# 3/13/27 (27 on maps mostly made of padding), channel counts below, at and across the block of 32.
CASES = [
    (2, 5, 7, 6, 3, False, torch.float32, 'direct'),
    (1, 37, 6, 5, 13, True, torch.float32, 'direct'),
    (1, 12, 5, 6, 27, False, torch.float32, 'direct'),
    (1, 33, 5, 6, 5, True, torch.bfloat16, 'direct'),
    (1, 32, 4, 4, 27, True, torch.bfloat16, 'direct'),
    # the banded-matrix (tensor-core) algorithm for small maps: batch and pixels across its tiles
    (3, 6, 9, 8, 13, True, torch.float32, 'toeplitz'),
    (2, 5, 7, 5, 27, False, torch.float32, 'toeplitz'),
    (65, 2, 4, 4, 3, True, torch.bfloat16, 'toeplitz'),
    # a contiguous map already a planar row wide: the kernels read it in place, no copy
    (2, 3, 5, 8, 7, False, torch.float32, 'toeplitz'),
    (2, 4, 5, 6, 27, False, torch.bfloat16, 'toeplitz'),
    # output-pixel blocks of a few rows, each reading only the input rows within the kernel's reach;
    # a map wider than one reduction step's default
    (1, 2, 16, 16, 5, True, torch.float32, 'toeplitz'),
    (1, 2, 6, 40, 7, False, torch.bfloat16, 'toeplitz'),
    # more pixels than a 32x32 map, 64 columns wide; 80 wide (rows of 128: fine-tuning's stage 1 at 320)
    (1, 2, 20, 64, 5, True, torch.bfloat16, 'toeplitz'),
    (1, 2, 3, 80, 7, False, torch.float32, 'toeplitz'),
]


@pytest.fixture
def poisoned_buffers(monkeypatch):
    """Fill every buffer the kernels write with NaN first: an element left unwritten shows up."""
    monkeypatch.setattr(lk_conv, 'empty_output', lambda like: torch.full_like(like, math.nan))
    monkeypatch.setattr(lk_conv, 'empty_partials',
                        lambda shape, device: torch.full(shape, math.nan, device=device, dtype=torch.float32))
    monkeypatch.setattr(lk_conv, 'empty_planes',
                        lambda like, plane: torch.full((*like.shape[:2], plane), math.nan, dtype=like.dtype,
                                                       device=like.device))


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(ours).all(), 'an element was left unwritten (NaN from the poisoned buffer)'
    return ((ours.double() - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize('n,c,h,w,k,channels_last,dtype,algorithm', CASES)
def test_forward_and_gradients_match_float64_conv(poisoned_buffers, n, c, h, w, k, channels_last, dtype, algorithm):
    gen = torch.Generator().manual_seed(n * 1000 + c * 10 + k)
    x = torch.randn(n, c, h, w, generator=gen).to(DEVICE, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(c, 1, k, k, generator=gen) / k).to(DEVICE, dtype)
    bias = torch.randn(c, generator=gen).to(DEVICE, dtype)
    grad_out = torch.randn(n, c, h, w, generator=gen).to(DEVICE, dtype)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    out = lk_conv.depthwise_conv(*leaves, algorithm)
    out.backward(grad_out)
    ref_leaves = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    ref = F.conv2d(*ref_leaves, stride=1, padding=k // 2, groups=c)
    ref.backward(grad_out.double())

    assert out.dtype == dtype and out.shape == x.shape
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    bound = MAX_REL_ERROR[dtype]
    assert relative_error(out, ref) < bound
    for name, ours, theirs in zip(('input', 'weight', 'bias'), leaves, ref_leaves):
        assert ours.grad.dtype == dtype, name
        assert relative_error(ours.grad, theirs.grad) < bound, name


@pytest.mark.skipif(not lk_conv.interpreting(), reason='on a GPU the autotuner picks the tile')
@pytest.mark.parametrize('forward_tile,wgrad_block_w', [
    # one output row a program: the plain direct kernel
    (dict(BLOCK_H=1, BLOCK_W=8, BLOCK_C=32, SPREAD_TAPS=False), 2),
    # row blocks and channel blocks cut the map unevenly; every thread loads its own taps
    (dict(BLOCK_H=2, BLOCK_W=4, BLOCK_C=8, SPREAD_TAPS=True), 16),
    # a row block taller than the map
    (dict(BLOCK_H=8, BLOCK_W=16, BLOCK_C=16, SPREAD_TAPS=False), 8),
])
def test_every_tile_shape_gives_the_float64_convolution(poisoned_buffers, monkeypatch, forward_tile, wgrad_block_w):
    # The GPU autotuner may pick any of several tiles; under the interpreter the tile is fixed, so
    # tiles of each kind are checked here on a map that none of them divides.
    monkeypatch.setattr(lk_conv, 'FWD_TILE', forward_tile)
    monkeypatch.setattr(lk_conv, 'WGRAD_TILE', dict(BLOCK_W=wgrad_block_w))
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, 9, 7, 9, generator=gen).contiguous(memory_format=torch.channels_last)
    weight, grad_out = torch.randn(9, 1, 5, 5, generator=gen), torch.randn(1, 9, 7, 9, generator=gen)
    leaves = [t.clone().requires_grad_() for t in (x, weight)]
    out = lk_conv.depthwise_conv(*leaves, None)
    out.backward(grad_out)
    ref_leaves = [t.double().requires_grad_() for t in (x, weight)]
    ref = F.conv2d(*ref_leaves, padding=2, groups=9)
    ref.backward(grad_out.double())
    assert relative_error(out, ref) < 1e-5
    for name, ours, theirs in zip(('input', 'weight'), leaves, ref_leaves):
        assert relative_error(ours.grad, theirs.grad) < 1e-5, name


def test_a_planar_copy_without_its_zero_columns_is_caught(poisoned_buffers, monkeypatch):
    # Planted bug: the Toeplitz kernels multiply the planar rows' padding columns (their band taps
    # are zero), so they rely on those columns being zeros, not on a mask; a copy that leaves them
    # as they were allocated (NaN here) must fail the comparison above, not pass unnoticed.
    def without_zero_columns(x, pitch):
        n, c, h, w = x.shape
        planar = lk_conv.empty_planes(x, triton_cdiv(h * pitch, 16) * 16)[..., :h * pitch].view(n, c, h, pitch)
        planar[..., :w] = x
        return planar
    monkeypatch.setattr(lk_conv, 'to_planar', without_zero_columns)
    with pytest.raises(AssertionError, match='left unwritten'):
        test_forward_and_gradients_match_float64_conv(None, 2, 3, 5, 6, 5, True, torch.float32, 'toeplitz')


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


@pytest.mark.parametrize('algorithm', lk_conv.ALGORITHMS)
def test_input_gradient_is_the_transposed_convolution_on_an_asymmetric_kernel(poisoned_buffers, algorithm):
    # A kernel without symmetry: flipping it the wrong way (or not at all) cannot pass.
    x = torch.randn(1, 3, 5, 5, device=DEVICE)
    weight = torch.arange(3 * 49, dtype=torch.float32, device=DEVICE).reshape(3, 1, 7, 7) / 100
    grad_out = torch.randn(1, 3, 5, 5, device=DEVICE)
    expected = torch.nn.grad.conv2d_input(x.shape, weight.double(), grad_out.double(), padding=3, groups=3)
    assert relative_error(lk_conv.depthwise_conv_input_grad(grad_out, weight, algorithm), expected) < 1e-5


def test_unsupported_inputs_are_refused_with_the_reason():
    x = torch.randn(1, 4, 5, 5, device=DEVICE)
    with pytest.raises(ValueError, match='square, odd kernel'):
        lk_conv.depthwise_conv(x, torch.randn(4, 1, 4, 4, device=DEVICE), None)
    with pytest.raises(TypeError, match='one dtype'):
        lk_conv.depthwise_conv(x, torch.randn(4, 1, 3, 3, device=DEVICE, dtype=torch.bfloat16), None)
    with pytest.raises(ValueError, match=r'weight \[C, 1, k, k\]'):
        lk_conv.depthwise_conv(x, torch.randn(3, 1, 3, 3, device=DEVICE), None)
    with pytest.raises(ValueError, match="algorithm 'fft' is not one of"):
        lk_conv.depthwise_conv(x, torch.randn(4, 1, 3, 3, device=DEVICE), None, 'fft')
    with pytest.raises(ValueError, match="'toeplitz' is for maps at most 128 columns wide; got \\(2, 129\\)"):
        lk_conv.depthwise_conv(torch.randn(1, 1, 2, 129, device=DEVICE), torch.randn(1, 1, 3, 3, device=DEVICE),
                               None, 'toeplitz')


def test_torch_compile_traces_around_the_op_with_its_gradients():
    x = torch.randn(1, 6, 5, 4, device=DEVICE, requires_grad=True)
    weight = torch.randn(6, 1, 5, 5, device=DEVICE, requires_grad=True)

    def f(x, weight):
        return (lk_conv.depthwise_conv(x.sin(), weight, None) ** 2).sum()

    compiled = torch.compile(f, backend='aot_eager', fullgraph=True)
    grads = torch.autograd.grad(compiled(x, weight), (x, weight))
    expected = torch.autograd.grad(f(x, weight), (x, weight))
    for ours, ref in zip(grads, expected):
        torch.testing.assert_close(ours, ref)
