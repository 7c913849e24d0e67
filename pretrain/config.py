"""Typed, strict run configs (README, "Run config reference"): one JSON file, sections as validated
dataclasses (``shards/common/config.py``); ``data`` is built from the shards layer's own configs.

Unknown keys, wrong types and out-of-range values are errors naming the field;
``--set section.field=value`` overrides parse the value as JSON (bare words as strings).
A document from an older version (a run's saved config.json) is upgraded first (``config_migration.py``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Optional, Tuple

from pydantic import Field, model_validator

from shards.common.config import ConfigError, from_doc, section
from shards.common.safe_files import check_name
from shards.stream import SourceSpec, StreamConfig
from shards.transforms import TransformConfig

from .config_migration import CONFIG_VERSION, MOVED, current_path, upgrade
from .tracking import MlflowConfig, WandbConfig

Probability = Annotated[float, Field(ge=0, lt=1)]


@section
class ModelConfig:
    name: str = 'replknet_xl'
    """any timm-registered model"""
    drop_path_rate: float = Field(0.0, ge=0, lt=1)
    """stochastic depth rate"""
    kwargs: Dict[str, Any] = Field(default_factory=dict)
    """extra timm.create_model arguments"""
    grad_checkpointing: bool = False
    """recompute activations in backward (saves memory)"""
    channels_last: bool = True
    """inputs (not parameters) in channels-last, on every device"""
    sync_bn: Literal['none', 'node', 'global'] = 'none'
    """BN statistics over this rank (none), its node (node) or all ranks (global)"""

    @model_validator(mode='after')
    def _no_loader_args(self):
        from .models.checkpoint import loader_args_in
        if loader_args_in(self.kwargs):   # a downloaded run folder's config.json must not steer timm's loader
            raise ValueError(f'kwargs {loader_args_in(self.kwargs)} would make timm load weights itself '
                             '(unpickling them); start from weights with init.checkpoint instead')
        return self


@section
class DataConfig:
    sources: List[SourceSpec] = Field(default_factory=list)
    """training sources: [{name, url, weight, allow_incomplete}]"""
    val_sources: List[SourceSpec] = Field(default_factory=list)
    """evaluation sources (labeled); every sample once"""
    label_store: Optional[str] = None
    """labels/{task}/... root; None: human labels from shard metadata"""
    labels_refresh: bool = False
    """at a resume, train on the store's labels as they are now (each changed task logged and recorded) instead of those the run started with"""  # noqa: E501  (one line: the README reference)
    tasks_file: Optional[str] = None
    """JSON of user tasks (class names or counts); built in: in1k, in22k, places365"""
    workers: int = Field(8, ge=0)
    """DataLoader workers per rank (decode + augment + label join)"""
    transform: TransformConfig = TransformConfig()
    """augmentation, evaluation crop and normalization (shards/transforms.py)"""
    stream: StreamConfig = StreamConfig()
    """how the training sources are read: shuffling, exclusions, corrupt samples, retries (shards/stream.py)"""


@section
class TaskConfig:
    num_classes: int = Field(ge=1)
    """head size; must match the label store's task"""
    weight: float = Field(1.0, ge=0)
    """weight of this task's loss"""
    label_smoothing: Probability = 0.1
    """applied to human labels only"""
    class_map_version: Optional[str] = None
    """checked against the label store when given"""


@section
class OptimConfig:
    name: Literal['adamw', 'sgd'] = 'adamw'
    """the optimizer (sgd: with momentum, Nesterov's when optim.nesterov)"""
    lr: float = Field(1.5e-3, gt=0)
    """base lr (the head's under layer decay), per total batch"""
    weight_decay: float = Field(0.05, ge=0)
    """none on norms and biases"""
    betas: Tuple[Probability, Probability] = (0.9, 0.999)
    """adamw"""
    eps: float = Field(1e-8, gt=0)
    """adamw"""
    momentum: Probability = 0.9
    """sgd"""
    nesterov: bool = False
    """sgd: Nesterov momentum instead of plain (the appendix's MobileNet V2 recipe: plain momentum 0.9)"""
    layer_decay: Optional[float] = Field(None, gt=0, le=1)
    """stage-wise lr decay (fine-tuning), e.g. 0.4"""
    layer_decay_granularity: Literal['stage', 'block'] = 'stage'
    """one lr per stage (stem, stages, head) or per block"""


@section
class ScheduleConfig:
    epochs: float = Field(15.0, gt=0)
    """length of the cosine schedule"""
    warmup_epochs: float = Field(1.0, ge=0)
    """linear warm-up"""
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    """final lr / base lr"""
    max_steps: Optional[int] = Field(None, ge=1)
    """stop early (quick runs, tests)"""


@section
class TrainConfig:
    seed: int = 0
    """weights, data order and augmentation"""
    micro_batch: int = Field(32, ge=1)
    """per rank"""
    grad_accum: int = Field(1, ge=1)
    """micro-batches per optimizer step"""
    precision: Literal['fp32', 'bf16'] = 'bf16'
    """bf16: autocast; parameters and BatchNorm stay fp32"""
    max_nonfinite_steps: int = Field(5, ge=1)
    """stop after this many non-finite steps in a row"""
    mixup: float = Field(0.0, ge=0)
    """mixup alpha (0: off)"""
    cutmix: float = Field(0.0, ge=0)
    """CutMix alpha (0: off)"""
    mixup_prob: float = Field(1.0, ge=0, le=1)
    """probability of mixing a batch"""
    mixup_switch_prob: float = Field(0.5, ge=0, le=1)
    """probability of CutMix instead of mixup"""
    ema_decay: Optional[float] = Field(None, gt=0, lt=1)
    """EMA of the weights (the paper's momentum 1e-4 = 0.9999)"""
    compile: Literal['none', 'inductor'] = 'none'
    """inductor: the model compiled inside the DeepSpeed engine (training and evaluation; BatchNorm and elementwise ops fuse), large-kernel algorithms decided by one eager forward first"""  # noqa: E501


