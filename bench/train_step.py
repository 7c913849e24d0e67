"""Our whole training step vs a bare DeepSpeed loop over the same model and pre-built tensors.

Ours: shards streamed and decoded with RandAugment in a DataLoader worker, labels joined from
the label store, multi-task loss, DeepSpeed ZeRO-2 step. Bare: the same model, optimizer and
DeepSpeed config stepping on tensors built in advance (no loading at all). One process
(world size 1), on CPU here. ratio = ours / bare (goal >= 0.9: loading overlapped).
With --compile it also runs our step with train.compile=inductor: compiled / eager images/s (on
CPU inductor fuses BatchNorm and elementwise ops into C++ loops; its GPU meaning is measured by
bench/gpu_check.sh). On a GPU it also prints RepLKNet-XL vs timm convnext_xlarge forward+backward
images/s.

    python bench/train_step.py --steps 30 [--compile]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault('OMP_NUM_THREADS', '1')
from pretrain.apps.tiny_data import make  # noqa: E402
from pretrain.config import load_config, task_classes  # noqa: E402
from pretrain.distributed import init_distributed  # noqa: E402
from pretrain.ds_config import deepspeed_config  # noqa: E402
from pretrain.engine import Trainer, build_model, build_optimizer, param_groups  # noqa: E402
from pretrain.loss import multitask_loss  # noqa: E402

MODEL = {'kernel_sizes': [13, 7], 'depths': [1, 2], 'channels': [32, 64], 'small_kernel': 5}


def ours_rate(cfg, env, device, steps: int) -> float:
    trainer = Trainer(cfg, env, device)
    it = iter(trainer.loader)
    for _ in range(3):  # warm-up (worker start, first shard; compiling, when on, happens here)
        trainer.micro_step(_next(trainer, it))
    start = time.perf_counter()
    for _ in range(steps):
        trainer.micro_step(_next(trainer, it))
    return steps * cfg.train.micro_batch / (time.perf_counter() - start)


def _next(trainer, it):
    try:
        return next(it)
    except StopIteration:
        return next(iter(trainer.loader))


def bare_rate(cfg, env, device, steps: int) -> float:
    import deepspeed

    model = build_model(cfg.model, task_classes(cfg.tasks))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=build_optimizer(cfg.optim, param_groups(model, 0.05)),
                                           config=deepspeed_config(cfg, env.world_size))
    b, s = cfg.train.micro_batch, cfg.data.transform.image_size
    images = torch.randn(b, 3, s, s, device=device)
    targets = {t: dict(target=torch.softmax(torch.randn(b, c.num_classes, device=device), -1),
                       mask=torch.ones(b, dtype=torch.bool, device=device),
                       human=torch.zeros(b, dtype=torch.bool, device=device)) for t, c in cfg.tasks.items()}
    weights = {t: 1.0 for t in cfg.tasks}
    smoothing = {t: 0.0 for t in cfg.tasks}

    def step():
        loss, _ = multitask_loss(engine(images), targets, weights, smoothing)
        engine.backward(loss)
        engine.step()
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * b / (time.perf_counter() - start)


def gpu_model_comparison(device) -> dict:
    import timm
    out = {}
    for name in ('replknet_xl', 'convnext_xlarge'):
        model = timm.create_model(name).to(device, memory_format=torch.channels_last)
        x = torch.randn(32, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
        for i in range(8):
            if i == 3:
                torch.cuda.synchronize()
                start = time.perf_counter()
            with torch.autocast('cuda', dtype=torch.bfloat16):
                model(x).float().mean().backward()
        torch.cuda.synchronize()
        out[name] = 5 * 32 / (time.perf_counter() - start)
        del model
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--steps', type=int, default=30)
    ap.add_argument('--image-size', type=int, default=64)
    ap.add_argument('--micro-batch', type=int, default=16)
    ap.add_argument('--compile', action='store_true', help='also our step with train.compile=inductor (ratio to eager)')
    args = ap.parse_args(argv)
    # enough images that the measured steps stay inside one epoch (a new epoch restarts the workers)
    data = make(tempfile.mkdtemp(prefix="replk-trainbench-"), per_source=max(160, 2 * (args.steps + 3) * args.micro_batch))
    run_dir = tempfile.mkdtemp(prefix='replk-trainbench-run-')
    sets = [f'data.sources={json.dumps([{"name": "lab", "url": data["shards"]}, {"name": "unl", "url": data["shards"]}])}',
            f'data.label_store={data["labels"]}', f'data.tasks_file={data["tasks_file"]}', 'data.val_sources=[]',
            f'data.transform.image_size={args.image_size}', f'train.micro_batch={args.micro_batch}', 'data.workers=1',
            f'model.kwargs={json.dumps(MODEL)}', f'checkpoint.dir={run_dir}', 'log.tensorboard=false']
    cfg = load_config('configs/tiny_cpu.json', sets)
    env, device = init_distributed()
    torch.set_num_threads(1)  # one core computes, the other decodes
    ours, bare = ours_rate(cfg, env, device, args.steps), bare_rate(cfg, env, device, args.steps)
    print(f'RepLKNet {MODEL} at {args.image_size}px, micro-batch {args.micro_batch}, ZeRO-2, {device}, '
          f'1 compute thread + 1 loader worker, {args.steps} steps')
    print(f'{"ours (shards -> labels -> loss -> step)":42} {ours:8.1f} images/s')
    print(f'{"bare DeepSpeed loop on pre-built tensors":42} {bare:8.1f} images/s')
    headline = dict(bench='train_step', metric='images/s', ours=round(ours, 1), peer=round(bare, 1),
                    ratio=round(ours / bare, 3), config=dict(image_size=args.image_size,
                                                             micro_batch=args.micro_batch, steps=args.steps))
    if args.compile:
        compiled_cfg = load_config('configs/tiny_cpu.json',
                                   sets + ['train.compile=inductor', f'checkpoint.dir={run_dir}-compiled'])
        compiled = ours_rate(compiled_cfg, env, device, args.steps)
        print(f'{"ours, train.compile=inductor":42} {compiled:8.1f} images/s')
        headline['compiled'] = dict(images_per_s=round(compiled, 1), ratio_to_eager=round(compiled / ours, 3))
    if device.type == 'cuda':
        headline['gpu_images_per_s_fwd_bwd_bf16'] = gpu_model_comparison(device)
        print('GPU fwd+bwd images/s:', headline['gpu_images_per_s_fwd_bwd_bf16'])
    print(json.dumps(headline))
    return headline


if __name__ == '__main__':
    main()
