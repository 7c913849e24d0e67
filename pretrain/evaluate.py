"""``python -m pretrain.evaluate``: top-1/top-5 per task of any checkpoint on labeled shards.

    python -m pretrain.evaluate --checkpoint runs/xl_ft320 --data in1k_val=s3://my-bucket/in1k-val --size 320
    torchrun --nproc_per_node 8 -m pretrain.evaluate --checkpoint model.safetensors --model replknet_xl \\
        --task in1k=1000 --data in1k_val=s3://my-bucket/in1k-val

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

from shards.common.config import checked
from shards.common.errors import BadValue, ReplkError
from shards.common.helpformat import HelpFormatter, command_name
from shards.common.safe_files import add_trust_pickle_argument
from shards.stream import SourceSpec
from shards.transforms import TransformConfig

from .config import DataConfig, ModelConfig, RunConfig, load_config, saved_run_config, task_classes
from .evaluation import EvalSpec
from .weights import check_run_folder

# What the user can fix: one line naming the fault, no traceback.


def is_run_folder(path: str) -> bool:
    return os.path.isdir(path) and (Path(path) / 'config.json').is_file()


def run_config(args) -> Optional[RunConfig]:
    """The training config of the weights: ``--config``, the run folder's, or None (``--model``)."""
    if args.config:
        return load_config(args.config)
    if os.path.isdir(args.checkpoint) or not os.path.exists(args.checkpoint):
        check_run_folder(args.checkpoint, '--checkpoint', '--tag')
    if is_run_folder(args.checkpoint):
        if args.model or args.task or args.model_kwargs:
            raise BadValue('a run folder names its own model and tasks (its config.json); drop --model/--task/'
                             '--model-kwargs, or pass a weights file instead of the folder')
        return saved_run_config(Path(args.checkpoint) / 'config.json')
    if args.model and args.task:
        return None
    raise BadValue('say which model: a run folder with config.json, --config, or --model and --task')


def parse_tasks(items) -> Dict[str, int]:
    try:
        return {name: int(n) for name, n in (t.split('=', 1) for t in items)}
    except ValueError:
        raise BadValue(f'--task: expected NAME=CLASSES, got {items}') from None


def parse_source(item: str) -> SourceSpec:
    """``--data NAME=URL``, checked as the command line is read (before any weights load)."""
    name, sep, url = item.partition('=')
    if not sep or not name or not url:
        raise argparse.ArgumentTypeError(f'{item}: expected NAME=URL, the source\'s name in its shard index and '
                                         f'the shard folder (e.g. pets_val={item if not sep else url or "data/val"})')
    return SourceSpec(name, url)


def eval_transform_config(args, base: TransformConfig, pretrained_cfg: dict, from_run: bool) -> TransformConfig:
    """Normalization, crop and size of the run that trained the weights, else of the model's
    ``pretrained_cfg``; ``--size``/``--crop-pct`` override either."""
    mean, std, crop, size, interp = base.mean, base.std, base.crop_pct, base.image_size, base.interpolation
    if not from_run:
        mean, std = pretrained_cfg.get('mean', mean), pretrained_cfg.get('std', std)
        crop, interp = pretrained_cfg.get('crop_pct', crop), pretrained_cfg.get('interpolation', interp)
        size = pretrained_cfg.get('input_size', (3, size))[-1]
    return checked(TransformConfig, '--size/--crop-pct', image_size=args.size or size, mean=tuple(mean),
                   std=tuple(std), crop_pct=args.crop_pct or crop, interpolation=interp)


def eval_spec(args, tasks: Dict[str, int], transform: TransformConfig, cfg: Optional[RunConfig],
              trained: Optional[dict] = None) -> EvalSpec:
    """``trained``: how the weights were trained ({precision, channels_last}: a run's config or an
    export's config.json); ``--precision`` overrides it; weights with no record run in fp32."""
    data = cfg.data if cfg is not None else DataConfig()
    trained = trained or (dict(precision=cfg.train.precision, channels_last=cfg.model.channels_last) if cfg else {})
    precision = args.precision or trained.get('precision', 'fp32')
    channels_last = trained.get('channels_last', ModelConfig().channels_last)
    return EvalSpec(tasks, list(args.data), transform, args.batch_size,
                    args.workers, precision, channels_last, data.label_store, data.tasks_file)


def exported_model(file, args):
    """An export folder: its config.json says the architecture, form, classes and preprocessing;
    ``--task NAME=N`` may name the labels of the evaluation data differently."""
    from .export import TaskOutput, load_export

    meta = json.loads(Path(file).with_name('config.json').read_text())
    check_export_arguments(args, meta)
    model, meta = load_export(file)
    task = args.task[0].split('=')[0] if args.task else meta.get('task')
    if task is None:   # a timm folder of another origin: its config.json names no task
        raise BadValue(f'{file}: the export names no task: say which labels to evaluate with --task NAME='
                         f'{meta["num_classes"]}')
    transform = eval_transform_config(args, TransformConfig(), meta['pretrained_cfg'], from_run=False)
    trained = {k: meta[k] for k in ('precision', 'channels_last') if k in meta}   # exports before 2026-12-07: none
    return TaskOutput(model, task), eval_spec(args, {task: meta['num_classes']}, transform, None, trained)


