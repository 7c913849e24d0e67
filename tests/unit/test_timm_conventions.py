"""Every registered RepLKNet follows timm's model conventions (at tiny widths and 64 px): the
classifier reset with and without pooling, forward_intermediates, prune_intermediate_layers,
feature_info and features_only agreeing with each other."""
import pytest
import timm
import torch

import pretrain.models  # noqa: F401  (registers the variants)

VARIANTS = ['replknet_31b', 'replknet_31l', 'replknet_xl', 'replknet_13', 'replknet_3']


def tiny(name: str, **kwargs):
    kernels = (3, 3, 3, 3) if name == 'replknet_3' else (7, 7, 5, 5)
    torch.manual_seed(0)
    return timm.create_model(name, kernel_sizes=kernels, depths=(1, 1, 1, 1), channels=(8, 16, 32, 64),
                             **kwargs).eval()


@pytest.mark.parametrize('name', VARIANTS)
def test_reset_classifier_follows_timm(name):
    model, x = tiny(name), torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 1000)
    model.reset_classifier(0, '')  # timm: unpooled features, the normalized map
    out = model(x)
    assert out.shape == (2, model.num_features, 2, 2)
    model.reset_classifier(5, 'avg')
    assert model(x).shape == (2, 5) and model.get_classifier().out_features == 5
    model.reset_classifier(0)  # pooled pre-logits, pooling kept
    assert model(x).shape == (2, model.num_features) == (2, model.head_hidden_size)
    assert torch.equal(model(x), model.forward_head(model.forward_features(x), pre_logits=True))
    with pytest.raises(ValueError, match='needs num_classes=0'):
        model.reset_classifier(3, '')


@pytest.mark.parametrize('name', VARIANTS)
def test_forward_intermediates_match_feature_info_and_forward_features(name):
    model, x = tiny(name), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert [m.shape[1] for m in maps] == [f['num_chs'] for f in model.feature_info]
        assert [64 // m.shape[-1] for m in maps] == [f['reduction'] for f in model.feature_info]
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True, stop_early=True)
        assert [m.shape[1] for m in last_two] == [32, 64]
        first = model.forward_intermediates(x, indices=[0], intermediates_only=True, stop_early=True)
        assert len(first) == 1 and torch.equal(first[0], maps[0])
        normed = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)[0]
        assert torch.allclose(normed, model.head.norm(maps[3]))
        features = timm.create_model(name, features_only=True, kernel_sizes=(3,) * 4 if name == 'replknet_3'
                                     else (7, 7, 5, 5), depths=(1,) * 4, channels=(8, 16, 32, 64)).eval()
        assert [f.shape[1] for f in features(x)] == features.feature_info.channels() == [8, 16, 32, 64]
    with pytest.raises(ValueError, match='NCHW'):
        model.forward_intermediates(x, output_fmt='NHWC')


@pytest.mark.parametrize('name', VARIANTS)
def test_prune_intermediate_layers_keeps_what_is_taken(name):
    model, x = tiny(name), torch.randn(2, 3, 64, 64)
    assert model.prune_intermediate_layers([0, 1]) == [0, 1]
    assert len(model.stages) == 2 and len(model.feature_info) == 2
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
        assert [m.shape[1] for m in maps] == [8, 16]
        assert model(x).shape == (2, 16, 8, 8)  # the head was pruned too: the last kept stage's map (stride 8)


def test_multi_task_heads_keep_working_with_the_conventions():
    model, x = tiny('replknet_31b', num_classes={'a': 3, 'b': 2}), torch.randn(2, 3, 64, 64)
    out = model(x)
    assert {k: v.shape for k, v in out.items()} == {'a': (2, 3), 'b': (2, 2)}
    model.reset_classifier({'c': 4})
    assert model(x)['c'].shape == (2, 4)


@pytest.mark.parametrize('name', VARIANTS)
def test_model_scripts_and_its_fx_graph_scripts(name):
    model, x = tiny(name), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(torch.jit.script(model)(x), expected, atol=1e-5)
        traced = torch.fx.symbolic_trace(model)
        assert torch.allclose(traced(x), expected, atol=1e-5)
        assert torch.allclose(torch.jit.script(traced)(x), expected, atol=1e-5)


def test_multi_task_model_scripts_with_tasks_in_the_order_given():
    model, x = tiny('replknet_31b', num_classes={'b': 2, 'a': 3}), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, scripted = model(x), torch.jit.script(model)(x)
    assert list(scripted) == list(expected) == ['b', 'a']
    assert all(torch.allclose(scripted[t], expected[t], atol=1e-5) for t in expected)
    assert [k for k in model.state_dict() if k.startswith('head.fc')] == [
        'head.fc.b.weight', 'head.fc.b.bias', 'head.fc.a.weight', 'head.fc.a.bias']  # checkpoint keys unchanged
