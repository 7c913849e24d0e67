"""Pretrain -> fine-tune at a larger size with stage-wise decay and EMA -> evaluate -> export -> timm."""
import json
import sys

import pytest
import timm
import torch
from test_pretrain_run import overrides, tiny, torchrun  # noqa: F401, F811  (tiny: the shared fixture)

import pretrain.models  # noqa: F401  (registers RepLKNet with timm)
from pretrain.models.checkpoint import export_model_args

pytestmark = pytest.mark.multiprocess


def finetune_args(tiny, run_dir, init, *extra):
    return overrides(tiny, run_dir, f'init.checkpoint={init}', 'optim.layer_decay=0.4', 'optim.lr=0.001',
                     'train.ema_decay=0.9', 'data.transform.image_size=48', 'tasks={"shape": {"num_classes": 4}}',
                     'deepspeed.zero_optimization.stage=1', *extra)


def test_pretrain_finetune_evaluate_export_and_load_through_timm(tiny, tmp_path, free_port, launch):
    pre, ft, out = tmp_path / 'pre', tmp_path / 'ft', tmp_path / 'exported'
    launch(torchrun(free_port, *overrides(tiny, pre, 'schedule.max_steps=4')))
    proc = launch(['torchrun', '--nproc_per_node', '2', '--master_port', str(free_port), 'pretrain/finetune.py',
                   '--config', 'configs/tiny_cpu.json', *finetune_args(tiny, ft, pre, 'schedule.max_steps=6')])
    assert "dropped: ['head.fc.stripes.bias', 'head.fc.stripes.weight']" in proc.stdout
    assert 'new: none' in proc.stdout  # the shape head came from pretraining
    assert proc.stdout.count('starting weights from') == 1  # rank 0, once
    logged = [json.loads(line) for line in (ft / 'metrics.jsonl').read_text().splitlines()]
    row = next(r for r in logged if 'lr/stem' in r)
    assert row['lr'] == pytest.approx(row['lr/head']) and row['lr/stem'] == pytest.approx(row['lr'] * 0.4 ** 3)
    result = json.loads((ft / 'result.json').read_text())
    assert 'val/shape/top1' in result and 'val_ema/shape/top1' in result  # EMA evaluated beside the raw weights

    ev = launch([sys.executable, '-m', 'pretrain.evaluate', '--checkpoint', str(ft), '--data', f'val={tiny["shards"]}',
                 '--workers', '0'])
    evaluated = json.loads(ev.stdout.strip().splitlines()[-1])
    assert evaluated['val/shape/images'] == 32 and evaluated['size'] == 48
    assert evaluated['precision'] == 'fp32' and evaluated['channels_last'] is False   # the run's own (tiny_cpu)
    assert evaluated['val/shape/top1'] == pytest.approx(result['val/shape/top1'])

    launch([sys.executable, '-m', 'pretrain.export', str(ft), '--task', 'shape', '--out', str(out)])
    meta = json.loads((out / 'config.json').read_text())
    assert meta['form'] == 'fused' and meta['max_relative_error'] < 1e-4
    assert meta['precision'] == 'fp32' and meta['channels_last'] is False
    assert meta['source']['run'] == ft.name and str(ft.parent) not in (out / 'config.json').read_text()   # publishable
    kwargs = export_model_args(meta)   # timm's model_args: the shape and the class count
    assert kwargs['num_classes'] == 4 and (out / 'README.md').is_file()
    loaded = timm.create_model('replknet_31b', pretrained=True, **kwargs,
                               pretrained_cfg_overlay=dict(file=str(out / 'model.safetensors'), num_classes=4)).eval()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.modules())
    from pretrain.config import saved_run_config
    from pretrain.export import single_task_model
    from pretrain.weights import consolidate_run
    cfg = saved_run_config(ft / 'config.json')
    trained, _ = single_task_model(cfg, 'shape', consolidate_run(str(ft)))
    x = torch.randn(4, 3, 48, 48)
    with torch.no_grad():
        a, b = trained(x), loaded(x)
    assert ((a - b).abs().max() / a.abs().max()).item() < 1e-4
    assert torch.equal(a.argmax(1), b.argmax(1))


def test_finetune_help_is_its_own():
    import subprocess
    proc = subprocess.run([sys.executable, 'pretrain/finetune.py', '--help'], capture_output=True, text=True, timeout=60)
    assert 'Fine-tuning' in proc.stdout and 'Semi-supervised multi-task pretraining' not in proc.stdout


def test_finetune_without_starting_weights_is_refused(tiny, tmp_path):
    import subprocess
    proc = subprocess.run([sys.executable, 'pretrain/finetune.py', '--config', 'configs/tiny_cpu.json',
                           *overrides(tiny, tmp_path / 'x')], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and 'init: fine-tuning needs starting weights' in proc.stderr