def check_export_arguments(args, meta: dict) -> None:
    """An export names its own architecture and head: a --model, --model-kwargs or --task class
    count that disagrees with it is an error, never silently ignored."""
    if args.model and args.model != meta['architecture']:
        raise BadValue(f'--model {args.model}: the export is a {meta["architecture"]} (its config.json); drop '
                         '--model, an export names its own architecture')
    if args.model_kwargs:
        raise BadValue('--model-kwargs: an export records its own model arguments (its config.json); drop it')
    if args.task:
        if len(args.task) > 1:
            raise BadValue(f'--task given {len(args.task)} times: an export has one head ({meta.get("task")})')
        classes = parse_tasks(args.task)
        name, n = next(iter(classes.items()))
        if n != meta['num_classes']:
            raise BadValue(f'--task {name}={n}: the export\'s head ({meta.get("task")}) has {meta["num_classes"]} '
                             f'classes; use --task {name}={meta["num_classes"]} (or drop --task)')


def weights_model(args):
    """A run folder (or --config) or --model/--task, with the checkpoint's weights loaded."""
    from .engine import build_model
    from .weights import load_ema_weights, load_initial_weights

    cfg = run_config(args)
    spec = cfg.model if cfg is not None else checked(ModelConfig, '--model/--model-kwargs', name=args.model,
                                                     kwargs=json.loads(args.model_kwargs or '{}'))
    tasks = task_classes(cfg.tasks) if cfg is not None else parse_tasks(args.task)
    model = build_model(spec, tasks)
    if args.ema:
        load_ema_weights(model, args.checkpoint, args.tag)
    else:
        load_initial_weights(model, args.checkpoint, tasks, args.tag, args.trust_pickle)
    transform = eval_transform_config(args, cfg.data.transform if cfg is not None else TransformConfig(),
                                      getattr(model, 'pretrained_cfg', {}) or {}, from_run=cfg is not None)
    return model, eval_spec(args, tasks, transform, cfg)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog=command_name('pretrain.evaluate'), description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--checkpoint', required=True,
                   help='a run folder, an export folder, or a .pt/.pth/.bin/.safetensors weights file')
    p.add_argument('--tag', help='run folder: its step-N checkpoint (default: the newest committed)')
    p.add_argument('--data', action='append', required=True, type=parse_source, metavar='SOURCE=URL',
                   help='labeled shards: the source name in the shard index = the shard folder (repeatable)')
    p.add_argument('--config', help='the run config the weights were trained with (default: the run folder\'s)')
    p.add_argument('--model', help='weights file: the timm model name (with --task)')
    p.add_argument('--model-kwargs', metavar='JSON', help='weights file: timm.create_model arguments, e.g. the shape')
    p.add_argument('--task', action='append', metavar='TASK=CLASSES',
                   help='weights file: a head and its class count (repeatable); export: rename its task')
    p.add_argument('--size', type=int, help='evaluation crop size (default: the training size or pretrained_cfg)')
    p.add_argument('--crop-pct', type=float, help='resize to size / crop-pct before the center crop (default: as '
                                                  'trained, or pretrained_cfg)')
    p.add_argument('--batch-size', type=int, default=64, help='images per forward, per process')
    p.add_argument('--workers', type=int, default=4, help='decoding processes per rank (0: in the main process)')
    p.add_argument('--precision', choices=('fp32', 'bf16'),
                   help='bf16: under autocast (default: what the run trained in, from its config; fp32 without one)')
    p.add_argument('--ema', action='store_true', help='run folder: evaluate the EMA weights (the result says '
                                                      '"weights": "ema")')
    add_trust_pickle_argument(p)
    p.add_argument('--local_rank', '--local-rank', type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        return evaluate(args)
    except ReplkError as exc:   # the user's to fix: one line; anything else is a bug and shows its traceback
        raise SystemExit(f'error: {exc}') from None


def evaluate(args) -> dict:
    from .distributed import init_distributed
    from .evaluation import evaluate_model
    from .export import export_file

    exported = export_file(args.checkpoint)
    model, spec = exported_model(exported, args) if exported is not None else weights_model(args)
    env, device = init_distributed(args.local_rank)
    result = evaluate_model(model.to(device), spec, device, env.rank, env.world_size)
    if not any(key.endswith('/images') for key in result):
        raise BadValue(f'--data {" ".join(f"{d.name}={d.url}" for d in args.data)}: no image there has a human label for '
                         f'{" or ".join(spec.tasks)}; accuracy is measured against human labels: pass labeled '
                         'shards (built from class folders or a labeled file list)')
    result.update(size=spec.transform.image_size, crop_pct=spec.transform.crop_pct, checkpoint=args.checkpoint,
                  weights='ema' if args.ema else 'trained', precision=spec.precision, channels_last=spec.channels_last)
    if env.is_main:
        print(json.dumps(result), flush=True)
    return result


if __name__ == '__main__':
    main()
