"""Every config in configs/ loads strictly and its model takes one training step at a tiny size."""
import json
from pathlib import Path

import pytest
import torch

from labeling.config import load_job_config
from pretrain.config import load_config, task_classes
from pretrain.engine import build_model, build_optimizer, optimizer_groups
from pretrain.loss import multitask_loss

CONFIGS = sorted(Path(__file__).resolve().parents[2].glob('configs/*.json'))


def test_the_appendix_recipes_are_all_here():
    names = {p.stem for p in CONFIGS}
    assert {'mobilenetv2_k13_in1k', 'mobilenetv2_k9_in1k', 'mobilenetv2_k3_dilated4_in1k',
            'mobilenetv2_k3_dilated6_in1k', 'replknet31b_in1k_120ep', 'replknet31l_in1k_120ep',
            'replknet31b_in1k_300ep', 'replknet31b_in1k_finetune_384', 'replknet31b_in22k_pretrain',
            'replknet31l_in22k_pretrain', 'replknet31b_in22k_ft_in1k_224', 'replknet31b_in22k_ft_in1k_384',
            'replknet31l_in22k_ft_in1k_384', 'xl_megadata', 'xl_finetune_in1k_320', 'convnext_tiny_k31_in1k',
            'convnext_small_k31_in1k'} <= names


@pytest.mark.parametrize('path', CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_and_opens_with_its_launch_command(path):
    doc = json.loads(path.read_text())
    assert doc['launch'] and list(doc)[0] == 'launch'  # every config opens with its launch command
    (load_job_config if path.stem.startswith('label_') else load_config)(str(path))


@pytest.mark.slow  # full-size models: the lower-bounds tier checks loading only
@pytest.mark.parametrize('path', [p for p in CONFIGS if not p.stem.startswith('label_')],
                         ids=[p.stem for p in CONFIGS if not p.stem.startswith('label_')])
def test_config_model_takes_a_step(path):
    cfg = load_config(str(path))
    torch.manual_seed(0)
    model = build_model(cfg.model, task_classes(cfg.tasks))
    opt = build_optimizer(cfg.optim, optimizer_groups(model, cfg.optim))  # the trainer's own groups
    x = torch.randn(2, 3, 64, 64)
    targets = {t: dict(target=torch.softmax(torch.randn(2, c.num_classes), -1), mask=torch.ones(2, dtype=torch.bool),
                       human=torch.ones(2, dtype=torch.bool)) for t, c in cfg.tasks.items()}
    loss, _ = multitask_loss(model(x), targets, {t: c.weight for t, c in cfg.tasks.items()},
                             {t: c.label_smoothing for t, c in cfg.tasks.items()})
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
