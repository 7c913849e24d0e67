"""Run configs (strict), the multi-task loss, the schedule and mixup: pure pieces of pretraining."""
import json
import math

import numpy as np
import pytest
import torch

from pretrain.config import ConfigError, check_launch, load_config
from pretrain.loss import dense_targets, multitask_loss, smooth_human, task_loss
from pretrain.mixup import MultiTaskMixup
from pretrain.schedule import build_scheduler, lr_factor

TINY = 'configs/tiny_cpu.json'


def write(tmp_path, doc):
    path = tmp_path / 'c.json'
    path.write_text(json.dumps(doc))
    return str(path)


def test_shipped_configs_load(tmp_path):
    cfg = load_config(TINY)
    assert cfg.tasks['stripes'].weight == 0.5 and cfg.deepspeed['zero_optimization']['stage'] == 2
    xl = load_config('configs/xl_megadata.json')
    assert xl.model.name == 'replknet_xl' and set(xl.tasks) == {'in1k', 'in22k', 'places365'}
    assert (xl.optim.lr, xl.optim.weight_decay, xl.model.drop_path_rate) == (1.5e-3, 0.05, 0.2)
    assert xl.train.mixup == 0 and xl.train.cutmix == 0 and xl.train.precision == 'bf16'
    assert xl.deepspeed['train_batch_size'] == 2048 and xl.schedule.epochs == 15
    assert xl.data.transform.auto_augment == 'rand-m9-mstd0.5-inc1'


@pytest.mark.parametrize('patch, message', [
    ({'optim': {'lrr': 1}}, r"optim: unknown key\(s\) \['lrr'\]"),
    ({'optim': {'lr': 'fast'}}, r"optim.lr='fast': input should be a valid number"),
    ({'train': {'precision': 'fp8'}}, r"train.precision='fp8': input should be 'fp32' or 'bf16'"),
    ({'tasks': {'a': {'num_classes': 0}}}, r'tasks.a.num_classes'),
    ({'tasks': {'a': {}}}, r'tasks.a.num_classes: required'),
    ({'checkpoint': {'keep': 1}}, r'checkpoint.keep'),
    ({'deepspeed': {'scheduler': {}}}, r'deepspeed.scheduler'),
    ({'bogus': 1}, r"unknown key\(s\) \['bogus'\]"),
])
def test_config_errors_name_the_field(tmp_path, patch, message):
    doc = json.loads(open(TINY).read())
    for section, value in patch.items():
        doc[section] = {**doc.get(section, {}), **value} if section in doc and section != 'tasks' else value
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, doc))


def test_overrides_and_launch_consistency(tmp_path):
    cfg = load_config(TINY, ['optim.lr=1e-4', 'train.precision=bf16', 'deepspeed.train_batch_size=48'])
    assert cfg.optim.lr == 1e-4 and cfg.train.precision == 'bf16'
    with pytest.raises(ConfigError, match=r'train_batch_size=48 but train.micro_batch 8 x train.grad_accum 1 x '
                                          r'world size 2 = 16'):
        check_launch(cfg, 2)
    check_launch(load_config(TINY, ['deepspeed.train_batch_size=16']), 2)
    with pytest.raises(ConfigError, match='override'):
        load_config(TINY, ['optim.lr'])


def test_loss_counts_only_labeled_samples_and_smooths_only_human_labels():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 9.0]], requires_grad=True)
    idx = torch.tensor([[0, 0], [1, 2], [0, 0]])
    prob = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 0.0]])
    target = dense_targets(idx, prob, 3)
    assert torch.equal(target[1], torch.tensor([0.0, 0.5, 0.5]))
    mask, human = torch.tensor([True, True, False]), torch.tensor([True, False, False])
    smoothed = smooth_human(target, human, 0.3)
    assert torch.allclose(smoothed[0], torch.tensor([0.8, 0.1, 0.1])) and torch.equal(smoothed[1], target[1])
    loss = task_loss(logits, smoothed, mask)
    logp = torch.log_softmax(logits, -1)
    expected = (-(smoothed[0] * logp[0]).sum() - (smoothed[1] * logp[1]).sum()) / 2
    assert torch.allclose(loss, expected)
    total, per_task = multitask_loss({'a': logits, 'b': logits}, {
        'a': dict(target=target, mask=mask, human=human),
        'b': dict(target=target, mask=torch.zeros(3, dtype=torch.bool), human=human)},
        weights={'a': 1.0, 'b': 0.5}, smoothing={'a': 0.3, 'b': 0.0})
    assert per_task['b'].item() == 0.0 and torch.allclose(total, expected)
    total.backward()
    assert logits.grad is not None


