"""torch.compile over RepLKNet: with every lk_impl the model compiles with fullgraph=True (zero graph
breaks: large-kernel decisions are made by one eager forward before tracing, not inside the graph)
under inductor, and its outputs and every gradient equal eager's."""
import pytest
import torch

from pretrain.models import RepLKNet, decide_before_compiling

TINY = dict(kernel_sizes=(7, 5), depths=(1, 1), channels=(8, 16), small_kernel=3, num_classes=4)

pytestmark = pytest.mark.slow   # inductor compiles C++ on this CPU: ~10-20 s per model


def outputs_and_grads(forward, model, x):
    model.zero_grad()
    out = forward(x)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize('impl', ['native', 'triton', 'auto'])
def test_a_replknet_compiles_whole_under_inductor_and_matches_eager(impl, randomize_bn):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = randomize_bn(RepLKNet(lk_impl=impl, **TINY))
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    deciding = decide_before_compiling(model, x)
    assert deciding == (0 if impl == 'native' else 2)
    eager_out, eager_grads = outputs_and_grads(model, model, x)
    compiled = torch.compile(model, backend='inductor', fullgraph=True)   # a graph break would raise here
    out, grads = outputs_and_grads(compiled, model, x)   # the same parameters
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-5)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_compiling_before_deciding_says_what_to_do(randomize_bn):
    torch._dynamo.reset()
    model = RepLKNet(lk_impl='auto', **TINY)
    with pytest.raises(Exception, match=r'no decision for .* before compiling: run one eager forward'):
        torch.compile(model, backend='eager', fullgraph=True)(torch.randn(1, 3, 16, 16))
