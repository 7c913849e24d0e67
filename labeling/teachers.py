"""Teachers: classifiers for one task (timm or transformers), from local files or a hub id.

Each teacher brings its own eval preprocessing (from the model's config). An ensemble
averages the teachers' tempered probabilities; its members must share a preprocessing.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torchvision import transforms as T

from pretrain.models.checkpoint import loader_args_in
from shards.common.config import section
from shards.common.errors import BadValue, NotFound
from shards.common.safe_files import load_torch_file


@section(frozen=True)
class TeacherSpec:
    kind: Literal['timm', 'transformers', 'export']
    """timm, transformers, or export (a folder pretrain.export wrote)"""
    model: str = ''
    """timm name, or a transformers model folder / hub id (export: read from the folder)"""
    weights: Optional[str] = None
    """timm: a local .safetensors/.pth/.bin file, or 'hub'"""
    temperature: float = Field(1.0, gt=0)
    """its logits are divided by this before the softmax"""
    model_kwargs: Dict[str, Any] = Field(default_factory=dict)
    """extra timm.create_model / from_pretrained arguments"""
    trust_pickle: bool = False
    """timm .pth/.bin: allow code execution when unpickling (trusted files only)"""
    trust_remote_code: bool = False
    """transformers: run the model repository's own Python code"""
    path: Optional[str] = None
    """export: the export folder (or its model.safetensors)"""

    @model_validator(mode='after')
    def _complete(self):
        if self.kind == 'export':
            if not self.path or self.model or self.weights or self.model_kwargs:
                raise ValueError('an "export" teacher takes "path" (the folder pretrain.export wrote) and reads its '
                                 'architecture, shape, weights and preprocessing from there: drop model, weights '
                                 'and model_kwargs')
            return self
        if not self.model:
            raise ValueError(f'a {self.kind} teacher needs "model"')
        if self.kind == 'timm' and not self.weights:
            raise ValueError(f'timm teacher {self.model!r} needs "weights": a local file or "hub"')
        if loader_args_in(self.model_kwargs):
            raise ValueError(f'teacher {self.model!r}: {loader_args_in(self.model_kwargs)} in model_kwargs would make '
                             'timm load weights itself (unpickling them); name the file in "weights"')
        if 'trust_remote_code' in self.model_kwargs:
            raise ValueError(f'teacher {self.model!r}: set "trust_remote_code": true on the teacher itself, '
                             'not inside model_kwargs (it runs code from the model repository)')
        return self


@dataclass(frozen=True)
class Preprocess:
    size: tuple                # (h, w) fed to the model
    resize: object             # int (shorter side) or (h, w) (squash)
    center_crop: bool
    interpolation: str
    mean: tuple
    std: tuple

    def min_decode_side(self) -> int:
        """The shorter side a decoded image needs so that resizing never upsamples what a full
        decode would have downsampled (JPEG draft mode may decode at 1/2, 1/4, 1/8 scale)."""
        return self.resize if isinstance(self.resize, int) else max(self.resize)

    def transform(self):
        """PIL -> uint8 CHW tensor; normalization happens on the device."""
        steps = [T.Resize(self.resize, interpolation=T.InterpolationMode(self.interpolation))]
        if self.center_crop:
            steps.append(T.CenterCrop(self.size))
        steps.append(T.PILToTensor())
        return T.Compose(steps)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(16 << 20):
            h.update(chunk)
    return h.hexdigest()


