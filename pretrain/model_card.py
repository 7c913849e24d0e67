"""The model card (``README.md``) of an export: what a reader of the Hugging Face Hub needs to know
about the weights without the run folder: the recipe, the data by name and size, the teachers whose
pseudo-labels it learned from, the evaluation, and how close the deploy form is to the trained one.

Names and counts only: no paths or URLs of the machine that trained it (a card travels). What the
export cannot reach (a shard index or label store that is offline) is said as such, never guessed.
The card's layout is timm's (``timm.models._hub.generate_readme``, the one ``push_to_hf_hub`` writes).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional

from .config import RunConfig

log = logging.getLogger(__name__)

# Reading an index or a store for the card is worth seconds, not the 300 s a training start waits out.
CARD_RETRY_BUDGET_S = 10.0
CITATION = """@inproceedings{ding2022scaling,
  title={Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design in CNNs},
  author={Ding, Xiaohan and Zhang, Xiangyu and Han, Jungong and Ding, Guiguang},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2022}
}"""


def run_provenance(cfg: RunConfig, run_dir: str, tag: str, ema: bool, task: str) -> dict:
    """What the run folder and its sources say about the exported weights (see :func:`model_card`)."""
    return dict(tag=tag, weights='EMA' if ema else 'trained', world_size=_world_size(run_dir, tag),
                sources=source_sizes(cfg.data.sources, cfg.data.stream.exclude is not None),
                val_sources=source_sizes(cfg.data.val_sources, False),
                teachers=teachers_of(cfg, run_dir, tag), metrics=run_metrics(run_dir, tag, task, ema))


def _world_size(run_dir: str, tag: str) -> Optional[int]:
    from .checkpoint import MARKER, ckpt_root
    try:
        return json.loads((ckpt_root(run_dir) / tag / MARKER).read_text()).get('world_size')
    except (OSError, ValueError):
        return None


def source_sizes(sources, excluded: bool) -> List[str]:
    """``name: N samples`` per source, from its shard index (the count a training epoch reads)."""
    from shards.storage import RetryPolicy
    from shards.stream import SourceSpec, source_entries

    out = []
    for s in sources:
        try:
            _, entries, _ = source_entries(SourceSpec(s.name, s.url, s.weight, True), RetryPolicy(budget_s=CARD_RETRY_BUDGET_S))
            size = f'{sum(e.samples for e in entries):,} samples'
            if excluded:
                size += ' (less the near-duplicates of evaluation images the run excluded)'
        except Exception as exc:   # noqa: BLE001  (any storage fault: the card says so, the export goes on)
            log.warning('model card: the shard index of source %s could not be read (%s): its size is left unknown',
                        s.name, exc)
            size = 'sample count unknown (its shard index was not reachable at export)'
        weight = f', mixing weight {s.weight}' if getattr(s, 'weight', None) is not None else ''
        out.append(f'{s.name}: {size}{weight}')
    return out


def teachers_of(cfg: RunConfig, run_dir: str, tag: str) -> Dict[str, str]:
    """Per task, the teacher whose pseudo-labels the run trained on: from the label manifests the
    checkpoint pinned (what the run actually read), else the label store's manifest now (a
    checkpoint from before pinning; a task holds one teacher's labels), else "unknown"."""
    if cfg.data.label_store is None:
        return {task: 'none: human labels from the shards only' for task in cfg.tasks}
    from .checkpoint import load_part
    pinned = {}
    try:
        pinned = (load_part(run_dir, tag, 'labels') or {}).get('tasks', {})
    except (OSError, ValueError, KeyError) as exc:
        log.warning('model card: the checkpoint\'s pinned label manifests could not be read (%s)', exc)
    out = {}
    for task in cfg.tasks:
        header = pinned[task]['header'] if task in pinned else _store_header(cfg, task)
        out[task] = describe_teacher(header)
    return out


def _store_header(cfg: RunConfig, task: str) -> Optional[dict]:
    from labeling.store import LabelStore
    from labeling.tasks import TaskRegistry
    try:
        return LabelStore(cfg.data.label_store, TaskRegistry.from_json(cfg.data.tasks_file)).manifest(task)
    except Exception as exc:   # noqa: BLE001  (offline, absent, unreadable: the card says unknown)
        log.warning('model card: the label store\'s manifest of task %s could not be read (%s)', task, exc)
        return None


def describe_teacher(header: Optional[dict]) -> str:
    if header is None:
        return 'unknown (no pinned label manifest in the checkpoint, and the label store was not reachable at export)'
    teacher = header.get('teacher')
    if teacher is None:
        return 'none: the label store holds human labels only for this task'
    model = str(teacher.get('model', '?'))
    if model.startswith(('/', '.', '~')) or '\\' in model:   # a local folder: its name, not where it lay
        model = f'{Path(model).name} (a local folder)'
    parts = [f'{teacher.get("kind", "?")} {model}']
    if teacher.get('weights_sha256'):
        parts.append(f'weights sha256 {teacher["weights_sha256"]}')
    parts.append(f'temperature {teacher.get("temperature", 1.0)}')
    if header.get('topk'):
        parts.append(f'top-{header["topk"]} stored')
    return ', '.join(parts)


