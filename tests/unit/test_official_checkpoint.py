"""Loading checkpoints laid out exactly as the official RepLKNet code saves them.

The official layout and forward are written out here independently of our model
(key names and module order from DingXiaoH/RepLKNet-pytorch ``replknet.py``), so a
mapping error in ``checkpoint_filter_fn`` shows up as a wrong output.
"""
import pytest
import timm
import torch
import torch.nn.functional as F

import pretrain.models  # noqa: F401  (registers the RepLKNet variants with timm)

CFG = dict(kernel_sizes=(7, 5), depths=(1, 2), channels=(8, 16), small_kernel=3, dw_ratio=1.0)
CFG_XL = dict(CFG, small_kernel=None, dw_ratio=1.5)
NUM_CLASSES = 6


def _conv_bn(sd, prefix, cin, cout, k, groups, gen):
    sd[f'{prefix}.conv.weight'] = torch.randn(cout, cin // groups, k, k, generator=gen) * (2 / (cin // groups * k * k)) ** 0.5
    _bn(sd, f'{prefix}.bn', cout, gen)


def _bn(sd, prefix, c, gen):
    sd[f'{prefix}.weight'] = torch.rand(c, generator=gen) * 0.5 + 0.75
    sd[f'{prefix}.bias'] = torch.randn(c, generator=gen) * 0.1
    sd[f'{prefix}.running_mean'] = torch.randn(c, generator=gen) * 0.1
    sd[f'{prefix}.running_var'] = torch.rand(c, generator=gen) + 0.5
    sd[f'{prefix}.num_batches_tracked'] = torch.tensor(100)


def official_state_dict(kernel_sizes, depths, channels, small_kernel, dw_ratio, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sd, w = {}, channels[0]
    for i, (cin, k, g) in enumerate([(3, 3, 1), (w, 3, w), (w, 1, 1), (w, 3, w)]):
        _conv_bn(sd, f'stem.{i}', cin, w, k, g, gen)
    for s, (depth, c, k) in enumerate(zip(depths, channels, kernel_sizes)):
        dw = int(c * dw_ratio)
        for b in range(depth):
            lk, ffn = f'stages.{s}.blocks.{2 * b}', f'stages.{s}.blocks.{2 * b + 1}'
            _bn(sd, f'{lk}.prelkb_bn', c, gen)
            _conv_bn(sd, f'{lk}.pw1', c, dw, 1, 1, gen)
            _conv_bn(sd, f'{lk}.large_kernel.lkb_origin', dw, dw, k, dw, gen)
            if small_kernel:
                _conv_bn(sd, f'{lk}.large_kernel.small_conv', dw, dw, small_kernel, dw, gen)
            _conv_bn(sd, f'{lk}.pw2', dw, c, 1, 1, gen)
            _bn(sd, f'{ffn}.preffn_bn', c, gen)
            _conv_bn(sd, f'{ffn}.pw1', c, 4 * c, 1, 1, gen)
            _conv_bn(sd, f'{ffn}.pw2', 4 * c, c, 1, 1, gen)
        if s + 1 < len(depths):
            nxt = channels[s + 1]
            _conv_bn(sd, f'transitions.{s}.0', c, nxt, 1, 1, gen)
            _conv_bn(sd, f'transitions.{s}.1', nxt, nxt, 3, nxt, gen)
    _bn(sd, 'norm', channels[-1], gen)
    sd['head.weight'] = torch.randn(NUM_CLASSES, channels[-1], generator=gen) * 0.1
    sd['head.bias'] = torch.randn(NUM_CLASSES, generator=gen) * 0.1
    return sd


def official_forward(sd, x, kernel_sizes, depths, channels, small_kernel, dw_ratio):
    """Eval-mode forward of the official network, straight from its state dict."""
    def bn(p, t):
        return F.batch_norm(t, sd[f'{p}.running_mean'], sd[f'{p}.running_var'], sd[f'{p}.weight'],
                            sd[f'{p}.bias'], training=False, eps=1e-5)

    def conv_bn(p, t, stride=1, relu=False):
        wt = sd[f'{p}.conv.weight']
        groups = t.shape[1] // wt.shape[1]
        t = bn(f'{p}.bn', F.conv2d(t, wt, stride=stride, padding=wt.shape[-1] // 2, groups=groups))
        return F.relu(t) if relu else t

    for i, stride in enumerate([2, 1, 1, 2]):
        x = conv_bn(f'stem.{i}', x, stride, relu=True)
    for s, depth in enumerate(depths):
        for b in range(depth):
            lk, ffn = f'stages.{s}.blocks.{2 * b}', f'stages.{s}.blocks.{2 * b + 1}'
            t = conv_bn(f'{lk}.pw1', bn(f'{lk}.prelkb_bn', x), relu=True)
            big = conv_bn(f'{lk}.large_kernel.lkb_origin', t)
            if small_kernel:
                big = big + conv_bn(f'{lk}.large_kernel.small_conv', t)
            x = x + conv_bn(f'{lk}.pw2', F.relu(big))
            t = F.gelu(conv_bn(f'{ffn}.pw1', bn(f'{ffn}.preffn_bn', x)))
            x = x + conv_bn(f'{ffn}.pw2', t)
        if s + 1 < len(depths):
            x = conv_bn(f'transitions.{s}.0', x, relu=True)
            x = conv_bn(f'transitions.{s}.1', x, stride=2, relu=True)
    x = bn('norm', x).mean((2, 3))
    return F.linear(x, sd['head.weight'], sd['head.bias'])


@pytest.mark.parametrize('name, cfg', [('replknet_31b', CFG), ('replknet_xl', CFG_XL)])
@pytest.mark.parametrize('container', ['bare', 'model', 'state_dict+module'])
def test_official_checkpoint_loads_through_timm_and_gives_official_outputs(tmp_path, name, cfg, container):
    sd = official_state_dict(**cfg)
    if container == 'model':
        saved = {'model': sd, 'epoch': 119}
    elif container == 'state_dict+module':
        saved = {'state_dict': {f'module.{k}': v for k, v in sd.items()}}
    else:
        saved = sd
    path = tmp_path / 'RepLKNet-official.pth'
    torch.save(saved, path)
    model = timm.create_model(name, pretrained=True, num_classes=NUM_CLASSES,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=NUM_CLASSES), **cfg).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.allclose(model(x), official_forward(sd, x, **cfg), atol=1e-5)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    sd = official_state_dict(**CFG)
    del sd['stages.1.blocks.2.pw1.conv.weight']
    sd['stages.9.extra.weight'] = torch.zeros(1)
    path = tmp_path / 'broken.pth'
    torch.save(sd, path)
    with pytest.raises(KeyError) as err:
        timm.create_model('replknet_31b', pretrained=True, num_classes=NUM_CLASSES,
                          pretrained_cfg_overlay=dict(file=str(path), num_classes=NUM_CLASSES), **CFG)
    assert 'stages.1.blocks.2.pw1.conv.weight' in str(err.value)
    assert 'stages.9.extra.weight' in str(err.value)


@pytest.mark.parametrize('merge_only', [True, False], ids=['merged', 'fused'])
def test_reparameterized_checkpoint_converts_the_model_to_its_form(tmp_path, merge_only):
    model = timm.create_model('replknet_31b', num_classes=NUM_CLASSES, **CFG).eval().reparameterize(merge_only)
    path = tmp_path / 'deployed.pth'
    torch.save(model.state_dict(), path)
    loaded = timm.create_model('replknet_31b', pretrained=True, num_classes=NUM_CLASSES,
                               pretrained_cfg_overlay=dict(file=str(path), num_classes=NUM_CLASSES), **CFG).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    from pretrain.models import checkpoint_filter_fn
    train_form = timm.create_model('replknet_31b', num_classes=NUM_CLASSES, **CFG)
    merged_model = timm.create_model('replknet_31b', num_classes=NUM_CLASSES, reparam='merged', **CFG)
    with pytest.raises(KeyError, match='training form'):
        checkpoint_filter_fn(train_form.state_dict(), merged_model)


def test_the_analyses_read_an_official_checkpoint_as_timms_entry_points_do(tmp_path):
    """`pretrain.analysis.kernels/erf --checkpoint official.pth` loaded without the official-name
    mapping and failed (KeyError ... lacks stages.1.downsample...)."""
    import json

    from pretrain.analysis.erf import build
    from pretrain.analysis.kernels import main as kernels
    sd = official_state_dict(**CFG)
    path = tmp_path / 'RepLKNet-official.pth'
    torch.save({'model': sd, 'epoch': 119}, path)
    entry = timm.create_model('replknet_31b', pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file=str(path)), **CFG).eval()
    analysed = build('replknet_31b', str(path), dict(CFG)).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(analysed(x), entry(x))
    summary = kernels(['--model', 'replknet_31b', '--checkpoint', str(path), '--model-kwargs',
                       json.dumps(CFG), '--out', str(tmp_path / 'kernels')])
    import numpy as np
    prefix = 'stages.1.blocks.0.large_kernel.lkb_origin'   # the official name of the analysed layer
    scale = sd[f'{prefix}.bn.weight'] / (sd[f'{prefix}.bn.running_var'] + 1e-5).sqrt()
    expected = (sd[f'{prefix}.conv.weight'] * scale[:, None, None, None]).abs().sum(dim=(0, 1)).double().numpy()
    assert summary['layer'] == 'stages.1.blocks.0.large_kernel' and len(summary['maps']) == 2
    [saved] = (tmp_path / 'kernels').glob('*_large.npy')
    np.testing.assert_allclose(np.load(saved), expected / expected.max(), rtol=1e-5)