class Teacher(nn.Module):
    def __init__(self, spec: TeacherSpec, model: nn.Module, preprocess: Preprocess, weights_hash: str,
                 name: Optional[str] = None):
        super().__init__()
        self.spec, self.model, self.preprocess, self.weights_hash = spec, model, preprocess, weights_hash
        self.name = name or spec.model
        self.is_hf = spec.kind == 'transformers'

    def identity(self) -> dict:
        out = dict(kind=self.spec.kind, model=self.spec.model, weights_sha256=self.weights_hash,
                   temperature=self.spec.temperature)
        if self.spec.kind == 'export':   # new kinds name their preprocessing too (older identities stay as they were)
            # the architecture, not the folder: a moved export is the same teacher (its weights hash says so)
            out.update(model=self.name, preprocess=json.loads(json.dumps(asdict(self.preprocess))))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x).logits if self.is_hf else self.model(x)
        return F.softmax(out.float() / self.spec.temperature, dim=-1)


def read_timm_weights(path: str, trust_pickle: bool = False) -> dict:
    """A state dict from .safetensors, or from a torch file loaded without code execution (unless
    trusted), unwrapped from the usual ``state_dict``/``model`` containers."""
    from timm.models import clean_state_dict

    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path)
    state = load_torch_file(path, trust_pickle)
    while isinstance(state, dict) and not all(torch.is_tensor(v) for v in state.values()):
        inner = next((state[k] for k in ('state_dict', 'model')  # timm's load_checkpoint order
                      if isinstance(state.get(k), dict)), None)
        if inner is None:
            raise BadValue(f'{path}: no state dict of tensors inside (keys {sorted(state)[:8]})')
        state = inner
    return clean_state_dict(state)


def _timm_teacher(spec: TeacherSpec, num_classes: int) -> Teacher:
    import timm

    import pretrain.models  # noqa: F401  (the project's own models, e.g. a RepLKNet teacher, by timm name)
    if spec.weights == 'hub':
        model = timm.create_model(spec.model, pretrained=True, num_classes=num_classes, **spec.model_kwargs)
        digest = f'hub:{spec.model}'
    else:
        if not os.path.isfile(spec.weights):
            raise NotFound(f'teacher weights {spec.weights} not found')
        model = timm.create_model(spec.model, pretrained=False, num_classes=num_classes, **spec.model_kwargs)
        model.load_state_dict(read_timm_weights(spec.weights, spec.trust_pickle), strict=True)
        digest = file_sha256(spec.weights)
    return Teacher(spec, model, timm_preprocess(model), digest)


def _export_teacher(spec: TeacherSpec, num_classes: int, class_names: Optional[Sequence[str]] = None) -> Teacher:
    """A model this project trained and exported: everything (architecture, shape, form, classes,
    input size, crop, statistics) comes from the export's config.json."""
    from pretrain.models.checkpoint import export_meta, load_exported  # the pure model library

    folder = Path(spec.path)
    file = folder / 'model.safetensors' if folder.is_dir() else folder
    if not file.is_file():
        raise NotFound(f'teacher export {spec.path}: no model.safetensors there (run python -m pretrain.export)')
    meta = export_meta(file)
    if meta is None:
        raise BadValue(f'teacher export {spec.path}: no config.json of pretrain.export beside {file.name}')
    if meta['num_classes'] != num_classes:
        raise BadValue(f'teacher export {spec.path} predicts {meta["num_classes"]} classes (task {meta["task"]}), '
                         f'the task has {num_classes}')
    if meta['pretrained_cfg'].get('label_names'):
        check_class_names(spec.path, meta['pretrained_cfg']['label_names'], class_names)
    model, _ = load_exported(file)
    return Teacher(spec, model, timm_preprocess(model), file_sha256(str(file)), name=meta['architecture'])


def timm_preprocess(model: nn.Module) -> Preprocess:
    """The eval preprocessing of a timm model from its own pretrained config (an export's: the size it
    was trained and exported at); a model built for another input size than its config says (e.g. a
    ViT with ``img_size``) runs at the size it was built for."""
    from timm.data import resolve_data_config
    cfg = resolve_data_config({}, model=model)
    built = getattr(getattr(model, 'patch_embed', None), 'img_size', None)
    h, w = tuple(built) if built and tuple(built) != tuple(cfg['input_size'][1:]) else cfg['input_size'][1:]
    crop_pct = cfg.get('crop_pct') or 1.0
    return Preprocess(size=(h, w), resize=int(h / crop_pct), center_crop=True,
                      interpolation=cfg.get('interpolation', 'bicubic'), mean=tuple(cfg['mean']), std=tuple(cfg['std']))


