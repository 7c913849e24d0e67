"""Typed, strict run configs (README, "Run config reference"): one JSON file, sections as dataclasses.

Unknown keys, wrong types and inconsistent values are errors naming the field;
``--set section.field=value`` overrides parse the value as JSON (bare words as strings).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

from shards.common.safe_files import check_name
from shards.typed import ConfigError, build  # noqa: F401  (re-exported: the loaders share one builder)

from .tracking import MlflowConfig, WandbConfig


@dataclass
class ModelConfig:
    name: str = 'replknet_xl'
    """any timm-registered model"""
    drop_path_rate: float = 0.0
    """stochastic depth rate"""
    kwargs: Dict[str, Any] = field(default_factory=dict)
    """extra timm.create_model arguments"""
    grad_checkpointing: bool = False
    """recompute activations in backward (saves memory)"""
    channels_last: bool = True
    """inputs (not parameters) in channels-last, on every device"""
    sync_bn: Literal['none', 'node', 'global'] = 'none'
    """BN statistics over this rank (none), its node (node) or all ranks (global)"""

    def __post_init__(self):
        from .models.checkpoint import loader_args_in
        if loader_args_in(self.kwargs):   # a downloaded run folder's config.json must not steer timm's loader
            raise ConfigError(f'model.kwargs: {loader_args_in(self.kwargs)} would make timm load weights itself '
                              '(unpickling them); start from weights with init.checkpoint instead')


@dataclass
class SourceConfig:
    name: str
    """a source name in the shard index (e.g. in1k, yfcc)"""
    url: str
    """shard prefix holding the shard index (_index/), or a brace pattern"""
    weight: Optional[float] = None
    """mixing weight; null: by sample count"""
    allow_incomplete: bool = False
    """train on a source whose build jobs did not all finish (its missing shards are named in a warning); false: an error"""


@dataclass
class DataConfig:
    sources: List[SourceConfig] = field(default_factory=list)
    """training sources: [{name, url, weight}]"""
    label_store: Optional[str] = None
    """labels/{task}/... root; None: human labels from shard metadata"""
    labels_refresh: bool = False
    """at a resume, train on the store's labels as they are now (each changed task logged and recorded) instead of those the run started with"""  # noqa: E501  (one line: the README reference)
    image_size: int = 224
    """training and evaluation input size"""
    mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)
    """normalization mean (RGB, 0-1)"""
    std: Tuple[float, float, float] = (0.229, 0.224, 0.225)
    """normalization std"""
    auto_augment: Optional[str] = 'rand-m9-mstd0.5-inc1'
    """timm RandAugment spec; null: none"""
    re_prob: float = 0.0
    """random erasing probability"""
    interpolation: str = 'bicubic'
    """resize interpolation"""
    crop_scale: Tuple[float, float] = (0.08, 1.0)
    """RandomResizedCrop area range"""
    hflip: float = 0.5
    """horizontal flip probability"""
    workers: int = 8
    """DataLoader workers per rank (decode + augment + label join)"""
    shuffle_buffer: int = 500
    """samples shuffled within each worker"""
    few_shards: Literal['error', 'share'] = 'error'
    """fewer shards than ranks x workers: an error, or share (slots read parts of shards)"""
    max_corrupt_fraction: float = 0.01
    """stop when more samples than this are undecodable"""
    exclude: Optional[str] = None
    """exclusion list to leave out (replk-shards decontaminate): near-duplicates of evaluation images"""
    tasks_file: Optional[str] = None
    """JSON of user tasks (class names or counts); built in: in1k, in22k, places365"""
    val_sources: List[SourceConfig] = field(default_factory=list)
    """evaluation sources (labeled); every sample once"""
    val_crop_pct: float = 0.875
    """evaluation: resize to size / crop_pct, center crop"""


@dataclass
class TaskConfig:
    num_classes: int
    """head size; must match the label store's task"""
    weight: float = 1.0
    """weight of this task's loss"""
    label_smoothing: float = 0.1
    """applied to human labels only"""
    class_map_version: Optional[str] = None
    """checked against the label store when given"""


