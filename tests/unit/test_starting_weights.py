"""Fine-tuning's starting weights from every accepted form, with heads kept, made or dropped."""
import pytest
import torch
from safetensors.torch import save_file
from test_official_checkpoint import CFG, NUM_CLASSES, official_state_dict

from pretrain.models import RepLKNet
from pretrain.weights import load_initial_weights

TINY = {k: v for k, v in CFG.items() if k != 'dw_ratio'}


def test_official_release_feeds_the_matching_task_head(tmp_path):
    sd = official_state_dict(**CFG)
    torch.save({'model': sd}, tmp_path / 'official.pth')
    model = RepLKNet(num_classes={'in1k': NUM_CLASSES, 'new_task': 3}, **TINY)
    report = load_initial_weights(model, str(tmp_path / 'official.pth'), {'in1k': NUM_CLASSES, 'new_task': 3})
    assert torch.equal(model.head.fc['in1k'].weight, sd['head.weight'])
    assert torch.equal(model.stages[1].downsample[0].conv.weight, sd['transitions.0.0.conv.weight'])
    assert report['new'] == ['head.fc.new_task.bias', 'head.fc.new_task.weight'] and report['dropped'] == []


def test_safetensors_with_other_task_heads_drops_them(tmp_path):
    source = RepLKNet(num_classes={'in1k': 5, 'in22k': 7}, **TINY)
    save_file(source.state_dict(), str(tmp_path / 'pre.safetensors'))
    model = RepLKNet(num_classes={'in1k': 5}, **TINY)
    report = load_initial_weights(model, str(tmp_path / 'pre.safetensors'), {'in1k': 5})
    assert report['dropped'] == ['head.fc.in22k.bias', 'head.fc.in22k.weight'] and report['new'] == []
    assert torch.equal(model.head.fc['in1k'].weight, source.head.fc['in1k'].weight)


def test_a_backbone_that_does_not_fit_is_an_error_naming_the_keys(tmp_path):
    other = RepLKNet(num_classes={'in1k': 5}, **dict(TINY, channels=(8, 24)))
    torch.save(other.state_dict(), tmp_path / 'other.pt')
    target = RepLKNet(num_classes={'in1k': 5}, **TINY)
    with pytest.raises(KeyError, match='backbone does not match'):
        load_initial_weights(target, str(tmp_path / 'other.pt'), {'in1k': 5})
    with pytest.raises(FileNotFoundError, match='not found'):
        load_initial_weights(target, str(tmp_path / 'missing.pt'), {'in1k': 5})
