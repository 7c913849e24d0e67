"""``python -m pretrain.evaluate``: top-1/top-5 per task of any checkpoint on labeled shards.

    python -m pretrain.evaluate --checkpoint runs/xl_ft320 --data in1k_val=s3://b/in1k-val --size 320
    torchrun --nproc_per_node 8 -m pretrain.evaluate --checkpoint model.safetensors --model replknet_xl \\
        --task in1k=1000 --data in1k_val=s3://b/in1k-val

The model, its tasks and kwargs come from the run folder's ``config.json`` (or ``--config``, or
``--model``/``--task``); the eval crop from the model's ``pretrained_cfg`` (XL: resize 365, center
crop 320, mean/std 0.5) unless ``--crop-pct``/``--size`` say otherwise.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from shards.helpformat import HelpFormatter
from shards.safe_files import add_trust_pickle_argument

from .config import DataConfig, RunConfig, SourceConfig, TaskConfig, build, load_config


def is_run_folder(path: str) -> bool:
    return os.path.isdir(path) and (Path(path) / 'config.json').is_file()


def run_config(args) -> RunConfig:
    if args.config:
        cfg = load_config(args.config)
    elif is_run_folder(args.checkpoint):
        cfg = build(RunConfig, json.loads((Path(args.checkpoint) / 'config.json').read_text()), '')
    elif args.model and args.task:
        cfg = RunConfig(tasks={t.split('=')[0]: TaskConfig(num_classes=int(t.split('=')[1])) for t in args.task})
        cfg.model.name = args.model
        cfg.model.kwargs = json.loads(args.model_kwargs or '{}')
    else:
        raise SystemExit('say which model: a run folder with config.json, --config, or --model and --task')
    return cfg


def configure_eval(cfg: RunConfig, args, pretrained_cfg: dict, from_run: bool) -> RunConfig:
    """Normalization and crop of the run that trained the weights, else of the model's pretrained_cfg."""
    d = cfg.data.__dict__
    mean, std, crop = d['mean'], d['std'], d['val_crop_pct']
    if not from_run:
        mean, std = pretrained_cfg.get('mean', mean), pretrained_cfg.get('std', std)
        crop = pretrained_cfg.get('crop_pct', crop)
    cfg.data = DataConfig(**{**d, 'val_sources': [SourceConfig(*x.split('=', 1)) for x in args.data],
                             'image_size': args.size or d['image_size'], 'val_crop_pct': args.crop_pct or crop,
                             'workers': args.workers, 'mean': tuple(mean), 'std': tuple(std)})
    cfg.train.micro_batch = args.batch_size
    cfg.train.precision = args.precision
    return cfg


def exported_model(file, args):
    """An export folder: its config.json says the architecture, form, classes and preprocessing;
    ``--task NAME=N`` may name the labels of the evaluation data differently."""
    from .export import TaskOutput, load_export

    model, meta = load_export(file)
    task = args.task[0].split('=')[0] if args.task else meta['task']
    cfg = RunConfig(tasks={task: TaskConfig(num_classes=meta['num_classes'])})
    cfg.model.name, cfg.model.kwargs = meta['architecture'], meta['model_kwargs']
    cfg.data.image_size = meta['pretrained_cfg']['input_size'][-1]
    cfg.data.interpolation = meta['pretrained_cfg'].get('interpolation', cfg.data.interpolation)
    return TaskOutput(model, task), configure_eval(cfg, args, meta['pretrained_cfg'], from_run=False)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--checkpoint', required=True, help='run folder, .pt/.pth/.bin or .safetensors file')
    p.add_argument('--tag', help='run folder: step-N (default: the newest committed)')
    p.add_argument('--data', action='append', required=True, metavar='SOURCE=URL', help='labeled shards (repeatable)')
    p.add_argument('--config'); p.add_argument('--model'); p.add_argument('--model-kwargs')
    p.add_argument('--task', action='append', metavar='TASK=CLASSES')
    p.add_argument('--size', type=int); p.add_argument('--crop-pct', type=float)
    p.add_argument('--batch-size', type=int, default=64); p.add_argument('--workers', type=int, default=4)
    p.add_argument('--precision', default='fp32', choices=('fp32', 'bf16'))
    p.add_argument('--ema', action='store_true', help='run folder: evaluate the EMA weights')
    add_trust_pickle_argument(p)
    p.add_argument('--local_rank', '--local-rank', type=int, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from .distributed import init_distributed
    from .engine import build_model, evaluate_model
    from .export import export_file
    from .weights import load_initial_weights, load_ema_weights

    exported = export_file(args.checkpoint)
    if exported is None and is_run_folder(args.checkpoint) and (args.model or args.task or args.model_kwargs):
        raise SystemExit('error: a run folder names its own model and tasks (its config.json); drop --model/--task/'
                         '--model-kwargs, or pass a weights file instead of the folder')
    if exported is not None:
        model, cfg = exported_model(exported, args)
    else:
        cfg = run_config(args)
        cfg.init = None
        model = build_model(cfg)
        cfg = configure_eval(cfg, args, getattr(model, 'pretrained_cfg', {}) or {}, from_run=not args.model)
        tasks = {t: c.num_classes for t, c in cfg.tasks.items()}
        if args.ema:
            load_ema_weights(model, args.checkpoint, args.tag)
        else:
            load_initial_weights(model, args.checkpoint, tasks, args.tag, args.trust_pickle)
    env, device = init_distributed(args.local_rank)
    result = evaluate_model(model.to(device), cfg, env, device)
    result.update(size=cfg.data.image_size, crop_pct=cfg.data.val_crop_pct, checkpoint=args.checkpoint)
    if env.is_main:
        print(json.dumps(result), flush=True)
    return result


if __name__ == '__main__':
    main()
