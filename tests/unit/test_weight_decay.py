"""Which parameters take weight decay is one rule (pretrain.weight_decay), timm's: none on norms, biases
and what the model names in no_weight_decay() (a timm backbone's too, under MultiHead), the same with
and without layer decay, in groups whose order and count a resume can rely on."""
import timm
from timm.optim import param_groups_weight_decay

import pretrain.models  # noqa: F401
from pretrain.engine import MultiHead
from pretrain.layer_decay import layer_decay_groups
from pretrain.weight_decay import param_groups

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
