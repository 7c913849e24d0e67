"""Stage-wise lr decay: groups from group_matcher, scales, and ratios that hold through the schedule."""
import pytest
import timm
import torch

import pretrain.models  # noqa: F401
from pretrain.layer_decay import apply_lr_scale, describe, layer_decay_groups
from pretrain.schedule import build_scheduler

TINY = dict(kernel_sizes=(7, 5, 5, 3), depths=(1, 1, 2, 1), channels=(8, 16, 24, 32), small_kernel=3)


def model():
    return timm.create_model('replknet_xl', num_classes={'in1k': 10}, **dict(TINY, small_kernel=None, dw_ratio=1.5))


@pytest.mark.parametrize('coarse, layers', [(True, 6), (False, 1 + 2 * 5 + 1)])
def test_every_trainable_parameter_is_in_exactly_one_group(coarse, layers):
    m = model()
    groups = layer_decay_groups(m, 0.05, 0.4, coarse=coarse)
    ids = [id(p) for g in groups for p in g['params']]
    assert len(ids) == len(set(ids)) == sum(1 for p in m.parameters() if p.requires_grad)
    assert len({g['layer_id'] for g in groups}) == layers
    for g in groups:  # no weight decay on norms and biases
        assert (g['weight_decay'] == 0) == all(p.ndim <= 1 for p in g['params'])


def test_stage_scales_are_decay_to_the_distance_from_the_head():
    groups = layer_decay_groups(model(), 0.05, 0.4, coarse=True)
    scales = {g['layer_id']: g['lr_scale'] for g in groups}
    assert scales == pytest.approx({0: 0.4 ** 5, 1: 0.4 ** 4, 2: 0.4 ** 3, 3: 0.4 ** 2, 4: 0.4, 5: 1.0})


def test_group_lr_ratios_hold_at_every_step_of_the_schedule(capsys):
    groups = apply_lr_scale(layer_decay_groups(model(), 0.05, 0.4, coarse=True), 1e-4)
    opt = torch.optim.AdamW(groups, lr=1e-4)
    sched = build_scheduler(opt, total_steps=30, warmup_steps=3)
    ratios = [g['lr'] / groups[-1]['lr'] for g in opt.param_groups]
    snapshots = {}
    for step in range(30):
        lrs = [g['lr'] for g in opt.param_groups]
        assert [lr / lrs[-1] for lr in lrs] == pytest.approx(ratios)
        if step in (0, 10, 25):
            snapshots[step] = describe(opt.param_groups)
        opt.step()
        sched.step()
    for step, lrs in snapshots.items():  # shown in the issue note
        print(f'step {step}: ' + ', '.join(f'{k}={v:.3e}' for k, v in lrs.items() if k.endswith('_decay')
                                            and not k.endswith('no_decay')))
    assert snapshots[10]['head_decay'] > snapshots[25]['head_decay']
