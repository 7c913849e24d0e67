"""Behaviour of the RepLKNet model family: forward/backward, re-param, heads, timm API."""
import copy

import pytest
import timm
import torch
from timm.utils import reparameterize_model

from pretrain.models import RepLKNet, count_params

VARIANTS = ['replknet_31b', 'replknet_31l', 'replknet_xl', 'replknet_13', 'replknet_3']
# Toy shapes that keep every structural feature (re-param branch, inverted bottleneck, transitions).
TINY = dict(kernel_sizes=(7, 5), depths=(1, 2), channels=(8, 16), small_kernel=3)
TINY_XL = dict(TINY, small_kernel=None, dw_ratio=1.5)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.fixture(scope='module')
def full_models():
    """Each full-size variant built once for this module (XL alone is 335M parameters)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache.clear()  # keep one full model in memory at a time
            torch.manual_seed(0)
            cache[name] = timm.create_model(name, num_classes=10)
        return cache[name]
    return get


@pytest.mark.slow
@pytest.mark.parametrize('name', VARIANTS)
def test_full_variant_forward_backward_is_finite(name, full_models):
    model = full_models(name).train()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.zero_grad(set_to_none=True)


@pytest.mark.slow
@pytest.mark.parametrize('name', VARIANTS)
def test_full_variant_reparam_keeps_eval_outputs(name, full_models, randomize_bn):
    model = randomize_bn(copy.deepcopy(full_models(name))).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        merged = model.reparameterize(merge_only=True)(x)
        deployed = model.reparameterize()(x)
        again = model.reparameterize()(x)
    assert rel_err(ref, merged) < 1e-5
    assert rel_err(ref, deployed) < 1e-5
    assert torch.equal(deployed, again)


@pytest.mark.parametrize('kwargs', [TINY, TINY_XL], ids=['small-kernel-branch', 'inverted-bottleneck'])
def test_timm_reparameterize_model_equals_the_model_method(kwargs, randomize_bn):
    model = randomize_bn(RepLKNet(num_classes=7, **kwargs)).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ref = model(x)
        via_timm = reparameterize_model(model)(x)
        via_method = copy.deepcopy(model).reparameterize()(x)
    assert rel_err(ref, via_timm) < 1e-5
    assert torch.equal(via_timm, via_method)


class ExplicitDepthwise(torch.nn.Module):
    """A stand-in for a custom large-kernel implementation (e.g. an implicit-GEMM GPU kernel)."""

    def __init__(self, channels, kernel_size, bias):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(channels, 1, kernel_size, kernel_size) * 0.1)
        self.bias = torch.nn.Parameter(torch.zeros(channels)) if bias else None
        self.channels = channels

    def forward(self, x):
        k = self.weight.shape[-1]
        return torch.nn.functional.conv2d(x, self.weight, self.bias, padding=k // 2, groups=self.channels)


def test_reparam_works_with_a_custom_depthwise_implementation(randomize_bn):
    model = randomize_bn(RepLKNet(num_classes=5, lk_impl=ExplicitDepthwise, **TINY)).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ref = model(x)
        out = model.reparameterize()(x)
    assert rel_err(ref, out) < 1e-5
    merged = [m.lkb_reparam for m in model.modules() if hasattr(m, 'lkb_reparam')]
    assert merged and all(isinstance(m, ExplicitDepthwise) for m in merged)


def test_gradient_checkpointing_gives_the_same_outputs_and_grads():
    torch.manual_seed(0)
    model = RepLKNet(num_classes=5, **TINY_XL)
    twin = copy.deepcopy(model)
    twin.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 48, 48)
    out, out_ckpt = model(x), twin(x)
    out.sum().backward()
    out_ckpt.sum().backward()
    assert torch.allclose(out, out_ckpt, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name


@pytest.mark.parametrize('form', ['none', 'merged', 'fused'])
def test_state_dict_round_trip_in_every_form(form, randomize_bn):
    source = randomize_bn(RepLKNet(num_classes=5, **TINY)).eval()
    if form != 'none':
        source.reparameterize(merge_only=form == 'merged')
    target = RepLKNet(num_classes=5, reparam=form, **TINY).eval()
    target.load_state_dict(source.state_dict(), strict=True)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_dict_num_classes_gives_one_head_per_task(randomize_bn):
    tasks = {'in1k': 10, 'places365': 4}
    model = randomize_bn(RepLKNet(num_classes=tasks, **TINY)).eval()
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        out = model(x)
        assert {k: v.shape for k, v in out.items()} == {'in1k': (3, 10), 'places365': (3, 4)}
        deployed = model.reparameterize()(x)
    for task in tasks:
        assert rel_err(out[task], deployed[task]) < 1e-5


def test_reset_classifier_switches_between_single_and_task_heads():
    model = RepLKNet(num_classes=5, **TINY)
    model.reset_classifier({'a': 3, 'b': 2})
    assert set(model(torch.randn(1, 3, 48, 48))) == {'a', 'b'}
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 16)  # pooled features
    with pytest.raises(ValueError, match='empty'):
        model.reset_classifier({})


def test_timm_registers_every_variant_with_its_pretrained_cfg():
    assert set(VARIANTS) <= set(timm.list_models('replknet_*'))
    model = timm.create_model('replknet_xl', num_classes=3, drop_path_rate=0.2, **TINY_XL)
    assert model.pretrained_cfg['mean'] == (0.5, 0.5, 0.5)
    assert model.pretrained_cfg['input_size'] == (3, 320, 320)
    assert model.get_classifier().out_features == 3


def test_drop_path_rate_rises_linearly_over_the_blocks():
    model = RepLKNet(num_classes=2, drop_path_rate=0.3, **dict(TINY, depths=(2, 2)))
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, 'drop_prob') else 0.0
             for stage in model.stages for b in stage.blocks]
    # RepLK and ConvFFN block of a pair share a rate; pairs go 0, 0.1, 0.2, 0.3.
    assert rates == pytest.approx([0, 0, 0.1, 0.1, 0.2, 0.2, 0.3, 0.3])


def test_group_matcher_covers_every_parameter_per_stage_and_per_block():
    model = RepLKNet(num_classes=2, **TINY)
    coarse = timm.models.group_parameters(model, model.group_matcher(coarse=True))
    fine = timm.models.group_parameters(model, model.group_matcher(coarse=False))
    all_params = {n for n, _ in model.named_parameters()}
    for groups in (coarse, fine):
        names = [n for group in groups.values() for n in group]
        assert sorted(names) == sorted(all_params)  # each parameter in exactly one group
    # stem, 2 stages, head
    assert len(coarse) == 4
    # stem, stage0: 2 blocks, stage1: downsample folded into its first block + 4 blocks, head
    assert len(fine) == 1 + 2 + 4 + 1


def test_features_only_returns_four_strided_maps():
    model = timm.create_model('replknet_31b', features_only=True,
                              **dict(TINY, depths=(1, 1, 1, 1), kernel_sizes=(7, 5, 5, 3), channels=(8, 16, 24, 32)))
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [8, 16, 24, 32]
    assert [64 // f.shape[-1] for f in feats] == [4, 8, 16, 32]


def test_building_a_model_leaves_no_global_state():
    first = RepLKNet(num_classes=2, **TINY)
    torch.nn.SyncBatchNorm.convert_sync_batchnorm(first)
    second = RepLKNet(num_classes=2, **TINY)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in second.modules())
    assert count_params(first) == count_params(second)


def test_inconsistent_stage_lists_are_rejected_by_name():
    with pytest.raises(ValueError, match='one entry per stage'):
        RepLKNet(kernel_sizes=(7,), depths=(1, 1), channels=(8, 16))
    with pytest.raises(ValueError, match='small_kernel'):
        RepLKNet(num_classes=2, **dict(TINY, small_kernel=9))
