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
from typing import Dict, Optional

from shards.helpformat import HelpFormatter
from shards.safe_files import UnsafeFileError, add_trust_pickle_argument
from shards.stream import SourceSpec
from shards.transforms import TransformConfig

from .config import DataConfig, ModelConfig, RunConfig, build, load_config, task_classes
from .evaluation import EvalSpec

# What the user can fix: one line naming the fault, no traceback.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, UnsafeFileError)


def is_run_folder(path: str) -> bool:
    return os.path.isdir(path) and (Path(path) / 'config.json').is_file()


def run_config(args) -> Optional[RunConfig]:
    """The training config of the weights: ``--config``, the run folder's, or None (``--model``)."""
    if args.config:
        return load_config(args.config)
    if is_run_folder(args.checkpoint):
        if args.model or args.task or args.model_kwargs:
            raise ValueError('a run folder names its own model and tasks (its config.json); drop --model/--task/'
                             '--model-kwargs, or pass a weights file instead of the folder')
        return build(RunConfig, json.loads((Path(args.checkpoint) / 'config.json').read_text()), '')
    if args.model and args.task:
        return None
    raise ValueError('say which model: a run folder with config.json, --config, or --model and --task')


def parse_tasks(items) -> Dict[str, int]:
    try:
        return {name: int(n) for name, n in (t.split('=', 1) for t in items)}
    except ValueError:
        raise ValueError(f'--task: expected NAME=CLASSES, got {items}') from None


def eval_transform_config(args, data: DataConfig, pretrained_cfg: dict, from_run: bool) -> TransformConfig:
    """Normalization, crop and size of the run that trained the weights, else of the model's
    ``pretrained_cfg``; ``--size``/``--crop-pct`` override either."""
    mean, std, crop, size, interp = data.mean, data.std, data.val_crop_pct, data.image_size, data.interpolation
    if not from_run:
        mean, std = pretrained_cfg.get('mean', mean), pretrained_cfg.get('std', std)
        crop, interp = pretrained_cfg.get('crop_pct', crop), pretrained_cfg.get('interpolation', interp)
        size = pretrained_cfg.get('input_size', (3, size))[-1]
    return TransformConfig(image_size=args.size or size, mean=tuple(mean), std=tuple(std),
                           crop_pct=args.crop_pct or crop, interpolation=interp)


def eval_spec(args, tasks: Dict[str, int], transform: TransformConfig, cfg: Optional[RunConfig]) -> EvalSpec:
    data = cfg.data if cfg is not None else DataConfig()
    model = cfg.model if cfg is not None else ModelConfig()
    return EvalSpec(tasks, [SourceSpec(*x.split('=', 1)) for x in args.data], transform, args.batch_size,
                    args.workers, args.precision, model.channels_last, data.label_store, data.tasks_file)


def exported_model(file, args):
    """An export folder: its config.json says the architecture, form, classes and preprocessing;
    ``--task NAME=N`` may name the labels of the evaluation data differently."""
    from .export import TaskOutput, load_export

    meta = json.loads(Path(file).with_name('config.json').read_text())
    check_export_arguments(args, meta)
    model, meta = load_export(file)
    task = args.task[0].split('=')[0] if args.task else meta['task']
    transform = eval_transform_config(args, DataConfig(), meta['pretrained_cfg'], from_run=False)
    return TaskOutput(model, task), eval_spec(args, {task: meta['num_classes']}, transform, None)


def check_export_arguments(args, meta: dict) -> None:
    """An export names its own architecture and head: a --model, --model-kwargs or --task class
    count that disagrees with it is an error, never silently ignored."""
    if args.model and args.model != meta['architecture']:
        raise ValueError(f'--model {args.model}: the export is a {meta["architecture"]} (its config.json); drop '
                         '--model, an export names its own architecture')
    if args.model_kwargs:
        raise ValueError('--model-kwargs: an export records its own model arguments (its config.json); drop it')
    if args.task:
        if len(args.task) > 1:
            raise ValueError(f'--task given {len(args.task)} times: an export has one head ({meta["task"]})')
        classes = parse_tasks(args.task)
        name, n = next(iter(classes.items()))
        if n != meta['num_classes']:
            raise ValueError(f'--task {name}={n}: the export\'s head ({meta["task"]}) has {meta["num_classes"]} '
                             f'classes; use --task {name}={meta["num_classes"]} (or drop --task)')


def weights_model(args):
    """A run folder (or --config) or --model/--task, with the checkpoint's weights loaded."""
    from .engine import build_model
    from .weights import load_ema_weights, load_initial_weights

    cfg = run_config(args)
    spec = cfg.model if cfg is not None else ModelConfig(name=args.model, kwargs=json.loads(args.model_kwargs or '{}'))
    tasks = task_classes(cfg.tasks) if cfg is not None else parse_tasks(args.task)
    model = build_model(spec, tasks)
    if args.ema:
        load_ema_weights(model, args.checkpoint, args.tag)
    else:
        load_initial_weights(model, args.checkpoint, tasks, args.tag, args.trust_pickle)
    transform = eval_transform_config(args, cfg.data if cfg is not None else DataConfig(),
                                      getattr(model, 'pretrained_cfg', {}) or {}, from_run=cfg is not None)
    return model, eval_spec(args, tasks, transform, cfg)


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
    try:
        return evaluate(args)
    except USER_ERRORS as exc:
        raise SystemExit(f'error: {exc}') from None


def evaluate(args) -> dict:
    from .distributed import init_distributed
    from .evaluation import evaluate_model
    from .export import export_file

    exported = export_file(args.checkpoint)
    model, spec = exported_model(exported, args) if exported is not None else weights_model(args)
    env, device = init_distributed(args.local_rank)
    result = evaluate_model(model.to(device), spec, device, env.rank, env.world_size)
    result.update(size=spec.transform.image_size, crop_pct=spec.transform.crop_pct, checkpoint=args.checkpoint)
    if env.is_main:
        print(json.dumps(result), flush=True)
    return result


if __name__ == '__main__':
    main()