def test_schedule_warms_up_then_decays_and_keeps_group_ratios():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1) and lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([dict(params=[p1], lr=1.0), dict(params=[p2], lr=0.4)], lr=1.0)
    sched = build_scheduler(opt, 20, 5)
    for _ in range(12):
        opt.step()
        sched.step()
        lrs = [g['lr'] for g in opt.param_groups]
        assert lrs[1] == pytest.approx(0.4 * lrs[0])


def test_mixup_mixes_images_and_targets_and_keeps_masks_honest():
    mix = MultiTaskMixup(mixup_alpha=0.8, cutmix_alpha=0.0)
    images = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    targets = {'t': dict(target=target, mask=torch.tensor([True, False]), human=torch.tensor([True, True]))}
    np.random.seed(3)
    out, mixed = mix(images, targets, np.random)
    lam = 1 - out[0, 0, 0, 0].item()
    assert 0 < lam < 1 and torch.allclose(mixed['t']['target'][0], torch.tensor([lam, 1 - lam]))
    assert mixed['t']['mask'].tolist() == [False, False]  # a mix with an unlabeled sample has no label


@pytest.mark.parametrize('name', ['xl_finetune_in1k_320', 'replknet31b_in1k_finetune_384',
                                  'replknet31b_in22k_ft_in1k_224', 'replknet31b_in22k_ft_in1k_384',
                                  'replknet31l_in22k_ft_in1k_384'])
def test_finetune_configs_carry_the_appendix_numbers(name):
    cfg = load_config(f'configs/{name}.json')
    assert cfg.init is not None and cfg.train.mixup == 0 and cfg.train.cutmix == 0
    assert cfg.schedule.epochs == 30 and cfg.train.ema_decay == 0.9999
    if name.startswith('xl'):
        assert (cfg.optim.lr, cfg.optim.layer_decay, cfg.data.transform.image_size) == (1e-4, 0.4, 320)
        assert cfg.data.transform.mean == (0.5, 0.5, 0.5) and cfg.data.transform.crop_pct == pytest.approx(320 / 365)
    else:
        assert cfg.optim.lr == 4e-4
    total = cfg.deepspeed['train_batch_size']
    assert total == {'xl_finetune_in1k_320': 512, 'replknet31b_in1k_finetune_384': 1024,
                     'replknet31b_in22k_ft_in1k_224': 512, 'replknet31b_in22k_ft_in1k_384': 512,
                     'replknet31l_in22k_ft_in1k_384': 512}[name]


@pytest.mark.parametrize('override, message', [
    ('checkpoint.every_steps=0', r'checkpoint\.every_steps=0: input should be greater than or equal to 1'),
    ('log.every_steps=0', r'log\.every_steps=0: input should be greater'),
    ('schedule.epochs=-1', r'schedule\.epochs=-1: input should be greater than 0'),
    ('optim.lr=-0.001', r'optim\.lr=-0\.001: input should be greater than 0'),
    ('optim.weight_decay=-1', r'optim\.weight_decay=-1: input should be greater than or equal to 0'),
    ('data.transform.image_size=0', r'data\.transform\.image_size=0: input should be greater than or equal to 8'),
    ('schedule.max_steps=0', r'schedule\.max_steps=0: input should be greater'),
    ('data.transform.scale=[0.5, 0.2]', r'data\.transform: scale=\[0\.5, 0\.2\]: need min <= max'),
    ('tasks.shape.label_smoothing=1.5', r'tasks\.shape\.label_smoothing=1\.5'),
])
def test_out_of_range_values_are_config_errors_naming_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config('configs/tiny_cpu.json', [override])


def test_a_typo_in_the_deepspeed_section_is_caught():
    from pretrain.ds_config import check_deepspeed_keys
    with pytest.raises(ConfigError, match="deepspeed.zero_optimisation: not a DeepSpeed key; did you mean 'zero_optimization'"):
        check_deepspeed_keys({'zero_optimisation': {'stage': 2}})
    check_deepspeed_keys(load_config('configs/xl_megadata.json').deepspeed)


def test_a_transform_fault_stops_the_stream_naming_it_instead_of_counting_corrupt_samples(tmp_path):
    from pretrain.apps.tiny_data import make
    from shards.loader import ShardStream
    from shards.stream import SourceSpec, StreamConfig
    data = make(str(tmp_path / 'd'), per_source=8)

    def broken(image):
        raise ValueError('size must be positive')
    stream = ShardStream([SourceSpec('lab', data['shards'])], StreamConfig(few_shards='share'),
                         broken, 0, 1, 0, batch_size=2)
    with pytest.raises(RuntimeError, match='the transform failed on lab/.*not bad data'):
        next(iter(stream))
