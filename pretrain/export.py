"""``python -m pretrain.export``: run folder -> consolidated fp32 -> re-parameterized -> safetensors.

    python -m pretrain.export runs/xl_ft320 --task in1k --out exported/replknet_xl_in1k_320

Writes ``model.safetensors`` (the deploy form: large kernels merged, every BatchNorm folded)
and ``config.json``. Load it the timm way::

    timm.create_model('replknet_xl', pretrained=True, pretrained_cfg_overlay=dict(file='.../model.safetensors'))

The ``config.json`` beside the file tells timm (through the RepLKNet entry points) the exported
class count, class names, input size, crop and shape arguments, so no other argument is needed.
The export checks that the deployed model's outputs equal the training form's within 1e-4
before writing.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import torch

from shards.helpformat import HelpFormatter, command_name
from shards.safe_files import UnsafeFileError, add_trust_pickle_argument

from .config import RunConfig, build
from .models.checkpoint import NOT_SHAPE
from .weights import check_run_folder


def single_task_model(cfg: RunConfig, task: str, state: dict):
    """The run's model with only ``task``'s head, as a plain single-head timm classifier.

    RepLKNet keeps its task heads as ``head.fc.{task}``; other timm backbones were wrapped as
    ``backbone`` + ``heads.{task}`` and go back to timm's own names (its ``classifier``).
    """
    import timm

    import pretrain.models  # noqa: F401
    if task not in cfg.tasks:
        raise ValueError(f'task {task!r} is not one of the run\'s tasks {sorted(cfg.tasks)}')
    n = cfg.tasks[task].num_classes
    model = timm.create_model(cfg.model.name, num_classes=n, **cfg.model.kwargs)
    if any(k.startswith('backbone.') for k in state):
        classifier = model.pretrained_cfg.get('classifier', 'head')
        mapped = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
        mapped.update({f'{classifier}.{k.rsplit(".", 1)[1]}': v for k, v in state.items()
                       if k.startswith(f'heads.{task}.')})
    else:
        prefix = f'head.fc.{task}.'
        mapped = {k: v for k, v in state.items() if not k.startswith('head.fc.')}
        mapped.update({f'head.fc.{k[len(prefix):]}': v for k, v in state.items() if k.startswith(prefix)})
    model.load_state_dict(mapped, strict=True)
    return model.eval(), n


def export(run_dir: str, task: str, out: str, tag: str = None, ema: bool = False, trust_pickle: bool = False) -> dict:
    from .checkpoint import committed_tags, load_part
    from .weights import consolidate_run

    cfg = build(RunConfig, json.loads((Path(run_dir) / 'config.json').read_text()), '')
    tags = committed_tags(run_dir)
    if not tags and tag is None:
        raise FileNotFoundError(f'{run_dir}: no committed checkpoint to export (is it a run folder? did it save?)')
    tag = tag or tags[-1]
    state = load_part(run_dir, tag, 'ema') if ema else consolidate_run(run_dir, tag, trust_pickle)
    if state is None:
        raise FileNotFoundError(f'{run_dir}/ckpt/{tag} has no EMA weights')
    return write_export(cfg, task, state, out, source=dict(run=str(run_dir), tag=tag, ema=ema))




def write_export(cfg: RunConfig, task: str, state: dict, out: str, source: dict) -> dict:
    """Deploy form of ``task``'s model -> ``model.safetensors`` + ``config.json`` (what it is, how it
    was evaluated: timm reads the ``pretrained_cfg`` when loading the file)."""
    from safetensors.torch import save

    model, n = single_task_model(cfg, task, state)
    x = torch.randn(2, 3, cfg.data.image_size, cfg.data.image_size)
    with torch.no_grad():
        reference = model(x)
        if hasattr(model, 'reparameterize'):
            model.reparameterize()
        deployed = model(x)
    err = ((reference - deployed).abs().max() / reference.abs().max()).item()
    if err > 1e-4:
        raise RuntimeError(f'the re-parameterized model differs from the training form by {err:.2e} (relative)')
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    # bytes written by Python, so the file gets the user's umask like config.json (safetensors'
    # own save_file creates it 0600: unreadable to the team that shares the export)
    (folder / 'model.safetensors').write_bytes(save({k: v.contiguous() for k, v in model.state_dict().items()}))
    form = 'fused' if hasattr(model, 'reparameterize') else 'plain'
    # The export describes the model, not how to run it: the large-kernel implementation (lk_impl)
    # is the loader's choice, so an export made with 'triton' loads on a CPU.
    shape_kwargs = {k: v for k, v in cfg.model.kwargs.items() if k not in NOT_SHAPE}
    meta = dict(architecture=cfg.model.name, num_classes=n, task=task, form=form, model_kwargs=shape_kwargs,
                source=source, max_relative_error=err, pretrained_cfg=exported_pretrained_cfg(cfg, task, n),
                precision=cfg.train.precision, channels_last=cfg.model.channels_last)   # how it was trained and evaluated
    (folder / 'config.json').write_text(json.dumps(meta, indent=2, default=str))
    return meta


def exported_pretrained_cfg(cfg: RunConfig, task: str, num_classes: int) -> dict:
    """timm's pretrained_cfg of the exported model: its classes, input size, crop and statistics."""
    size = cfg.data.image_size
    out = dict(architecture=cfg.model.name, tag=f'export_{task}', num_classes=num_classes,
               input_size=[3, size, size], pool_size=[-(-size // 32)] * 2, crop_pct=cfg.data.val_crop_pct,
               interpolation=cfg.data.interpolation, mean=list(cfg.data.mean), std=list(cfg.data.std),
               classifier='head.fc', first_conv='stem.0.conv', description=f'exported by pretrain.export ({task})')
    names = _class_names(cfg, task)
    if names is not None:
        out['label_names'] = names
    return out


def _class_names(cfg: RunConfig, task: str):
    from labeling.tasks import TaskRegistry
    try:
        names = TaskRegistry.from_json(cfg.data.tasks_file).get(task).class_names
    except (KeyError, OSError, ValueError):
        return None  # a task known only by its class count in this run
    return list(names) if len(names) == cfg.tasks[task].num_classes else None


def export_file(path: str) -> Optional[Path]:
    """The ``model.safetensors`` of an export (the folder, or the file with its config.json beside)."""
    from .models.checkpoint import export_meta
    p = Path(path)
    file = p / 'model.safetensors' if p.is_dir() else p
    return file if file.suffix == '.safetensors' and export_meta(file) is not None else None


class TaskOutput(torch.nn.Module):
    """A single-head classifier answering ``{task: logits}`` like the multi-task models."""

    def __init__(self, model: torch.nn.Module, task: str):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x):
        return {self.task: self.model(x)}


def load_export(file: Path):
    """(timm model in the exported form with its head, the export's config.json)."""
    from .models.checkpoint import load_exported
    return load_exported(file)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog=command_name('pretrain.export'), description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('run_dir', help='a pretraining or fine-tuning run folder')
    p.add_argument('--task', required=True, help='the head to keep')
    p.add_argument('--out', required=True, help='the export folder: model.safetensors and config.json')
    p.add_argument('--tag', help='step-N (default: the newest committed checkpoint)')
    p.add_argument('--ema', action='store_true', help='export the EMA weights')
    add_trust_pickle_argument(p)
    args = p.parse_args(argv)
    try:
        check_run_folder(args.run_dir, 'run_dir', '--tag')
        meta = export(args.run_dir, args.task, args.out, args.tag, args.ema, args.trust_pickle)
    except (ValueError, KeyError, FileNotFoundError, UnsafeFileError) as exc:
        raise SystemExit(f'error: {exc}') from None
    print(json.dumps(meta, indent=2, default=str))
    return meta


if __name__ == '__main__':
    main()
