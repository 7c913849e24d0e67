"""GPU tier: every autotune tile of every direct kernel, launched on CUDA as the tile it is (not as the
autotuner's pick), against a float64 reference; the interpreter runs only a few tiles on CPU."""
import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.models import lk_conv

pytestmark = pytest.mark.gpu
# Maps no tile divides; a channel count across blocks; XL's kernel sizes.
SHAPES = [(3, 70, 19, 17, 13), (2, 40, 9, 30, 27)]


def run_pinned(monkeypatch, shape, dtype, fwd=None, wgrad=None):
    """Forward, input and weight gradient with the given tiles pinned, as float64-relative errors."""
    if fwd is not None:
        meta, warps = fwd
        monkeypatch.setattr(lk_conv, 'forward_launcher', lk_conv.depthwise_fwd_kernel)
        monkeypatch.setattr(lk_conv, 'FWD_TILE', dict(meta, num_warps=warps))
    if wgrad is not None:
        meta, warps = wgrad
        monkeypatch.setattr(lk_conv, 'wgrad_launcher', lk_conv.depthwise_wgrad_kernel)
        monkeypatch.setattr(lk_conv, 'WGRAD_TILE', dict(meta, num_warps=warps))
    monkeypatch.setattr(lk_conv, 'empty_output', lambda like: torch.full_like(like, math.nan))
    monkeypatch.setattr(lk_conv, 'empty_partials',
                        lambda size, device: torch.full(size, math.nan, device=device, dtype=torch.float32))
    n, c, h, w, k = shape
    gen = torch.Generator().manual_seed(n + c + k)
    x = torch.randn(n, c, h, w, generator=gen).cuda().to(dtype).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(c, 1, k, k, generator=gen) / k).cuda().to(dtype)
    dy = torch.randn(n, c, h, w, generator=gen).cuda().to(dtype)
    leaves = [t.clone().requires_grad_() for t in (x, weight)]
    out = lk_conv.depthwise_conv(*leaves, None, 'direct')
    out.backward(dy)
    ref_leaves = [t.double().requires_grad_() for t in (x, weight)]
    ref = F.conv2d(*ref_leaves, padding=k // 2, groups=c)
    ref.backward(dy.double())
    errors = {}
    for name, ours, theirs in (('fwd', out, ref), ('dgrad', leaves[0].grad, ref_leaves[0].grad),
                               ('wgrad', leaves[1].grad, ref_leaves[1].grad)):
        assert torch.isfinite(ours).all(), f'{name}: an element was left unwritten'
        errors[name] = ((ours.double() - theirs).abs().max() / theirs.abs().max()).item()
    return errors


BOUND = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def tile_id(tile) -> str:
    meta, warps = tile
    return '-'.join(f'{k.split("_")[-1]}{int(v)}' for k, v in meta.items()) + f'-w{warps}'


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('tile', lk_conv.forward_tiles(), ids=tile_id)
def test_every_forward_tile_on_cuda_gives_the_float64_convolution(monkeypatch, tile, dtype):
    for shape in SHAPES:
        errors = run_pinned(monkeypatch, shape, dtype, fwd=tile)
        assert errors['fwd'] < BOUND[dtype] and errors['dgrad'] < BOUND[dtype], (shape, errors)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('tile', lk_conv.weight_grad_tiles(), ids=tile_id)
def test_every_weight_grad_tile_on_cuda_gives_the_float64_gradient(monkeypatch, tile, dtype):
    for shape in SHAPES:
        errors = run_pinned(monkeypatch, shape, dtype, wgrad=tile)
        assert errors['wgrad'] < BOUND[dtype], (shape, errors)