def check_class_names(teacher: str, theirs: List[str], ours: Optional[Sequence[str]]) -> None:
    """A teacher naming its classes in the task's own words must name them in the task's order.

    Names in another scheme (WordNet ids vs descriptions) or generic ones (``LABEL_3``) share no
    name with the task and cannot be compared; a shared name at another index is a wrong mapping."""
    if not ours:
        return
    norm = [str(n).strip().lower() for n in theirs]
    task_norm = [str(n).strip().lower() for n in ours]
    if not set(norm) & set(task_norm) or norm == task_norm:
        return
    wrong = [(i, t, o) for i, (t, o) in enumerate(zip(theirs, ours)) if str(t).strip().lower() != str(o).strip().lower()]
    raise BadValue(f'teacher {teacher}: its class names do not match the task\'s (index: teacher vs task) '
                     + ', '.join(f'{i}: {t!r} vs {o!r}' for i, t, o in wrong[:5])
                     + ': reorder the tasks file or the teacher\'s id2label')


def _hf_teacher(spec: TeacherSpec, num_classes: int, class_names: Optional[Sequence[str]] = None) -> Teacher:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(spec.model, trust_remote_code=spec.trust_remote_code,
                                                            **spec.model_kwargs)
    if model.config.num_labels != num_classes:
        raise BadValue(f'teacher {spec.model} predicts {model.config.num_labels} classes, the task has {num_classes}')
    check_class_names(spec.model, [model.config.id2label[i] for i in range(num_classes)], class_names)
    proc = AutoImageProcessor.from_pretrained(spec.model, trust_remote_code=spec.trust_remote_code)
    size = proc.size
    h, w = (size['height'], size['width']) if 'height' in size else (size['shortest_edge'],) * 2
    resample = {0: 'nearest', 2: 'bilinear', 3: 'bicubic'}.get(int(getattr(proc, 'resample', 2)), 'bilinear')
    pre = Preprocess(size=(h, w), resize=(h, w), center_crop=False, interpolation=resample,
                     mean=tuple(proc.image_mean), std=tuple(proc.image_std))
    weights = [p for p in ('model.safetensors', 'pytorch_model.bin') if (Path(spec.model) / p).is_file()]
    digest = file_sha256(str(Path(spec.model) / weights[0])) if weights else f'hub:{spec.model}'
    return Teacher(spec, model, pre, digest)


def load_teacher(spec: TeacherSpec, num_classes: int, class_names: Optional[Sequence[str]] = None) -> Teacher:
    """``class_names``: the task's, checked against a transformers teacher's ``id2label``."""
    if spec.kind == 'export':
        teacher = _export_teacher(spec, num_classes, class_names)
    elif spec.kind == 'timm':
        teacher = _timm_teacher(spec, num_classes)
    else:
        teacher = _hf_teacher(spec, num_classes, class_names)
    return teacher.eval()


class Ensemble(nn.Module):
    """Average of the members' probabilities; all members see the same preprocessed batch."""

    def __init__(self, teachers: List[Teacher]):
        super().__init__()
        if not teachers:
            raise BadValue('a task needs at least one teacher')
        first = teachers[0].preprocess
        for t in teachers[1:]:
            if t.preprocess != first:
                raise BadValue(f'ensemble members need one preprocessing: {teachers[0].spec.model} uses '
                                 f'{asdict(first)}, {t.spec.model} uses {asdict(t.preprocess)}')
        self.teachers = nn.ModuleList(teachers)
        self.preprocess = first

    def identity(self) -> list:
        return [t.identity() for t in self.teachers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([t(x) for t in self.teachers]).mean(0)
