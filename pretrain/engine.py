"""The training engine shared by pretraining and fine-tuning: model, data, DeepSpeed, the step."""
from __future__ import annotations

import logging
from typing import Dict, Iterable, Iterator, List, Optional

import numpy as np
import timm
import torch
import torch.distributed as dist
from torch import nn

import pretrain.models  # noqa: F401  (registers RepLKNet with timm)
from torch.utils.data import DataLoader

from shards.loader import EvalShards, ResumableLoader, ShardStream
from shards.plan import seed_global_rngs
from shards.stream import SourceSpec, StreamConfig
from shards.transforms import DeviceNormalize, TransformConfig, eval_transform, train_transform

from .batchnorm import apply_sync_bn, average_running_stats
from .config import RunConfig
from .ds_config import deepspeed_config
from .distributed import DistEnv
from .labels import LabelJoiner
from .loss import dense_targets, multitask_loss
from .mixup import MultiTaskMixup
from .train_state import ModuleWeights, Part, RngState
from .models import RepLKNet

log = logging.getLogger(__name__)


class MultiHead(nn.Module):
    """One linear head per task on any timm backbone without native dict heads."""

    def __init__(self, backbone: nn.Module, heads: Dict[str, int]):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict({t: nn.Linear(backbone.num_features, n) for t, n in heads.items()})

    def forward(self, x):
        feats = self.backbone(x)
        return {t: head(feats) for t, head in self.heads.items()}


def build_model(cfg: RunConfig) -> nn.Module:
    heads = {t: c.num_classes for t, c in cfg.tasks.items()}
    kwargs = dict(cfg.model.kwargs, drop_path_rate=cfg.model.drop_path_rate)
    model = timm.create_model(cfg.model.name, num_classes=0, **kwargs)
    if isinstance(model, RepLKNet):
        model.reset_classifier(heads)
    else:
        model = MultiHead(model, heads)
    if cfg.model.grad_checkpointing:
        (model.backbone if isinstance(model, MultiHead) else model).set_grad_checkpointing(True)
    return model


