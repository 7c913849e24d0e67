"""lk_impl: the large-kernel convolution chosen by name from a config ('native' | 'triton' | 'auto'),
the model unchanged whichever runs (state dict, outputs, gradients, re-parameterization)."""
import copy
import json
import logging

import pytest
import torch
from helpers import REPO_ROOT

from pretrain.config import load_config
from pretrain.engine import build_model
from pretrain.models import RepLKNet, lk_choice, lk_conv, lk_impl
from pretrain.models.lk_measure import LayerShape

EVERY = lk_choice.EVERY_CANDIDATE
TINY = dict(kernel_sizes=(7, 5), depths=(1, 1), channels=(8, 16), small_kernel=3, num_classes=4)


@pytest.mark.slow  # interpreted kernels; lower-bounds keeps the same torch/triton
@pytest.mark.parametrize('seed', [0, 2, 5, 12])
def test_tiny_replknet_with_triton_gives_the_native_outputs_and_gradients(randomize_bn, seed):
    torch.manual_seed(seed)   # not the global state other tests leave behind
    native = randomize_bn(RepLKNet(lk_impl='native', **TINY))
    triton = RepLKNet(lk_impl='triton', **TINY)
    triton.load_state_dict(native.state_dict())  # same keys: nn.Conv2d's weight [C, 1, k, k]
    assert sum(isinstance(m, lk_impl.TritonDepthwiseConv2d) for m in triton.modules()) == 2
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    outs = []
    for model in (native, triton):
        model.zero_grad()
        out = model(x)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        outs.append(out)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(native.named_parameters(), triton.parameters()):
        # A weight's gradient sums hundreds of products, in another order on each path: the float32
        # rounding scales with the gradient's size (the stem's reach ~50 at some seeds).
        scale = max(1.0, p.grad.abs().max().item())
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


@pytest.mark.slow  # interpreted kernels; lower-bounds keeps the same torch/triton
def test_reparameterized_triton_model_keeps_the_kernel_and_the_outputs(randomize_bn):
    model = randomize_bn(RepLKNet(lk_impl='triton', **TINY)).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
        merged = copy.deepcopy(model).reparameterize()
        out = merged(x)
    assert all(isinstance(m.lkb_reparam, lk_impl.TritonDepthwiseConv2d)
               for m in merged.modules() if hasattr(m, 'lkb_reparam'))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_lk_impl_comes_from_the_config_and_a_typo_is_an_error_naming_the_choices():
    overrides = ['model.kwargs={"lk_impl": "triton", "depths": [1, 1], "channels": [8, 16], "kernel_sizes": [7, 5]}']
    cfg = load_config('configs/xl_megadata.json', overrides)
    model = build_model(cfg.model, {'in1k': 3})
    assert any(isinstance(m, lk_impl.TritonDepthwiseConv2d) for m in model.modules())
    cfg = load_config('configs/xl_megadata.json', [overrides[0].replace('"triton"', '"tirton"')])
    with pytest.raises(ValueError, match=r"lk_impl 'tirton' is not one of \('native', 'triton', 'auto'\)"):
        build_model(cfg.model, {'in1k': 3})


def test_auto_runs_nn_conv2d_off_cuda_and_says_why_once(caplog, monkeypatch):
    monkeypatch.setattr(lk_conv, 'interpreting', lambda: False)   # a plain CPU: no Triton to run
    conv = lk_impl.AutoDepthwiseConv2d(6, 5, True)
    x = torch.randn(1, 6, 7, 7)
    lk_impl.log_fallback_once.cache_clear()
    with caplog.at_level(logging.INFO, logger='pretrain.models.lk_impl'):
        out = conv(x)
        conv(x)
    torch.testing.assert_close(out, torch.nn.Conv2d.forward(conv, x))
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and 'nn.Conv2d' in said[0] and 'cpu is not CUDA' in said[0]


