"""GPU tier: the model on CUDA in the training precision and memory format."""
import copy

import pytest
import torch

from pretrain.models import RepLKNet

pytestmark = pytest.mark.gpu
TINY = dict(kernel_sizes=(13, 7), depths=(1, 2), channels=(32, 64), small_kernel=5)


def test_bf16_channels_last_forward_backward_on_cuda():
    model = RepLKNet(num_classes={'a': 10, 'b': 3}, **TINY).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 64, 64, device='cuda').to(memory_format=torch.channels_last)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        out = model(x)
    loss = sum(v.float().logsumexp(1).mean() for v in out.values())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_reparam_keeps_outputs_on_cuda(randomize_bn):
    # float64: cuDNN runs fp32 convolutions in TF32 on Ampere and later, whose rounding (2.3e-4
    # relative on an H100) would hide a real re-parameterization error of that size.
    model = randomize_bn(RepLKNet(num_classes=10, **TINY)).cuda().double().eval()
    x = torch.randn(2, 3, 64, 64, device='cuda', dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        out = copy.deepcopy(model).reparameterize()(x)
    assert ((ref - out).abs().max() / ref.abs().max()).item() < 1e-10
