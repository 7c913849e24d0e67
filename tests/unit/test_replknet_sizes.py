"""Parameter and MAC counts of the full-size variants (built on the meta device: no compute)."""
import pytest
import timm
import torch

from pretrain.models import count_macs, count_params

# (training form, large kernels merged) with a 1000-class head, from the official code.
OFFICIAL_PARAMS = {
    'replknet_31b': (79_864_168, 79_527_272),
    'replknet_31l': (172_671_016, 172_165_672),
    'replknet_xl': (335_435_752, 335_399_656),
}
# Fully deployed (every BN folded): conv/linear weights and one bias per output channel.
DEPLOYED_PARAMS = {'replknet_31b': 79_388_776, 'replknet_31l': 171_957_928, 'replknet_xl': 335_110_632}


def meta_model(name: str, **kwargs):
    with torch.device('meta'):
        return timm.create_model(name, **kwargs)


@pytest.mark.parametrize('name', sorted(OFFICIAL_PARAMS))
def test_param_counts_equal_the_official_ones_in_every_form(name):
    train_form, merged_form = OFFICIAL_PARAMS[name]
    model = meta_model(name)
    assert count_params(model) == train_form
    model.reparameterize(merge_only=True)
    assert count_params(model) == merged_form
    model.reparameterize()
    assert count_params(model) == DEPLOYED_PARAMS[name]
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert count_params(model) == sum(m.weight.numel() + m.weight.shape[0] for m in layers)


def test_deploy_form_has_no_batchnorm_left():
    model = meta_model('replknet_xl').reparameterize()
    assert not [n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize('name, size, gmacs', [('replknet_31b', 224, 15.3), ('replknet_xl', 320, 128.7)])
def test_macs_match_the_paper(name, size, gmacs):
    # The paper counts the deployed network (small kernels merged into the large ones).
    model = meta_model(name).reparameterize(merge_only=True)
    assert count_macs(model, (3, size, size)) / 1e9 == pytest.approx(gmacs, rel=0.005)


def test_mac_counter_counts_a_depthwise_conv_exactly():
    conv = torch.nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False)
    assert count_macs(conv, (8, 10, 10)) == 8 * 10 * 10 * 25