@dataclass
class OptimConfig:
    name: Literal['adamw', 'sgd'] = 'adamw'
    """the optimizer (sgd: with momentum, Nesterov's when optim.nesterov)"""
    lr: float = 1.5e-3
    """base lr (the head's under layer decay), per total batch"""
    weight_decay: float = 0.05
    """none on norms and biases"""
    betas: Tuple[float, float] = (0.9, 0.999)
    """adamw"""
    eps: float = 1e-8
    """adamw"""
    momentum: float = 0.9
    """sgd"""
    nesterov: bool = False
    """sgd: Nesterov momentum instead of plain (the appendix's MobileNet V2 recipe: plain momentum 0.9)"""
    layer_decay: Optional[float] = None
    """stage-wise lr decay (fine-tuning), e.g. 0.4"""
    layer_decay_granularity: Literal['stage', 'block'] = 'stage'
    """one lr per stage (stem, stages, head) or per block"""


@dataclass
class ScheduleConfig:
    epochs: float = 15.0
    """length of the cosine schedule"""
    warmup_epochs: float = 1.0
    """linear warm-up"""
    min_lr_ratio: float = 0.0
    """final lr / base lr"""
    max_steps: Optional[int] = None
    """stop early (quick runs, tests)"""


@dataclass
class TrainConfig:
    seed: int = 0
    """weights, data order and augmentation"""
    micro_batch: int = 32
    """per rank"""
    grad_accum: int = 1
    """micro-batches per optimizer step"""
    precision: Literal['fp32', 'bf16'] = 'bf16'
    """bf16: autocast; parameters and BatchNorm stay fp32"""
    max_nonfinite_steps: int = 5
    """stop after this many non-finite steps in a row"""
    mixup: float = 0.0
    """mixup alpha (0: off)"""
    cutmix: float = 0.0
    """CutMix alpha (0: off)"""
    mixup_prob: float = 1.0
    """probability of mixing a batch"""
    mixup_switch_prob: float = 0.5
    """probability of CutMix instead of mixup"""
    ema_decay: Optional[float] = None
    """EMA of the weights (the paper's momentum 1e-4 = 0.9999)"""
    compile: Literal['none', 'inductor'] = 'none'
    """inductor: the model compiled inside the DeepSpeed engine (training and evaluation; BatchNorm and elementwise ops fuse), large-kernel algorithms decided by one eager forward first"""  # noqa: E501


@dataclass
class InitConfig:
    """Starting weights: a run folder (its ZeRO checkpoint is consolidated), a .pt/.pth/.bin
    file (ours, consolidated fp32, or an official RepLKNet release) or a .safetensors file."""
    checkpoint: str
    """run folder, .pt/.pth/.bin, .safetensors or an official release"""
    tag: Optional[str] = None
    """run folder: this step-N instead of the newest committed"""
    trust_pickle: bool = False
    """allow code execution when unpickling it (trusted files only)"""


@dataclass
class EvalConfig:
    every_steps: int = 0
    """evaluation interval; 0: only at the end"""
    max_batches: Optional[int] = None
    """evaluation batches per rank (null: all)"""


@dataclass
class CheckpointConfig:
    dir: str = 'runs/default'
    """run folder: config.json, ckpt/, metrics.jsonl, tb/, train.log"""
    every_steps: int = 1000
    """checkpoint interval (and at the end)"""
    keep: int = 2
    """newest committed checkpoints kept"""
    resume: Literal['auto', 'must', 'never'] = 'auto'
    """auto: from the newest committed checkpoint if any; must: fail without one; never: start fresh"""
    lease_timeout_s: float = 300.0
    """a run folder's lease whose heartbeat is older than this belonged to a dead trainer and is taken over"""
    preempt_signals: List[str] = field(default_factory=lambda: ['SIGTERM', 'SIGUSR1'])
    """on any of these signals every rank checkpoints at the next step and the run exits with code 75; []: the default action"""