def run_metrics(run_dir: str, tag: str, task: str, ema: bool) -> Dict[str, object]:
    """The run's own evaluation of ``task`` (``result.json``), when it is of the exported step and weights."""
    from .checkpoint import step_of
    path = Path(run_dir) / 'result.json'
    if not path.is_file():
        return {}
    result = json.loads(path.read_text())
    if result.get('step') != step_of(tag):
        return {'note': f'the run\'s result.json is of step {result.get("step")}, this export of {tag}: no evaluation '
                        'of these weights is recorded'}
    prefix = 'val_ema/' if ema else 'val/'
    return {k: v for k, v in sorted(result.items()) if k.startswith(prefix) and f'/{task}/' in k}


def model_card(meta: dict, cfg: RunConfig, task: str, name: str, provenance: Optional[dict], license_id: str,
               hub_id: Optional[str] = None) -> str:
    """The README.md text: timm's card layout (front matter, details, usage, citation). ``name``: the
    card's title; ``hub_id``: the Hub repository it is pushed to, if any (the usage names it)."""
    from timm.models._hub import generate_readme

    details = {
        'Model type': f'Image classification ({meta["num_classes"]} classes, task "{task}")',
        'Architecture': meta['architecture'],
        'Model arguments': json.dumps(meta.get('model_args', {}), sort_keys=True),
        'Form': 'deploy (structurally re-parameterized: large kernels merged, BatchNorm folded)'
                if meta.get('form') == 'fused' else 'as trained',
        'Image size': f'{meta["pretrained_cfg"]["input_size"][-1]} (eval crop_pct {meta["pretrained_cfg"].get("crop_pct")})',
        'Recipe': recipe(cfg, provenance),
    }
    if provenance is None:
        details['Provenance'] = 'exported from weights outside a run folder: data, teachers and metrics not recorded'
    else:
        details['Weights'] = f'{provenance["weights"]} weights of checkpoint {provenance["tag"]}'
        details['Data sources'] = provenance['sources'] or ['none named']
        if provenance['val_sources']:
            details['Evaluation sources'] = provenance['val_sources']
        details['Teachers (pseudo-labels)'] = provenance['teachers']
        details['Metrics'] = provenance['metrics'] or 'none recorded in the run folder (evaluate with pretrain.evaluate)'
    details['Re-parameterization check'] = (
        f'on random inputs the deploy form differs from the training form by at most {meta["max_abs_difference"]:.3g} '
        f'(absolute), {meta["max_relative_error"]:.3g} relative to the largest logit; the export refuses above 1e-4 relative')
    card = dict(tags=['image-classification', 'timm', 'replknet'], license=license_id, details=details,
                description=f'A {meta["architecture"]} (RepLKNet, "Scaling Up Your Kernels to 31x31") trained with '
                            'replk-pretrain and exported in timm\'s format.',
                usage=usage(hub_id), citation=CITATION)
    return generate_readme(card, name)


def recipe(cfg: RunConfig, provenance: Optional[dict]) -> Dict[str, object]:
    o, s, t, aug = cfg.optim, cfg.schedule, cfg.train, cfg.data.transform
    world = (provenance or {}).get('world_size')
    batch = t.micro_batch * t.grad_accum
    out = {
        'optimizer': f'{o.name}, lr {o.lr}, weight decay {o.weight_decay}'
                     + (f', betas {list(o.betas)}' if o.name == 'adamw' else f', momentum {o.momentum}')
                     + (f', layer decay {o.layer_decay} per {o.layer_decay_granularity}' if o.layer_decay else ''),
        'schedule': f'cosine over {s.epochs} epochs, {s.warmup_epochs} warm-up, min lr ratio {s.min_lr_ratio}'
                    + (f', stopped at {s.max_steps} steps' if s.max_steps else ''),
        'batch': f'{batch * world} ({t.micro_batch} x {t.grad_accum} accumulation x {world} processes)' if world
                 else f'{batch} per process ({t.micro_batch} x {t.grad_accum} accumulation)',
        'precision': t.precision,
        'drop path': cfg.model.drop_path_rate,
        'augmentation': f'RandAugment {aug.auto_augment or "off"}, random erasing {aug.re_prob}, mixup {t.mixup}, '
                        f'cutmix {t.cutmix}',
        'EMA': t.ema_decay if t.ema_decay is not None else 'off',
        'tasks trained': ', '.join(f'{name} ({tc.num_classes} classes)' for name, tc in cfg.tasks.items()),
        'started from': 'pretrained weights (init.checkpoint)' if cfg.init is not None else 'random initialization',
    }
    return out


def usage(hub_id: Optional[str]) -> str:
    source = f"'hf-hub:{hub_id}'" if hub_id else "'local-dir:<this folder>'"
    return f"""The architecture's code is this project's: install it (the models alone need torch, timm and
safetensors: see the replk-pretrain README), then

```python
import timm
import pretrain.models  # registers the RepLKNet variants with timm

model = timm.create_model({source}, pretrained=True).eval()
config = timm.data.resolve_data_config({{}}, model=model)
transform = timm.data.create_transform(**config)
```
"""