def param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    """No weight decay on norms and biases (every 1-d parameter)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith('.bias') else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def build_optimizer(cfg: RunConfig, groups: List[dict]) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == 'sgd':
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)


def transform_config(cfg: RunConfig) -> TransformConfig:
    d = cfg.data
    return TransformConfig(image_size=d.image_size, mean=d.mean, std=d.std, auto_augment=d.auto_augment,
                           interpolation=d.interpolation, re_prob=d.re_prob, crop_pct=d.val_crop_pct,
                           scale=d.crop_scale, hflip=d.hflip)


def build_loader(cfg: RunConfig, env: DistEnv) -> ResumableLoader:
    """The training stream over ``data.sources`` with augmentation and the label join."""
    tcfg = transform_config(cfg)
    joiner = LabelJoiner({t: c.num_classes for t, c in cfg.tasks.items()}, cfg.data.label_store,
                         cfg.data.tasks_file)
    stream_cfg = StreamConfig(seed=cfg.train.seed, batch_size=cfg.train.micro_batch,
                              shuffle_buffer=cfg.data.shuffle_buffer, few_shards=cfg.data.few_shards,
                              max_corrupt_fraction=cfg.data.max_corrupt_fraction)
    stream = ShardStream([SourceSpec(s.name, s.url, s.weight) for s in cfg.data.sources], stream_cfg,
                         train_transform(tcfg), env.rank, env.world_size, cfg.data.workers,
                         decode_min_side=tcfg.decode_min_side(train=True), batch_transform=joiner)
    return ResumableLoader(stream, num_workers=cfg.data.workers, pin_memory=torch.cuda.is_available())


class Trainer:
    """Owns the DeepSpeed engine and runs steps; rank and world size come in, nothing is read from env."""

    def __init__(self, cfg: RunConfig, env: DistEnv, device: torch.device, model: Optional[nn.Module] = None,
                 groups: Optional[List[dict]] = None):
        import deepspeed

        from .schedule import build_scheduler

        self.cfg, self.env, self.device = cfg, env, device
        seed_global_rngs(cfg.train.seed)  # the same initial weights on every rank
        model = model if model is not None else build_model(cfg)
        self.init_report = None
        if cfg.init is not None:
            from .weights import load_initial_weights
            self.init_report = load_initial_weights(model, cfg.init.checkpoint,
                                                    {t: c.num_classes for t, c in cfg.tasks.items()}, cfg.init.tag,
                                                    cfg.init.trust_pickle)
        if groups is None:
            groups = self._param_groups(model)
        if device.type == 'cuda':
            torch.backends.cudnn.benchmark = True  # input shapes are fixed: pick each conv's algorithm once
        # Parameters stay contiguous: DeepSpeed's initial broadcast views each one as bytes, which a
        # channels-last conv weight refuses. Channels-last *inputs* are enough: cuDNN and the CPU
        # kernels follow the input's layout, and RepLKNet's depthwise and 1x1 weights have one
        # layout under both formats, so only the stem and downsample weights are converted per call.
        model = apply_sync_bn(model, cfg.model.sync_bn, device, env.rank, env.world_size, env.local_world_size)
        self.loader = build_loader(cfg, env)
        self.steps_per_epoch = max(1, len(self.loader) // cfg.train.grad_accum)
        total = int(cfg.schedule.epochs * self.steps_per_epoch)
        self.total_steps = min(total, cfg.schedule.max_steps) if cfg.schedule.max_steps else total
        optimizer = build_optimizer(cfg, groups)
        scheduler = build_scheduler(optimizer, total, int(cfg.schedule.warmup_epochs * self.steps_per_epoch),
                                    cfg.schedule.min_lr_ratio)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg, env.world_size))
        self.ema = None
        if cfg.train.ema_decay is not None:
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(self.engine.module, decay=cfg.train.ema_decay)
        seed_global_rngs(cfg.train.seed, env.rank)  # drop path and mixup differ per rank
        self.normalize = DeviceNormalize(transform_config(cfg), device, train=True)
        self.mixup = MultiTaskMixup(cfg.train.mixup, cfg.train.cutmix, cfg.train.mixup_prob,
                                    cfg.train.mixup_switch_prob)
        self.weights = {t: c.weight for t, c in cfg.tasks.items()}
        self.smoothing = {t: c.label_smoothing for t, c in cfg.tasks.items()}
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.corrupt_total = 0
        self.parts = self._register_parts()
        self._pending_norm = None   # (step, grad norm): checked at the next host sync

    # --- checkpointed state: registered once, walked by pretrain.checkpoint ------------------
    state_version = 1   # the trainer's own counters

    def _register_parts(self) -> Dict[str, Part]:
        """Everything a checkpoint holds besides DeepSpeed's model/optimizer/scheduler files."""
        parts = dict(loader=Part(self.loader, per_rank=True), rng=Part(RngState(), per_rank=True),
                     counters=Part(self, per_rank=True))
        if self.ema is not None:
            parts['ema'] = Part(ModuleWeights(self.ema.module), per_rank=False)
        return parts

    def state_dict(self) -> dict:
        return dict(nonfinite_in_a_row=self.nonfinite_in_a_row, nonfinite_total=self.nonfinite_total,
                    corrupt_total=self.corrupt_total)

    def load_state_dict(self, state: dict) -> None:
        self.nonfinite_in_a_row = state['nonfinite_in_a_row']
        self.nonfinite_total = state['nonfinite_total']
        self.corrupt_total = state['corrupt_total']

    def _param_groups(self, model: nn.Module) -> List[dict]:
        o = self.cfg.optim
        if o.layer_decay is None:
            return param_groups(model, o.weight_decay)
        from .layer_decay import apply_lr_scale, layer_decay_groups
        groups = layer_decay_groups(model, o.weight_decay, o.layer_decay, coarse=o.layer_decay_granularity == 'stage')
        return apply_lr_scale(groups, o.lr)

    @property
    def step(self) -> int:
        return self.engine.global_steps

    def device_images(self, images: torch.Tensor) -> torch.Tensor:
        return to_model_input(self.normalize(images), self.cfg)

    def device_targets(self, targets: Dict[str, dict]) -> Dict[str, dict]:
        out = {}
        for task, t in targets.items():
            n = self.cfg.tasks[task].num_classes
            idx, prob = (t[k].to(self.device, non_blocking=True) for k in ('idx', 'prob'))
            out[task] = dict(target=dense_targets(idx, prob, n), mask=t['mask'].to(self.device, non_blocking=True),
                             human=t['human'].to(self.device, non_blocking=True))
        return out

    def micro_step(self, batch: dict) -> Optional[Dict[str, object]]:
        """Forward, backward and (at the accumulation boundary) the optimizer step.

        The engine runs the forward in the configured precision (its ``torch_autocast`` section).
        One host sync per micro-step: a flag all-reduced between forward and backward, so that a
        non-finite loss on any rank skips the micro-step on every rank before its backward can
        poison accumulated gradients; after ``train.max_nonfinite_steps`` in a row the run stops.
        The same flag carries the previous optimizer step's gradient-norm check. Metrics come
        back as device tensors; :func:`materialize` turns them into numbers at logging steps.
        """
        self.corrupt_total += batch.get('corrupt', 0)
        images = self.device_images(batch['image'])
        targets = self.device_targets(batch['targets'])
        if self.mixup.enabled:
            images, targets = self.mixup(images, targets, np.random)  # global: saved in checkpoints
        logits = self.engine(images)
        loss, per_task = multitask_loss(logits, targets, self.weights, self.smoothing)
        if self._nonfinite_loss_anywhere(loss):
            self.nonfinite_in_a_row += 1
            self.nonfinite_total += 1
            log.warning('non-finite loss at step %d on some rank: micro-step skipped on every rank (%d in a row)',
                        self.step, self.nonfinite_in_a_row)
            if self.nonfinite_in_a_row >= self.cfg.train.max_nonfinite_steps:
                raise FloatingPointError(f'{self.nonfinite_in_a_row} non-finite losses in a row at step {self.step}: '
                                         'stopping; resume from the last checkpoint with a lower optim.lr')
            return None
        self.nonfinite_in_a_row = 0
        self.engine.backward(loss)
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        if boundary:
            if self.ema is not None:
                self.ema.update(self.engine.module, step=self.step)
            self._pending_norm = (self.step, self.engine.get_global_grad_norm())
        metrics = {'loss': loss.detach(), **{f'loss/{t}': v.detach() for t, v in per_task.items()}}
        metrics.update(self.learning_rates())
        metrics['skipped_steps'] = self.engine.skipped_steps  # DeepSpeed's own (fp16 overflow), never silent
        metrics['nonfinite_total'] = self.nonfinite_total
        metrics['corrupt_samples'] = self.corrupt_total  # replaced undecodable samples seen by this rank
        return metrics

    def learning_rates(self) -> Dict[str, float]:
        """``lr``: the base lr (the head's, under layer decay); ``lr/<group>``: each decayed group's."""
        lrs = self.scheduler.get_last_lr()
        out = {'lr': max(lrs)}
        if self.cfg.optim.layer_decay is not None:
            names = [g.get('name', str(i)) for i, g in enumerate(self.optimizer.param_groups)]
            out.update({f'lr/{n[:-len("_decay")]}': lr for n, lr in zip(names, lrs) if n.endswith('_decay')
                        and not n.endswith('_no_decay')})
        return out

    def _nonfinite_loss_anywhere(self, loss: torch.Tensor) -> bool:
        """The micro-step's one host sync: [loss non-finite, last grad norm non-finite], max over ranks."""
        flags = torch.stack([(~torch.isfinite(loss.detach())).float(), self._pending_norm_flag()])
        if dist.is_initialized():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        bad_loss, bad_norm = flags.tolist()
        if bad_norm:
            self._raise_nonfinite_norm()
        self._pending_norm = None
        return bool(bad_loss)

    def _pending_norm_flag(self) -> torch.Tensor:
        norm = None if self._pending_norm is None else self._pending_norm[1]
        if norm is None:
            return torch.zeros((), device=self.device)
        return (~torch.isfinite(torch.as_tensor(norm, dtype=torch.float32))).float().to(self.device)

    def _raise_nonfinite_norm(self):
        raise FloatingPointError(f'non-finite gradient norm at step {self._pending_norm[0]}: the update may already '
                                 'be applied; resume from the last checkpoint')

    def check_last_step(self) -> None:
        """The gradient-norm check of the newest step, which no later micro-step has made yet."""
        if self._pending_norm is not None and self._pending_norm_flag().item():
            self._raise_nonfinite_norm()
        self._pending_norm = None

    def evaluate_all(self, max_batches: Optional[int] = None) -> Dict[str, float]:
        """The raw weights, and the EMA weights beside them when there are any."""
        self.sync_running_stats()
        out = self.evaluate(max_batches)
        if self.ema is not None:
            average_running_stats(self.ema.module)
            out.update({k.replace('val/', 'val_ema/', 1): v
                        for k, v in self.evaluate(max_batches, model=self.ema.module).items()})
        return out

    def sync_running_stats(self) -> None:
        """Every rank's BN running statistics averaged: what is evaluated and saved is one model."""
        average_running_stats(self.engine.module)

    @torch.no_grad()
    def evaluate(self, max_batches: Optional[int] = None, model: Optional[nn.Module] = None) -> Dict[str, float]:
        """Top-1/top-5 per task on the validation sources' labeled samples, summed over ranks."""
        if not self.cfg.data.val_sources:
            return {}
        net = model if model is not None else self.engine
        return evaluate_model(net, self.cfg, self.env, self.device, max_batches)