@section
class InitConfig:
    """Starting weights: a run folder (its ZeRO checkpoint is consolidated), a .pt/.pth/.bin
    file (ours, consolidated fp32, or an official RepLKNet release) or a .safetensors file."""
    checkpoint: str
    """run folder, .pt/.pth/.bin, .safetensors or an official release"""
    tag: Optional[str] = None
    """run folder: this step-N instead of the newest committed"""
    trust_pickle: bool = False
    """allow code execution when unpickling it (trusted files only)"""


@section
class EvalConfig:
    every_steps: int = Field(0, ge=0)
    """evaluation interval; 0: only at the end"""
    max_batches: Optional[int] = Field(None, ge=1)
    """evaluation batches per rank (null: all)"""


@section
class CheckpointConfig:
    dir: str = 'runs/default'
    """run folder: config.json, ckpt/, metrics.jsonl, tb/, train.log"""
    every_steps: int = Field(1000, ge=1)
    """checkpoint interval (and at the end)"""
    keep: int = Field(2, ge=2)
    """newest committed checkpoints kept (at least 2: one may be mid-write)"""
    resume: Literal['auto', 'must', 'never'] = 'auto'
    """auto: from the newest committed checkpoint if any; must: fail without one; never: start fresh"""
    lease_timeout_s: float = Field(300.0, gt=0)
    """a run folder's lease whose heartbeat is older than this belonged to a dead trainer and is taken over"""
    preempt_signals: List[str] = Field(default_factory=lambda: ['SIGTERM', 'SIGUSR1'])
    """on any of these signals every rank checkpoints at the next step and the run exits with code 75; []: the default action"""


@section
class LogConfig:
    every_steps: int = Field(10, ge=1)
    """a console line and a metrics row every this many steps"""
    tensorboard: bool = True
    """TensorBoard scalars under {dir}/tb"""
    wandb: Optional[WandbConfig] = None
    """report to Weights & Biases (pip install "replk-pretrain[tracking]"); {} for the defaults"""
    mlflow: Optional[MlflowConfig] = None
    """report to MLflow: {"tracking_uri": ...} (pip install "replk-pretrain[tracking]")"""


@section
class RunConfig:
    launch: str = ''
    """how to launch it (documentation only)"""
    version: Literal[CONFIG_VERSION] = CONFIG_VERSION
    """the config layout; older documents are upgraded when read"""
    description: str = ''
    """what the run is (documentation only)"""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """the network (a timm model) and how it runs"""
    data: DataConfig = Field(default_factory=DataConfig)
    """what it trains and evaluates on, and how images are read and augmented"""
    tasks: Dict[str, TaskConfig] = Field(default_factory=dict)
    """one head per task (name -> its settings); at least one"""
    optim: OptimConfig = Field(default_factory=OptimConfig)
    """the optimizer"""
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    """the lr schedule and the run's length"""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """the step: batch, precision, mixing, EMA, compilation"""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """evaluation on data.val_sources"""
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """the run folder, checkpoints and resume"""
    log: LogConfig = Field(default_factory=LogConfig)
    """console, metrics and trackers"""
    init: Optional[InitConfig] = None
    """starting weights; null: random initialization"""
    deepspeed: Dict[str, Any] = Field(default_factory=dict)
    """passed to deepspeed.initialize, with batch sizes, precision (torch_autocast) and bucket sizes filled in (pretrain/ds_config.py)"""  # noqa: E501


def task_classes(tasks: Dict[str, TaskConfig]) -> Dict[str, int]:
    """task -> number of classes: what heads, label joins and evaluation are built from."""
    return {name: task.num_classes for name, task in tasks.items()}


def apply_overrides(doc: dict, overrides: List[str]) -> dict:
    """``["optim.lr=1e-3", "train.precision=fp32"]`` onto the raw JSON document."""
    for item in overrides:
        if '=' not in item:
            raise ConfigError(f'override {item!r}: expected section.field=value')
        path, raw = item.split('=', 1)
        path = current_path(path)
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
    cfg = run_config(apply_overrides(upgrade(doc, path), overrides or []), path)
    check_static(cfg)
    return cfg


def run_config(doc: dict, where: str = '') -> RunConfig:
    """A run config from a document of this version (``upgrade`` an older one first)."""
    return from_doc(RunConfig, doc, where, moved=MOVED)


def saved_run_config(path) -> RunConfig:
    """The config a run folder's config.json (or an export's record of it) holds, of any version."""
    doc = json.loads(Path(path).read_text())
    return run_config(upgrade(doc, str(path)), str(path))


def check_static(cfg: RunConfig) -> None:
    """Consistency that does not depend on the launch."""
    if not cfg.tasks:
        raise ConfigError('tasks: name at least one task (one head each)')
    for name, task in cfg.tasks.items():
        try:
            check_name(name, 'tasks: task name')
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    for key in ('train_micro_batch_size_per_gpu', 'gradient_accumulation_steps'):
        if key in cfg.deepspeed:
            raise ConfigError(f'deepspeed.{key}: set by train.micro_batch / train.grad_accum; remove it')
    if cfg.train.ema_decay is not None and cfg.deepspeed.get('zero_optimization', {}).get('stage', 0) == 3:
        raise ConfigError('train.ema_decay: EMA needs the full weights on every rank: use ZeRO stage 1 or 2')
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
