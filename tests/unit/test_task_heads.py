"""A classifier per task has one owner (pretrain.models.task_heads): RepLKNet holds it as ``head.fc``,
any other timm backbone gets it as ``heads`` (MultiHead); checkpoint keys stay ``head.fc.{task}.*`` and
``backbone.*`` + ``heads.{task}.*``, which export reads back into timm's own single-head model."""
import json

import pytest
import torch

from pretrain.config import load_config, task_classes
from pretrain.engine import build_model
from pretrain.export import single_task_model
from pretrain.models import MultiHead, RepLKNet, TaskLinears

REPLKNET = ['model.kwargs={"kernel_sizes": [7, 5], "depths": [1, 1], "channels": [16, 32], "small_kernel": 3}']
VIT = ['model.name="vit_tiny_patch16_224"', f'model.kwargs={json.dumps(dict(depth=1, img_size=32))}']
TASKS = 'tasks={"pets": {"num_classes": 2}, "other": {"num_classes": 3}}'


def config(model):
    return load_config('configs/tiny_cpu.json', [*model, TASKS])


def test_replknet_and_a_wrapped_timm_backbone_hold_the_same_per_task_classifier_under_their_own_keys():
    replknet = build_model(config(REPLKNET).model, {'pets': 2, 'other': 3})
    vit = build_model(config(VIT).model, {'pets': 2, 'other': 3})
    assert isinstance(replknet, RepLKNet) and isinstance(vit, MultiHead)
    assert isinstance(replknet.head.fc, TaskLinears) and isinstance(vit.heads, TaskLinears)
    assert [k for k in replknet.state_dict() if k.startswith('head.fc.')] == [
        'head.fc.pets.weight', 'head.fc.pets.bias', 'head.fc.other.weight', 'head.fc.other.bias']
    assert [k for k in vit.state_dict() if not k.startswith('backbone.')] == [
        'heads.pets.weight', 'heads.pets.bias', 'heads.other.weight', 'heads.other.bias']
    out = vit(torch.randn(2, 3, 32, 32))
    assert list(out) == ['pets', 'other'] and out['other'].shape == (2, 3)


@pytest.mark.parametrize('model', [REPLKNET, VIT], ids=['replknet', 'timm-backbone'])
def test_a_model_with_no_task_is_refused_on_either_path(model):
    with pytest.raises(ValueError, match='name at least one task'):
        build_model(config(model).model, {})


def test_a_wrapped_backbones_task_exports_as_timms_own_model_with_that_tasks_classifier():
    cfg = config(VIT)
    torch.manual_seed(0)
    model = build_model(cfg.model, task_classes(cfg.tasks)).eval()
    exported, n = single_task_model(cfg, 'other', model.state_dict())   # strict: every key found its place
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert n == 3 and torch.allclose(exported(x), model(x)['other'])
