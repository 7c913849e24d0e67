"""Which parameters take weight decay is one rule (pretrain.weight_decay), timm's: none on norms, biases
and what the model names in no_weight_decay() (a timm backbone's too, under MultiHead), the same with
and without layer decay, in groups whose order and count a resume can rely on."""
import pytest
import timm
from timm.optim import param_groups_weight_decay

import pretrain.models  # noqa: F401
from pretrain.config import OptimConfig
from pretrain.engine import MultiHead, optimizer_groups
from pretrain.layer_decay import layer_decay_groups
from pretrain.weight_decay import EXEMPTIONS_SINCE, check_groups_fit, group_sizes, param_groups

TINY = dict(kernel_sizes=(7, 5, 5, 3), depths=(1, 1, 2, 1), channels=(8, 16, 24, 32), small_kernel=3)


def replknet():
    return timm.create_model('replknet_31b', num_classes={'in1k': 10, 'places': 5}, **TINY)


def vit_with_heads():
    """A timm backbone with its own no_weight_decay() (position embedding, class token), wrapped as the trainer does."""
    backbone = timm.create_model('vit_tiny_patch16_224', num_classes=0, depth=1, img_size=32)
    return MultiHead(backbone, {'in1k': 10})


def decayed(groups):
    return {id(p) for g in groups if g['weight_decay'] > 0 for p in g['params']}


def test_the_parameters_decayed_are_exactly_those_timms_rule_decays():
    for model in (replknet(), vit_with_heads()):
        exempt = model.no_weight_decay() if hasattr(model, 'no_weight_decay') else ()   # as timm's create_optimizer reads it
        assert decayed(param_groups(model, 0.05)) == decayed(param_groups_weight_decay(model, 0.05, no_weight_decay_list=exempt))


def test_a_timm_backbones_own_exemptions_hold_under_the_task_heads():
    model = vit_with_heads()
    names = {id(p): n for n, p in model.named_parameters()}
    not_decayed = {names[id(p)] for p in param_groups(model, 0.05)[1]['params']}
    assert {'backbone.pos_embed', 'backbone.cls_token'} <= not_decayed
    assert 'heads.in1k.weight' not in not_decayed and 'heads.in1k.bias' in not_decayed


def test_layer_decay_decays_the_same_parameters_as_the_plain_groups():
    model = replknet()
    for coarse in (True, False):
        assert decayed(layer_decay_groups(model, 0.05, 0.5, coarse=coarse)) == decayed(param_groups(model, 0.05))


def test_the_plain_groups_are_decayed_then_not_even_with_no_weight_decay():
    # a resumed optimizer's state is matched to its groups by position and size
    model = replknet()
    groups = param_groups(model, 0.0)
    assert [g['weight_decay'] for g in groups] == [0.0, 0.0]
    assert all(p.ndim > 1 for p in groups[0]['params']) and all(p.ndim <= 1 for p in groups[1]['params'])
    assert sum(len(g['params']) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)



def test_a_checkpoint_of_a_vit_run_from_before_the_exemptions_is_refused_naming_why():
    """Its optimizer state was grouped by the old rule (pos_embed and cls_token decayed) and records no
    sizes: resuming it under the new groups would load state into groups it does not fit. (Layer decay
    needs a group_matcher, which a timm backbone under task heads does not offer.)"""
    model, optim = vit_with_heads(), OptimConfig()
    now, legacy = group_sizes(optimizer_groups(model, optim)), group_sizes(optimizer_groups(model, optim, exempt=()))
    assert now != legacy and sum(now) == sum(legacy)
    before, after = EXEMPTIONS_SINCE - 3600, EXEMPTIONS_SINCE + 3600
    with pytest.raises(ValueError, match=r'step-8: its optimizer state holds groups of .* no_weight_decay\(\) '
                                         r'took weight decay when it was written \(before 2026-12-07\)'):
        check_groups_fit(None, now, legacy, before, 'step-8')
    check_groups_fit(None, now, legacy, after, 'step-8')   # written by the version with the exemptions
    check_groups_fit(now, now, legacy, before, 'step-8')   # its own record decides
    with pytest.raises(ValueError, match='which parameters take weight decay changed'):
        check_groups_fit(legacy, now, legacy, after, 'step-8')


def test_a_replknet_run_from_before_the_exemptions_still_resumes():
    model, optim = replknet(), OptimConfig()
    now = group_sizes(optimizer_groups(model, optim))
    assert now == group_sizes(optimizer_groups(model, optim, exempt=()))
    check_groups_fit(None, now, now, EXEMPTIONS_SINCE - 3600, 'step-8')