def test_the_override_table_names_the_algorithm_per_card_dtype_and_shape(tmp_path, monkeypatch):
    table = tmp_path / 'measured.json'
    table.write_text(json.dumps({'format': 2, 'devices': {'Card X': {'bfloat16': {
        '384,27,56,56': 'direct', '3072,13,7,7': 'toeplitz'}}}}))
    monkeypatch.setattr(lk_choice, 'MEASURED_TABLE', table)
    lk_choice.measured_faster.cache_clear()

    def shape(c, k, px, dtype='bfloat16'):
        return LayerShape(dtype, True, c, k, px, px)
    assert lk_choice.table_override('Card X', shape(384, 27, 56)) == 'direct'
    assert lk_choice.table_override('Card X', shape(3072, 13, 7)) == 'toeplitz'
    assert lk_choice.table_override('Card X', shape(384, 27, 28)) is None             # not listed
    assert lk_choice.table_override('Card X', shape(384, 27, 56, 'float32')) is None  # another dtype
    assert lk_choice.table_override('Card Y', shape(384, 27, 56)) is None
    decision = lk_choice.decide('Card X', shape(384, 27, 56), EVERY, 32, measure=None, table='direct')
    assert (decision.algorithm, decision.source) == ('direct', 'table')
    table.write_text(json.dumps({'format': 1, 'devices': {}}))
    lk_choice.measured_faster.cache_clear()
    with pytest.raises(ValueError, match='format 1 is not 2; rerun bench/lk_conv.py --write-table'):
        lk_choice.table_override('Card X', shape(384, 27, 56))
    lk_choice.measured_faster.cache_clear()


def test_triton_without_a_gpu_or_the_interpreter_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setattr(lk_conv, 'interpreting', lambda: False)  # kernels built for a GPU, tensors on a CPU
    with pytest.raises(RuntimeError, match=r'needs a CUDA device \(or TRITON_INTERPRET=1'):
        lk_impl.TritonDepthwiseConv2d(4, 3, False)(torch.randn(1, 4, 5, 5))


def test_the_bench_writes_the_override_table_auto_reads(tmp_path, monkeypatch):
    import importlib.util
    spec = importlib.util.spec_from_file_location('bench_lk_conv', REPO_ROOT / 'bench' / 'lk_conv.py')
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    table = tmp_path / 'measured.json'
    table.write_text((REPO_ROOT / 'pretrain' / 'models' / 'lk_conv_measured.json').read_text())
    monkeypatch.setattr(lk_choice, 'MEASURED_TABLE', table)

    def row(c, size, batch, cudnn, direct, toeplitz=None):
        r = dict(channels=c, kernel=27, size=size, batch=batch, cudnn=dict(total=cudnn), direct=dict(total=direct))
        if toeplitz is not None:
            r['toeplitz'] = dict(total=toeplitz)
        return r
    rows = [row(384, 56, 32, 10.0, 2.0), row(384, 56, 64, 20.0, 4.0),            # faster at both batches
            row(1536, 14, 32, 5.0, 6.0, 1.0), row(1536, 14, 64, 9.0, 12.0, 2.0),  # toeplitz wins
            row(768, 28, 32, 3.0, 2.0), row(768, 28, 64, 3.0, 4.0)]               # not at every batch
    bench.write_table(rows, 'Card X', 'bfloat16')
    lk_choice.measured_faster.cache_clear()
    assert lk_choice.measured_faster('Card X', 'bfloat16') == {'384,27,56,56': 'direct', '1536,27,14,14': 'toeplitz'}
    lk_choice.measured_faster.cache_clear()


@pytest.mark.slow  # interpreted kernels; lower-bounds keeps the same torch/triton
def test_under_bf16_autocast_triton_runs_in_bf16_like_nn_conv2d():
    conv = lk_impl.TritonDepthwiseConv2d(6, 5, True)
    x = torch.randn(2, 6, 7, 7).contiguous(memory_format=torch.channels_last)   # fp32 in, as a trainer feeds
    with torch.autocast('cpu', dtype=torch.bfloat16):
        ours = conv(x)
        ref = torch.nn.Conv2d.forward(conv, x)
    assert ours.dtype == ref.dtype == torch.bfloat16
    assert ours.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours.float(), ref.float(), rtol=2e-2, atol=2e-2)