def to_model_input(images: torch.Tensor, cfg: RunConfig) -> torch.Tensor:
    """The memory format the model trains in, for training and evaluation alike."""
    return images.contiguous(memory_format=torch.channels_last) if cfg.model.channels_last else images


def eval_loader(cfg: RunConfig, env: DistEnv, device: torch.device) -> DataLoader:
    """Every validation sample once, with the eval transform (resize, center crop) and the label join."""
    joiner = LabelJoiner({t: c.num_classes for t, c in cfg.tasks.items()}, cfg.data.label_store, cfg.data.tasks_file)
    data = EvalShards([SourceSpec(s.name, s.url) for s in cfg.data.val_sources], eval_transform(transform_config(cfg)),
                      env.rank, env.world_size, cfg.train.micro_batch, batch_transform=joiner)
    from shards.storage import worker_start_method
    urls = [s.url for s in cfg.data.val_sources] + ([cfg.data.label_store] if cfg.data.label_store else [])
    return DataLoader(data, batch_size=None, num_workers=cfg.data.workers, pin_memory=device.type == 'cuda',
                      multiprocessing_context=worker_start_method(urls) if cfg.data.workers else None)


def lockstep(batches: Iterable, device: torch.device, max_batches: Optional[int] = None) -> Iterator[Optional[dict]]:
    """Batches until *every* rank is out of them; a rank that ran out gets ``None`` meanwhile.

    Ranks hold different numbers of evaluation batches, and a ZeRO-3 forward is collective (it
    gathers each layer's parameters from all ranks): a rank that stopped early would leave the
    others waiting forever. One tiny all-reduce per batch keeps the ranks' forwards matched."""
    distributed = dist.is_initialized() and dist.get_world_size() > 1
    it = iter(batches)
    count = 0
    while max_batches is None or count < max_batches:
        batch = next(it, None)
        if distributed:
            more = torch.tensor([0.0 if batch is None else 1.0], device=device)
            dist.all_reduce(more, op=dist.ReduceOp.MAX)
            if more.item() == 0.0:
                return
        elif batch is None:
            return
        yield batch
        count += 1


