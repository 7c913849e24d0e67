"""The paper's analyses: ERF (Appendix B), kernel weights (F), shape bias (C)."""
import json

import numpy as np
import pytest
import torch
from helpers import write_image

from pretrain.analysis import erf, kernels, shape_bias
from pretrain.models import RepLKNet

TINY = dict(kernel_sizes=(7, 5), depths=(1, 1), channels=(8, 16), small_kernel=3, num_classes=0)


def test_area_ratio_follows_the_definition():
    uniform = np.ones((101, 101))
    assert erf.area_ratio(uniform, 0.5) == pytest.approx(0.5, abs=0.03)
    point = np.zeros((101, 101))
    point[50, 50] = 1
    assert erf.area_ratio(point, 0.99) == pytest.approx(1 / 101 ** 2)
    assert erf.area_ratio(np.zeros((9, 9)), 0.2) is None            # nothing to pass
    corner = np.zeros((9, 9))
    corner[0, 0] = 1
    assert erf.area_ratio(corner, 0.5) == pytest.approx(1.0)        # only the whole image holds it


def test_contribution_is_the_positive_input_gradient_of_the_central_points():
    torch.manual_seed(0)
    model = RepLKNet(**TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    c = erf.contribution_sum(model, x)
    xr = x.clone().requires_grad_(True)
    f = model.forward_features(xr)
    f[:, :, f.shape[2] // 2, f.shape[3] // 2].sum().backward()
    assert torch.allclose(c, xr.grad.clamp(min=0).sum((0, 1)))
    a = erf.aggregate(model, [x], torch.device('cpu'))
    assert a.max() == pytest.approx(1.0) and a.min() >= 0


def test_larger_kernels_spread_the_erf():
    x = [torch.randn(2, 3, 96, 96)]
    ratios = {}
    for k in (3, 13):
        torch.manual_seed(0)
        model = RepLKNet(**dict(TINY, kernel_sizes=(k, k), small_kernel=None))
        ratios[k] = erf.area_ratio(erf.aggregate(model, x, torch.device('cpu')), 0.5)
    assert ratios[13] > ratios[3]


def test_erf_cli_writes_map_png_and_table(tmp_path):
    for i in range(3):
        write_image(tmp_path / 'img' / f'{i}.jpg', i, size=(80, 60))
    kw = json.dumps({k: v for k, v in TINY.items() if k != 'num_classes'})
    summary = erf.main(['--model', 'replknet_31b', '--model', 'replknet_13', '--model-kwargs', f'replknet_31b={kw}',
                        '--model-kwargs', f'replknet_13={kw}', '--images', str(tmp_path / 'img'), '--size', '64',
                        '--batch', '2', '--out', str(tmp_path / 'out')])
    assert summary['images'] == 3 and set(summary['ratios']) == {'replknet_31b', 'replknet_13'}
    assert np.load(tmp_path / 'out' / 'replknet_31b_erf.npy').shape == (64, 64)
    assert (tmp_path / 'out' / 'replknet_13_erf.png').stat().st_size > 1000
    assert '| replknet_31b |' in (tmp_path / 'out' / 'erf_table.md').read_text()


def test_erf_images_skip_an_unreadable_file_and_say_so(tmp_path, caplog):
    for i in range(3):
        write_image(tmp_path / 'images' / f'{i}.jpg', i, size=(40, 30))
    (tmp_path / 'images' / '1b.jpg').write_bytes(b'not a jpeg')                # sorted between 1 and 2
    batches = erf.load_images(str(tmp_path / 'images'), 3, 32, (0.5,) * 3, (0.5,) * 3, 2)
    assert [b.shape[0] for b in batches] == [2, 1]                              # still 3 images: 0, 1, 2
    assert '1 unreadable images skipped: 1b.jpg (not a readable image' in caplog.text


def test_kernel_maps_before_and_after_the_small_kernel(tmp_path):
    model = RepLKNet(**TINY)
    layer_name = kernels.default_layer(model)
    assert layer_name.startswith('stages.1.blocks.0')
    layer = kernels.large_kernel_layers(model)[layer_name]
    with torch.no_grad():
        layer.small_conv.conv.weight.fill_(1.0)  # a strong small kernel must brighten the centre
    maps = kernels.kernel_maps(layer)
    before, after = maps.values()
    assert before.shape == after.shape == (5, 5) and before.max() == after.max() == 1.0
    c = slice(1, 4)
    assert after[c, c].mean() > before[c, c].mean()
    kw = json.dumps({k: v for k, v in TINY.items() if k != 'num_classes'})
    kernels.main(['--model', 'replknet_31b', '--model-kwargs', kw, '--out', str(tmp_path)])
    assert (tmp_path / 'replknet_31b_kernels.png').exists()


def test_shape_bias_counts_shape_and_texture_decisions():
    records = [('cat', 'elephant', 'cat'), ('cat', 'elephant', 'elephant'), ('cat', 'car', 'cat'),
               ('dog', 'knife', 'knife'), ('dog', 'dog', 'dog'), ('dog', 'oven', 'bird')]
    r = shape_bias.shape_bias(records)
    assert r['per_category'] == {'cat': pytest.approx(2 / 3), 'dog': 0.0}
    assert r['average'] == pytest.approx(1 / 3) and r['overall'] == pytest.approx(0.5)
    mapping = {c: [i] for i, c in enumerate(shape_bias.CATEGORIES)}
    probs = torch.zeros(1, 1000)
    probs[0, 7] = 1.0
    assert shape_bias.decide(probs, mapping) == ['cat']


def test_shape_bias_cli_on_a_cue_conflict_folder(tmp_path):
    for shape, texture in (('cat', 'elephant'), ('knife', 'oven'), ('bear', 'bear')):
        write_image(tmp_path / 'cue' / shape / f'{shape}1-{texture}2.png', 0, size=(32, 32))
    (tmp_path / 'cats.json').write_text(json.dumps({c: [i, i + 100] for i, c in enumerate(shape_bias.CATEGORIES)}))
    kw = json.dumps({k: v for k, v in TINY.items() if k != 'num_classes'})
    out = shape_bias.main(['--model', 'replknet_31b', '--model-kwargs', f'replknet_31b={kw}', '--images',
                           str(tmp_path / 'cue'), '--categories', str(tmp_path / 'cats.json'), '--size', '32',
                           '--out', str(tmp_path / 'out')])
    r = out['replknet_31b']
    assert r['shape_decisions'] + r['texture_decisions'] <= 2  # the bear-on-bear image does not count
    assert (tmp_path / 'out' / 'shape_bias.png').exists()
    (tmp_path / 'bad.json').write_text(json.dumps({'cat': [1]}))
    with pytest.raises(ValueError, match='have no ImageNet classes'):
        shape_bias.load_mapping(str(tmp_path / 'bad.json'))


def test_official_erf_definition_reproduces_the_official_script_algorithm():
    # The official erf/visualize_erf.py, image by image (its batch size is 1): ReLU on the central
    # points, gradient, ReLU, summed over channels, averaged over images; then log10(x + 1) / max.
    from pretrain.models import RepLKNet
    torch.manual_seed(0)
    model = RepLKNet(num_classes=0, kernel_sizes=(7, 5), depths=(1, 1), channels=(8, 16), small_kernel=3).eval()
    images = torch.randn(3, 3, 64, 64)
    maps = []
    for image in images:
        x = image[None].clone().requires_grad_(True)
        out = model.forward_features(x)
        central = torch.nn.functional.relu(out[:, :, out.shape[2] // 2, out.shape[3] // 2]).sum()
        grad = torch.nn.functional.relu(torch.autograd.grad(central, x)[0])
        maps.append(grad.sum((0, 1)).double())
    expected = torch.log10(torch.stack(maps).mean(0) + 1)
    expected = (expected / expected.max()).numpy()
    ours = erf.aggregate(model, [images[:2], images[2:]], torch.device('cpu'), definition='official')
    assert np.allclose(ours, expected, rtol=1e-6, atol=1e-9)
    paper = erf.aggregate(model, [images], torch.device('cpu'), definition='paper')
    assert not np.allclose(paper, expected)  # the two definitions differ on the same model and images