@dataclass
class LogConfig:
    every_steps: int = 10
    """a console line and a metrics row every this many steps"""
    tensorboard: bool = True
    """TensorBoard scalars under {dir}/tb"""
    wandb: Optional[WandbConfig] = None
    """report to Weights & Biases (pip install "replk-pretrain[tracking]"); {} for the defaults"""
    mlflow: Optional[MlflowConfig] = None
    """report to MLflow: {"tracking_uri": ...} (pip install "replk-pretrain[tracking]")"""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tasks: Dict[str, TaskConfig] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    init: Optional[InitConfig] = None
    deepspeed: Dict[str, Any] = field(default_factory=dict)
    """passed to deepspeed.initialize unchanged"""
    description: str = ''
    launch: str = ''


def task_classes(tasks: Dict[str, TaskConfig]) -> Dict[str, int]:
    """task -> number of classes: what heads, label joins and evaluation are built from."""
    return {name: task.num_classes for name, task in tasks.items()}


def apply_overrides(doc: dict, overrides: List[str]) -> dict:
    """``["optim.lr=1e-3", "train.precision=fp32"]`` onto the raw JSON document."""
    for item in overrides:
        if '=' not in item:
            raise ConfigError(f'override {item!r}: expected section.field=value')
        path, raw = item.split('=', 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = doc
        keys = path.split('.')
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f'override {item!r}: {k} is not a section')
        node[keys[-1]] = value
    return doc


def load_config(path: str, overrides: Optional[List[str]] = None) -> RunConfig:
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f'config {path} not found') from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f'{path}: not valid JSON ({exc})') from None
    cfg = build(RunConfig, apply_overrides(doc, overrides or []), '')
    check_static(cfg)
    return cfg


# (section, field): (low, high, low inclusive, high inclusive); None: unbounded on that side.
RANGES = {
    ('model', 'drop_path_rate'): (0, 1, True, False),
    ('data', 'image_size'): (8, None, True, True), ('data', 'workers'): (0, None, True, True),
    ('data', 'shuffle_buffer'): (0, None, True, True), ('data', 'max_corrupt_fraction'): (0, 1, True, True),
    ('data', 're_prob'): (0, 1, True, True), ('data', 'hflip'): (0, 1, True, True),
    ('data', 'val_crop_pct'): (0, 1, False, True),
    ('optim', 'lr'): (0, None, False, True), ('optim', 'weight_decay'): (0, None, True, True),
    ('optim', 'eps'): (0, None, False, True), ('optim', 'momentum'): (0, 1, True, False),
    ('schedule', 'epochs'): (0, None, False, True), ('schedule', 'warmup_epochs'): (0, None, True, True),
    ('schedule', 'min_lr_ratio'): (0, 1, True, True), ('schedule', 'max_steps'): (1, None, True, True),
    ('train', 'max_nonfinite_steps'): (1, None, True, True), ('train', 'mixup'): (0, None, True, True),
    ('train', 'cutmix'): (0, None, True, True), ('train', 'mixup_prob'): (0, 1, True, True),
    ('train', 'mixup_switch_prob'): (0, 1, True, True), ('train', 'ema_decay'): (0, 1, False, False),
    ('eval', 'every_steps'): (0, None, True, True), ('eval', 'max_batches'): (1, None, True, True),
    ('checkpoint', 'every_steps'): (1, None, True, True), ('log', 'every_steps'): (1, None, True, True),
}


