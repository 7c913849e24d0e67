"""Appendix F's model: MobileNet V2 with 13x13 depthwise kernels and a parallel 3x3 conv-BN branch
(Guideline 3), merged into the large kernels exactly (stride-2 layers included), and the
kernel-map analysis on both variants at the paper's representative layer."""
import json

import numpy as np
import timm
import torch
from timm.utils import reparameterize_model

import pretrain.models  # noqa: F401  (registers mobilenetv2_lk)
from pretrain.analysis.kernels import main as kernels
from pretrain.models import ReparamLargeKernelConv


def test_the_small_kernel_branches_merge_into_the_large_kernels_exactly(randomize_bn):
    torch.manual_seed(0)
    model = randomize_bn(timm.create_model('mobilenetv2_lk', kernel_size=13, small_kernel=3)).eval()
    branches = [m for m in model.modules() if isinstance(m, ReparamLargeKernelConv)]
    assert len(branches) == 17 and {m.stride for m in branches} == {1, 2}   # every depthwise conv, both strides
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        reparameterize_model(model, inplace=True)
        after = model(x)
    assert all(m.small_conv is None and m.lkb_reparam is not None for m in branches)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_the_kernel_maps_of_both_variants_at_the_first_stride_1_layer_at_7x7(tmp_path):
    plain = kernels(['--model', 'mobilenetv2_lk', '--model-kwargs', json.dumps({'kernel_size': 13}),
                     '--out', str(tmp_path / 'plain')])
    reparam = kernels(['--model', 'mobilenetv2_lk', '--model-kwargs', json.dumps({'kernel_size': 13, 'small_kernel': 3}),
                       '--out', str(tmp_path / 'reparam')])
    assert plain['layer'] == 'blocks.5.1.conv_dw' and plain['maps'] == ['large kernel (BN fused)']
    assert reparam['layer'] == 'blocks.5.1.conv_dw' and len(reparam['maps']) == 2
    large = np.load(next((tmp_path / 'reparam').glob('*_large.npy')))
    merged = np.load(next((tmp_path / 'reparam').glob('*_merged.npy')))
    assert large.shape == merged.shape == (13, 13)
    outside = np.ones((13, 13), bool)
    outside[5:8, 5:8] = False   # the 3x3 adds onto the centre only: outside it the maps differ by their scale alone
    ratio = merged[outside] / large[outside]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)
    assert not np.allclose(merged[5:8, 5:8], large[5:8, 5:8] * ratio[0])
