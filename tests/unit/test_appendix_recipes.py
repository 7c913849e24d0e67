"""Every number of every paper recipe config is the appendix's (held here against a table written
from ../shared/reference/replknet_appendix.txt, not copied from the configs) or is listed in the
config's description under "Our choices (not in the appendix)"."""
import re

import pytest

from pretrain.config import load_config

# Appendix A, "ImageNet-1K": RepLKNet models of Sec. 4.2.
IN1K = {'optim': 'adamw', 'momentum': 0.9, 'weight_decay': 0.05, 'lr': 4e-3, 'warmup': 10, 'epochs': 120,
        'batch': 32 * 64, 'auto_augment': 'rand-m9-mstd0.5-inc1', 'label_smoothing': 0.1, 'mixup': 0.8,
        'cutmix': 1.0, 're_prob': 0.25, 'drop_path': 0.3, 'size': 224, 'ema': None, 'layer_decay': None,
        'clip': None}
# "... the same RandAugment as above but no CutMix nor mixup", EMA momentum 1e-4 = decay 0.9999
FINETUNE = dict(IN1K, lr=4e-4, epochs=30, ema=0.9999, mixup=0.0, cutmix=0.0)
# Appendix A, MobileNet V2 (Sec. 3): SGD momentum 0.9, 8 GPUs x 32, weight decay 4e-5, 5 warm-up
# epochs, lr 0.1, cosine over 100 epochs, random cropping and flipping only.
MOBILENET = {'optim': 'sgd', 'momentum': 0.9, 'nesterov': False, 'batch': 8 * 32, 'size': 224, 'weight_decay': 4e-5,
             'warmup': 5, 'lr': 0.1, 'epochs': 100, 'auto_augment': None, 'mixup': 0.0, 'cutmix': 0.0,
             're_prob': 0.0, 'drop_path': 0.0, 'label_smoothing': 0.0, 'ema': None, 'layer_decay': None, 'clip': None}
XL = dict(IN1K, epochs=15, mixup=0.0, cutmix=0.0, drop_path=0.2, lr=1.5e-3, batch=2048)   # "RepLKNet-XL and ..."
APPENDIX = {
    'replknet31b_in1k_120ep': IN1K,
    'replknet31l_in1k_120ep': IN1K,
    'replknet31b_in1k_300ep': dict(IN1K, epochs=300, drop_path=0.5),                          # "Sec. 4.3"
    'replknet31b_in1k_finetune_384': dict(FINETUNE, batch=32 * 32, warmup=1, size=384),
    'replknet31b_in22k_pretrain': dict(IN1K, batch=128 * 32, epochs=90, drop_path=0.1),       # "ImageNet-22K ..."
    'replknet31l_in22k_pretrain': dict(IN1K, batch=128 * 32, epochs=90, drop_path=0.1),
    'replknet31b_in22k_ft_in1k_224': dict(FINETUNE, batch=16 * 32, drop_path=0.2),
    'replknet31b_in22k_ft_in1k_384': dict(FINETUNE, batch=32 * 16, drop_path=0.3, size=384),
    'replknet31l_in22k_ft_in1k_384': dict(FINETUNE, batch=32 * 16, drop_path=0.3, size=384),
    'convnext_tiny_k31_in1k': IN1K,                                                            # appendix D
    'convnext_small_k31_in1k': IN1K,
    'mobilenetv2_k9_in1k': MOBILENET, 'mobilenetv2_k13_in1k': MOBILENET,                       # appendix E
    'mobilenetv2_k3_dilated4_in1k': MOBILENET, 'mobilenetv2_k3_dilated6_in1k': MOBILENET,
    'xl_megadata': XL,
    # "320x320 for 30 epochs following BeiT, except for a higher learning rate of 1e-4 and
    # stage-wise learning rate decay of 0.4": the rest is BEiT's or ours, listed as choices
    'xl_finetune_in1k_320': {'size': 320, 'epochs': 30, 'lr': 1e-4, 'layer_decay': 0.4},
}
# What the appendix does not give, and the words the config's "Our choices" sentence must hold.
CHOICES = {
    'xl_megadata': {'warmup': '1 warm-up epoch', 'clip': 'gradient clipping 5.0'},
    'replknet31b_in1k_finetune_384': {'drop_path': "drop path kept at the 300-epoch run's 0.5",
                                      'clip': 'gradient clipping 5.0'},
    'replknet31b_in22k_ft_in1k_224': {'warmup': '1 warm-up epoch', 'clip': 'gradient clipping 5.0'},
    'replknet31b_in22k_ft_in1k_384': {'warmup': '1 warm-up epoch', 'clip': 'gradient clipping 5.0'},
    'replknet31l_in22k_ft_in1k_384': {'warmup': '1 warm-up epoch', 'clip': 'gradient clipping 5.0'},
    'xl_finetune_in1k_320': {'drop_path': 'drop path 0.2', 'warmup': '1 warm-up epoch', 'batch': 'total batch 512',
                             'ema': 'EMA 0.9999', 're_prob': 'random erasing 0.25', 'mixup': 'no mixup',
                             'cutmix': 'CutMix', 'optim': 'AdamW', 'momentum': 'AdamW', 'weight_decay': 'weight decay 0.05',
                             'auto_augment': 'RandAugment', 'label_smoothing': 'label smoothing 0.1',
                             'clip': 'gradient clipping 5.0'},
}