@torch.no_grad()
def evaluate_model(net: nn.Module, cfg: RunConfig, env: DistEnv, device: torch.device,
                   max_batches: Optional[int] = None) -> Dict[str, float]:
    """In the training precision and memory format; a DeepSpeed engine applies its own autocast
    section (derived from the same ``train.precision``), a bare module gets the same autocast here."""
    normalize = DeviceNormalize(transform_config(cfg), device, train=False)
    counts = {t: torch.zeros(3, device=device, dtype=torch.float64) for t in cfg.tasks}  # n, top1, top5
    standin = torch.zeros(1, 3, cfg.data.image_size, cfg.data.image_size, device=device)
    was_training = net.training
    net.eval()
    for batch in lockstep(eval_loader(cfg, env, device), device, max_batches):
        images = standin if batch is None else normalize(batch['image'])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == 'bf16'):
            logits = net(to_model_input(images, cfg))
        if batch is None:
            continue  # this rank ran out: its forward only kept a collective forward matched
        for task, t in batch['targets'].items():
            mask = t['mask'].to(device) & t['human'].to(device)  # accuracy against human labels
            label = t['idx'][:, 0].to(device)
            top5 = logits[task].float().topk(min(5, logits[task].shape[1]), dim=1).indices
            counts[task] += torch.stack([mask.sum(), ((top5[:, 0] == label) & mask).sum(),
                                         ((top5 == label[:, None]).any(1) & mask).sum()]).double()
    net.train(was_training)
    out = {}
    for task, c in counts.items():
        if dist.is_initialized():
            dist.all_reduce(c)
        if c[0] > 0:
            out[f'val/{task}/top1'] = (c[1] / c[0]).item()
            out[f'val/{task}/top5'] = (c[2] / c[0]).item()
            out[f'val/{task}/images'] = int(c[0].item())
    return out

