"""An export loads the way a timm user loads any checkpoint, for any class count, with its trained
head, input size and crop; asking for another class count says loudly that the head is new."""
import json
import logging

import pytest
import timm
import torch
from helpers import trained_looking_state

from pretrain.config import load_config
from pretrain.export import single_task_model, write_export

TINY = {'kernel_sizes': [7, 5], 'depths': [1, 1], 'channels': [16, 32], 'small_kernel': 3}


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp('export')
    cfg = load_config('configs/tiny_cpu.json', [f'model.kwargs={json.dumps(TINY)}', 'data.transform.image_size=40',
                                                'tasks={"pets": {"num_classes": 2}, "other": {"num_classes": 3}}'])
    state = trained_looking_state(cfg)
    meta = write_export(cfg, 'pets', state, str(out), source={})
    reference, _ = single_task_model(cfg, 'pets', state)
    x = torch.randn(3, 3, 40, 40)
    with torch.no_grad():
        expected = reference.eval()(x)
    return out / 'model.safetensors', meta, x, expected


@pytest.mark.parametrize('extra', [{}, {'num_classes': 2}])
def test_plain_timm_load_keeps_the_trained_head(exported, extra):
    file, _, x, expected = exported
    for seed in (0, 1):  # a random head would differ between seeds
        torch.manual_seed(seed)
        model = timm.create_model('replknet_31b', pretrained=True, pretrained_cfg_overlay=dict(file=str(file)),
                                  **extra).eval()
        with torch.no_grad():
            out = model(x)
        assert ((out - expected).abs().max() / expected.abs().max()).item() < 1e-4
    assert model.pretrained_cfg['num_classes'] == 2 and tuple(model.pretrained_cfg['input_size']) == (3, 40, 40)


def test_the_exported_pretrained_cfg_describes_the_exported_model(exported):
    _, meta, _, _ = exported
    cfg = meta['pretrained_cfg']
    assert cfg['num_classes'] == 2 and cfg['tag'] == 'export_pets' and cfg['input_size'] == [3, 40, 40]
    assert cfg['pool_size'] == [2, 2] and cfg['crop_pct'] == 1.0


def test_the_weights_file_is_as_readable_as_its_config(exported):
    import os
    file = exported[0]
    umask = os.umask(0)
    os.umask(umask)
    mode = os.stat(file).st_mode & 0o777
    assert mode == os.stat(file.with_name('config.json')).st_mode & 0o777 == 0o666 & ~umask   # was 0600


def test_another_class_count_builds_a_new_head_and_says_so(exported, caplog):
    file, _, _, _ = exported
    with caplog.at_level(logging.WARNING):
        model = timm.create_model('replknet_31b', pretrained=True, num_classes=5,
                                  pretrained_cfg_overlay=dict(file=str(file)))
    assert model.num_classes == 5 and 'its head is not loaded' in caplog.text


def test_an_export_of_another_architecture_is_refused(exported):
    file, _, _, _ = exported
    with pytest.raises(ValueError, match='is an export of replknet_31b, not replknet_xl'):
        timm.create_model('replknet_xl', pretrained=True, pretrained_cfg_overlay=dict(file=str(file)))


def test_evaluate_and_erf_read_an_export_folder(exported, tmp_path):
    from helpers import write_image

    from pretrain.analysis.erf import build as erf_model
    from pretrain.evaluate import main as evaluate
    from shards.build import BuildOptions, build
    from shards.inputs import Item
    file, _, x, _ = exported
    items = [Item(str(write_image(tmp_path / f'{i}.jpg', i, size=(48, 40))), f'{i:03d}', {'pets': i % 2})
             for i in range(6)]
    build(items, BuildOptions(str(tmp_path / 'shards'), 'val', samples_per_shard=3, progress=False))
    result = evaluate(['--checkpoint', str(file.parent), '--data', f'val={tmp_path / "shards"}', '--workers', '0'])
    assert result['val/pets/images'] == 6 and result['size'] == 40
    backbone = erf_model('replknet_31b', str(file.parent))
    assert backbone(x).shape == (3, 32)


def test_evaluate_refuses_model_arguments_that_a_run_folder_would_override(tmp_path):
    from pretrain.evaluate import main as evaluate
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'config.json').write_text(json.dumps({'tasks': {'a': {'num_classes': 2}}}))
    with pytest.raises(SystemExit, match='a run folder names its own model and tasks'):
        evaluate(['--checkpoint', str(tmp_path / 'run'), '--data', 'v=/x', '--model', 'replknet_xl', '--task', 'a=2'])


@pytest.mark.parametrize('extra,said', [
    (['--model', 'replknet_13'], '--model replknet_13: the export is a replknet_31b'),
    (['--task', 'pets=3'], "--task pets=3: the export's head (pets) has 2 classes; use --task pets=2"),
    (['--model-kwargs', '{"depths": [2, 2]}'], '--model-kwargs: an export records its own model arguments'),
])
def test_evaluate_refuses_arguments_an_export_contradicts_instead_of_ignoring_them(exported, extra, said):
    from pretrain.evaluate import main as evaluate
    file = exported[0]
    with pytest.raises(SystemExit, match=said.replace('(', r'\(').replace(')', r'\)')):
        evaluate(['--checkpoint', str(file), '--data', 'val=/nowhere', '--workers', '0', *extra])


def test_an_export_of_another_architecture_names_its_own_classifier_and_loads_with_a_new_head(tmp_path):
    """MobileNet V2 (Appendix E) keeps its head as ``classifier`` and its stem as ``conv_stem``: the
    export's pretrained_cfg says so, so timm can drop the head for another class count."""
    from helpers import tiny_pets_config
    cfg = tiny_pets_config(tmp_path, {'kernel_size': 5}, 'model.name="mobilenetv2_lk"')
    meta = write_export(cfg, 'pets', trained_looking_state(cfg), str(tmp_path / 'export'), source={})
    assert (meta['pretrained_cfg']['classifier'], meta['pretrained_cfg']['first_conv']) == ('classifier', 'conv_stem')
    assert meta['pretrained_cfg']['pool_size'] == [2, 2]
    from safetensors.torch import load_file
    file = tmp_path / 'export' / 'model.safetensors'
    model = timm.create_model('mobilenetv2_lk', pretrained=True, num_classes=5, kernel_size=5,
                              pretrained_cfg_overlay=dict(file=str(file)))   # was: KeyError 'head.fc.weight'
    assert model.classifier.out_features == 5
    assert torch.equal(model.conv_stem.weight, load_file(str(file))['conv_stem.weight'])