def numbers(cfg) -> dict:
    """The recipe's numbers, by the names the table uses."""
    o, aug = cfg.optim, cfg.data.transform
    out = {'optim': o.name, 'momentum': o.momentum if o.name == 'sgd' else o.betas[0], 'weight_decay': o.weight_decay,
           'lr': o.lr, 'layer_decay': o.layer_decay, 'warmup': cfg.schedule.warmup_epochs, 'epochs': cfg.schedule.epochs,
           'batch': cfg.deepspeed.get('train_batch_size'), 'mixup': cfg.train.mixup, 'cutmix': cfg.train.cutmix,
           'ema': cfg.train.ema_decay, 'drop_path': cfg.model.drop_path_rate, 'auto_augment': aug.auto_augment,
           're_prob': aug.re_prob, 'size': aug.image_size, 'clip': cfg.deepspeed.get('gradient_clipping')}
    smoothing = {t.label_smoothing for t in cfg.tasks.values()}
    assert len(smoothing) == 1, 'one label smoothing for every task'
    out['label_smoothing'] = smoothing.pop()
    if o.name == 'sgd':
        out['nesterov'] = o.nesterov
    return out


def our_choices(description: str) -> str:
    found = re.search(r'Our choices \(not in the appendix\): ([^.]*(?:\.\d[^.]*)*)\.', description)
    return found.group(1) if found else ''


@pytest.mark.parametrize('name', sorted(APPENDIX))
def test_every_recipe_number_is_the_appendixs_or_a_stated_choice(name):
    cfg = load_config(f'configs/{name}.json', [])
    stated = our_choices(cfg.description)
    for field, value in numbers(cfg).items():
        if field in CHOICES.get(name, {}):
            assert CHOICES[name][field] in stated, f'{name}: {field}={value} is ours, not said so: {stated!r}'
        else:
            assert field in APPENDIX[name], f'{name}: {field}={value} is neither the appendix\'s nor a stated choice'
            assert value == pytest.approx(APPENDIX[name][field]) if isinstance(value, float) else \
                value == APPENDIX[name][field], f'{name}: {field} is {value}, the appendix says {APPENDIX[name][field]}'


def test_the_table_covers_every_paper_recipe_config():
    from pathlib import Path
    recipes = {p.stem for p in Path('configs').glob('*.json')} - {'tiny_cpu'} - {p.stem for p in Path('configs').glob('label_*')}
    assert recipes == set(APPENDIX)


def test_the_mobilenet_recipe_steps_with_plain_momentum_sgd_and_nesterov_on_request():
    import torch

    from pretrain.engine import build_optimizer
    cfg = load_config('configs/mobilenetv2_k13_in1k.json', [])
    params = [{'params': [torch.nn.Parameter(torch.zeros(2))]}]
    sgd = build_optimizer(cfg.optim, params)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults['momentum'] == 0.9 and not sgd.defaults['nesterov']
    nesterov = load_config('configs/mobilenetv2_k13_in1k.json', ['optim.nesterov=true']).optim
    assert build_optimizer(nesterov, params).defaults['nesterov']