def check_ranges(cfg: RunConfig) -> None:
    def bad(where: str, value, lo, hi, lo_in, hi_in) -> None:
        left = '[' if lo_in else '('
        right = ']' if hi_in else ')'
        raise ConfigError(f'{where}={value!r} is outside {left}{"-inf" if lo is None else lo}, '
                          f'{"inf" if hi is None else hi}{right}')

    def check(where: str, value, lo, hi, lo_in, hi_in) -> None:
        if value is None:
            return  # optional and unset
        if (lo is not None and (value < lo or (value == lo and not lo_in))) or \
                (hi is not None and (value > hi or (value == hi and not hi_in))):
            bad(where, value, lo, hi, lo_in, hi_in)
    for (section, name), bounds in RANGES.items():
        check(f'{section}.{name}', getattr(getattr(cfg, section), name), *bounds)
    for i, beta in enumerate(cfg.optim.betas):
        check(f'optim.betas[{i}]', beta, 0, 1, True, False)
    lo, hi = cfg.data.crop_scale
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f'data.crop_scale={list(cfg.data.crop_scale)}: need 0 < min <= max <= 1')
    for name, task in cfg.tasks.items():
        check(f'tasks.{name}.weight', task.weight, 0, None, True, True)
        check(f'tasks.{name}.label_smoothing', task.label_smoothing, 0, 1, True, False)


def check_static(cfg: RunConfig) -> None:
    """Consistency that does not depend on the launch."""
    check_ranges(cfg)
    if not cfg.tasks:
        raise ConfigError('tasks: name at least one task (one head each)')
    for name, task in cfg.tasks.items():
        try:
            check_name(name, 'tasks: task name')
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if task.num_classes < 1:
            raise ConfigError(f'tasks.{name}.num_classes: must be >= 1')
    if cfg.train.micro_batch < 1 or cfg.train.grad_accum < 1:
        raise ConfigError('train.micro_batch and train.grad_accum must be >= 1')
    if cfg.checkpoint.keep < 2:
        raise ConfigError('checkpoint.keep: keep at least 2 checkpoints (one may be mid-write)')
    for key in ('train_micro_batch_size_per_gpu', 'gradient_accumulation_steps'):
        if key in cfg.deepspeed:
            raise ConfigError(f'deepspeed.{key}: set by train.micro_batch / train.grad_accum; remove it')
    if cfg.train.ema_decay is not None and cfg.deepspeed.get('zero_optimization', {}).get('stage', 0) == 3:
        raise ConfigError('train.ema_decay: EMA needs the full weights on every rank: use ZeRO stage 1 or 2')
    if cfg.optim.layer_decay is not None and not 0 < cfg.optim.layer_decay <= 1:
        raise ConfigError(f'optim.layer_decay: {cfg.optim.layer_decay} is not in (0, 1]')
    check_precision_sections(cfg.deepspeed, cfg.train.precision)
    for key in ('optimizer', 'scheduler'):
        if key in cfg.deepspeed:
            raise ConfigError(f'deepspeed.{key}: the optimizer and schedule come from the optim and schedule '
                              'sections (stage-wise lr ratios need our own schedule)')


def check_precision_sections(ds: dict, precision: str) -> None:
    """Mixed precision has one source, train.precision (see pretrain/ds_config.py)."""
    for key in ('bf16', 'fp16', 'amp'):
        if ds.get(key, {}).get('enabled'):
            raise ConfigError(f'deepspeed.{key}: mixed precision comes from train.precision (torch autocast, '
                              'parameters and BatchNorm in fp32); remove this section')
    user = ds.get('torch_autocast')
    if user is not None and bool(user.get('enabled')) != (precision == 'bf16'):
        raise ConfigError(f'deepspeed.torch_autocast.enabled={user.get("enabled")} contradicts '
                          f'train.precision={precision!r}; remove the section or make them agree')


def check_launch(cfg: RunConfig, world_size: int) -> None:
    """Consistency with the actual world size."""
    total = cfg.deepspeed.get('train_batch_size')
    expected = cfg.train.micro_batch * cfg.train.grad_accum * world_size
    if total is not None and total != expected:
        raise ConfigError(f'deepspeed.train_batch_size={total} but train.micro_batch {cfg.train.micro_batch} x '
                          f'train.grad_accum {cfg.train.grad_accum} x world size {world_size} = {expected}')


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)
