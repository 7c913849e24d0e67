"""The training engine shared by pretraining and fine-tuning: model, data, DeepSpeed, the step."""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import numpy as np
import timm
import torch
import torch.distributed as dist
from torch import nn

import pretrain.models  # noqa: F401  (registers RepLKNet with timm)
from labeling.tasks import TaskRegistry
from shards.common.errors import BadValue, ReplkError
from shards.loader import ResumableLoader, ShardStream
from shards.plan import EpochTooShort, seed_global_rngs
from shards.transforms import DeviceNormalize, train_transform

from .batchnorm import apply_sync_bn, average_running_stats
from .config import ModelConfig, OptimConfig, RunConfig, task_classes
from .distributed import DistEnv
from .ds_config import deepspeed_config
from .evaluation import EvalSpec, evaluate_model, to_model_input
from .labels import LabelJoiner, human_label_maps, shard_facts
from .loss import dense_targets, multitask_loss
from .mixup import MultiTaskMixup
from .models import MultiHead, RepLKNet
from .train_state import ModuleWeights, Part, RngState
from .weight_decay import group_sizes, param_groups

log = logging.getLogger(__name__)


class Diverged(ReplkError, FloatingPointError):
    """Training produced non-finite losses or gradients: lower the lr, or check the data and the labels."""


def build_model(spec: ModelConfig, heads: Dict[str, int]) -> nn.Module:
    """The ``model`` section's backbone with one classifier per task (``heads``: task -> classes)."""
    kwargs = dict(spec.kwargs, drop_path_rate=spec.drop_path_rate)
    model = timm.create_model(spec.name, num_classes=0, **kwargs)
    if isinstance(model, RepLKNet):
        model.reset_classifier(heads)
    else:
        model = MultiHead(model, heads)
    if spec.grad_checkpointing:
        (model.backbone if isinstance(model, MultiHead) else model).set_grad_checkpointing(True)
    return model


def optimizer_groups(model: nn.Module, o: OptimConfig, exempt: Optional[Tuple[str, ...]] = None) -> List[dict]:
    """The parameter groups the ``optim`` section asks for: with layer decay, one lr per stage
    (or block) on top of the decay / no-decay split. ``exempt``: see ``weight_decay.param_groups``."""
    if o.layer_decay is None:
        return param_groups(model, o.weight_decay, exempt)
    from .layer_decay import apply_lr_scale, layer_decay_groups
    groups = layer_decay_groups(model, o.weight_decay, o.layer_decay, coarse=o.layer_decay_granularity == 'stage',
                                exempt=exempt)
    return apply_lr_scale(groups, o.lr)


def build_optimizer(o: OptimConfig, groups: List[dict]) -> torch.optim.Optimizer:
    if o.name == 'sgd':
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)


def build_loader(cfg: RunConfig, env: DistEnv) -> ResumableLoader:
    """The training stream over ``data.sources`` with augmentation and the label join."""
    tcfg = cfg.data.transform
    try:
        stream = ShardStream(cfg.data.sources, cfg.data.stream, train_transform(tcfg), env.rank, env.world_size,
                             cfg.data.workers, seed=cfg.train.seed, batch_size=cfg.train.micro_batch,
                             decode_min_side=tcfg.decode_min_side(train=True))
    except EpochTooShort as short:
        raise BadValue(too_short_message(short, env.world_size, cfg.data.workers)) from None
    # the join checks each part against the content and size of the shard the stream resolved
    human_maps = human_label_maps(cfg.tasks, stream.sources, TaskRegistry.from_json(cfg.data.tasks_file))
    stream.batch_transform = LabelJoiner(task_classes(cfg.tasks), cfg.data.label_store, cfg.data.tasks_file,
                                         shards=shard_facts(stream.sources), human_maps=human_maps)
    return ResumableLoader(stream, num_workers=cfg.data.workers, pin_memory=torch.cuda.is_available())


def too_short_message(short: EpochTooShort, world_size: int, workers: int) -> str:
    """The one line a too-small dataset gets, in the run config's own names."""
    return (f'data.sources: an epoch gives each of the {short.slots} slots ({world_size} ranks x {max(workers, 1)} '
            f'data.workers) {short.samples} samples, fewer than one batch (train.micro_batch {short.batch_size}): set '
            f'train.micro_batch to {max(short.samples, 1)} or less, lower data.workers, or add samples')


def weights_fingerprint(params: List[torch.Tensor]) -> torch.Tensor:
    """One float64 number per model: position-weighted sums, so swapped or shifted weights differ."""
    return sum((i + 1) * p.detach().double().sum() + p.detach().double().abs().sum()
               for i, p in enumerate(params)).reshape(1)


def ranks_disagree(fingerprints: List[float], rel_tol: float = 1e-9) -> bool:
    first = fingerprints[0]
    return any(abs(f - first) > rel_tol * max(1.0, abs(first)) for f in fingerprints)


class Trainer:
    """Owns the DeepSpeed engine and runs steps; rank and world size come in, nothing is read from env."""

    def __init__(self, cfg: RunConfig, env: DistEnv, device: torch.device, model: Optional[nn.Module] = None,
                 groups: Optional[List[dict]] = None):
        import deepspeed

        from .schedule import build_scheduler

        self.cfg, self.env, self.device = cfg, env, device
        seed_global_rngs(cfg.train.seed)  # the same initial weights on every rank
        model = model if model is not None else build_model(cfg.model, task_classes(cfg.tasks))
        self.init_report = None
        if cfg.init is not None:
            from .weights import load_initial_weights
            self.init_report = load_initial_weights(model, cfg.init.checkpoint, task_classes(cfg.tasks), cfg.init.tag,
                                                    cfg.init.trust_pickle)
        if groups is None:
            groups = optimizer_groups(model, cfg.optim)
        # what a resume checks the checkpoint's optimizer state against (weight_decay.check_groups_fit)
        self.group_sizes = group_sizes(groups)
        self.legacy_group_sizes = group_sizes(optimizer_groups(model, cfg.optim, exempt=()))
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
        optimizer = build_optimizer(cfg.optim, groups)
        scheduler = build_scheduler(optimizer, total, int(cfg.schedule.warmup_epochs * self.steps_per_epoch),
                                    cfg.schedule.min_lr_ratio)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg, env.world_size))
        # each group's base lr and weight decay as this run's config sets them (a resume restores the old ones)
        self.configured_optim = [(g['initial_lr'], g['weight_decay']) for g in self.optimizer.param_groups]
        self.ema = None
        if cfg.train.ema_decay is not None:
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(self.engine.module, decay=cfg.train.ema_decay)
        if cfg.train.compile != 'none':
            self.compile_model(cfg.train.compile)
        seed_global_rngs(cfg.train.seed, env.rank)  # drop path and mixup differ per rank
        self.normalize = DeviceNormalize(cfg.data.transform, device, train=True)
        self.mixup = MultiTaskMixup(cfg.train.mixup, cfg.train.cutmix, cfg.train.mixup_prob,
                                    cfg.train.mixup_switch_prob)
        self.weights = {t: c.weight for t, c in cfg.tasks.items()}
        self.smoothing = {t: c.label_smoothing for t, c in cfg.tasks.items()}
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.corrupt_total = 0
        self.label_pin = self._pin_labels()
        self.parts = self._register_parts()
        self._pending_norm = None   # (step, grad norm): checked at the next host sync
        self.stop_request = None    # a preemption.StopRequest the entry point installed, if any
        self.lease = None           # the run folder's lease (rank 0), when the entry point took one
        self.stop_agreed = False    # every rank saw a stop request: checkpoint at the next step, then stop

    # --- checkpointed state: registered once, walked by pretrain.checkpoint ------------------
    state_version = 1   # the trainer's own counters

    def _register_parts(self) -> Dict[str, Part]:
        """Everything a checkpoint holds besides DeepSpeed's model/optimizer/scheduler files."""
        parts = dict(loader=Part(self.loader, per_rank=True), rng=Part(RngState(), per_rank=True),
                     counters=Part(self, per_rank=True))
        if self.ema is not None:
            parts['ema'] = Part(ModuleWeights(self.ema.module), per_rank=False)
        if self.label_pin is not None:
            parts['labels'] = Part(self.label_pin, per_rank=False)
        return parts

    def _pin_labels(self):
        """The label manifests this run trains on, read once by rank 0 and handed to every rank."""
        if not self.cfg.data.label_store:
            return None
        from .distributed import main_rank_decides
        from .label_pin import LabelPin, describe, read_current
        pinned = main_rank_decides(lambda: read_current(self.cfg.data.label_store, list(self.cfg.tasks),
                                                        self.cfg.data.tasks_file))
        log.info('labels: pinned for this run: %s', describe(pinned))
        return LabelPin(self.loader.dataset.batch_transform, pinned, self.cfg.data.labels_refresh)

    def state_dict(self) -> dict:
        return dict(nonfinite_in_a_row=self.nonfinite_in_a_row, nonfinite_total=self.nonfinite_total,
                    corrupt_total=self.corrupt_total)

    def load_state_dict(self, state: dict) -> None:
        self.nonfinite_in_a_row = state['nonfinite_in_a_row']
        self.nonfinite_total = state['nonfinite_total']
        self.corrupt_total = state['corrupt_total']

    def apply_configured_optim(self) -> None:
        """After a resume: this run's optim.lr and optim.weight_decay in every group and in the schedule,
        the schedule continuing at the restored step (a changed lr or schedule takes effect)."""
        groups = self.optimizer.param_groups
        for g, (lr, wd) in zip(groups, self.configured_optim):
            g['initial_lr'], g['weight_decay'] = lr, wd
        self.scheduler.base_lrs = [lr for lr, _ in self.configured_optim]
        step = self.scheduler.last_epoch
        lrs = [base * factor(step) for base, factor in zip(self.scheduler.base_lrs, self.scheduler.lr_lambdas)]
        for g, lr in zip(groups, lrs):
            g['lr'] = lr
        self.scheduler._last_lr = lrs

    @property
    def step(self) -> int:
        return self.engine.global_steps

    def device_images(self, images: torch.Tensor) -> torch.Tensor:
        return to_model_input(self.normalize(images), self.cfg.model.channels_last)

    def device_targets(self, targets: Dict[str, dict]) -> Dict[str, dict]:
        out = {}
        for task, t in targets.items():
            n = self.cfg.tasks[task].num_classes
            idx, prob = (t[k].to(self.device, non_blocking=True) for k in ('idx', 'prob'))
            out[task] = dict(target=dense_targets(idx, prob, n), mask=t['mask'].to(self.device, non_blocking=True),
                             human=t['human'].to(self.device, non_blocking=True))
        return out

    def compile_model(self, backend: str) -> None:
        """The engine's module compiled in place (its state dict keys unchanged), after each
        large-kernel conv decided its algorithm for the training input in one eager forward (in
        the training precision and memory format) so the traced graph holds no decision-making.
        After the EMA copy is made: the EMA model stays eager."""
        from .models import decide_before_compiling
        size = self.cfg.data.transform.image_size
        example = torch.zeros(self.cfg.train.micro_batch, 3, size, size, device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.train.precision == 'bf16'):
            convs = decide_before_compiling(self.engine.module, to_model_input(example, self.cfg.model.channels_last))
        self.engine.compile(backend=backend)
        log.info('model compiled with %s (%d large-kernel convs decided before tracing)', backend, convs)

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
        bad_loss, self.stop_agreed = self._agree_on_flags(loss)
        if bad_loss:
            self.nonfinite_in_a_row += 1
            self.nonfinite_total += 1
            log.warning('non-finite loss at step %d on some rank: micro-step skipped on every rank (%d in a row)',
                        self.step, self.nonfinite_in_a_row)
            if self.nonfinite_in_a_row >= self.cfg.train.max_nonfinite_steps:
                raise Diverged(f'{self.nonfinite_in_a_row} non-finite losses in a row at step {self.step}: '
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

    def corrupt_samples_all_ranks(self) -> int:
        """Replaced undecodable samples summed over every rank (a logging step's collective)."""
        total = torch.tensor([float(self.corrupt_total)], device=self.device)
        if dist.is_initialized():
            dist.all_reduce(total)
        return int(total.item())

    def learning_rates(self) -> Dict[str, float]:
        """``lr``: the base lr (the head's, under layer decay); ``lr/<group>``: each decayed group's."""
        lrs = self.scheduler.get_last_lr()
        out = {'lr': max(lrs)}
        if self.cfg.optim.layer_decay is not None:
            names = [g.get('name', str(i)) for i, g in enumerate(self.optimizer.param_groups)]
            out.update({f'lr/{n[:-len("_decay")]}': lr for n, lr in zip(names, lrs) if n.endswith('_decay')
                        and not n.endswith('_no_decay')})
        return out

    def _agree_on_flags(self, loss: torch.Tensor) -> Tuple[bool, bool]:
        """The micro-step's one host sync: [loss non-finite, last grad norm non-finite, a stop
        requested (a preemption signal)], max over ranks: (bad loss anywhere, stop everywhere)."""
        stop = float(self.stop_request is not None and self.stop_request.requested)
        flags = torch.stack([(~torch.isfinite(loss.detach())).float(), self._pending_norm_flag(),
                             torch.tensor(stop, device=self.device)])
        if dist.is_initialized():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        bad_loss, bad_norm, stop = flags.tolist()
        if bad_norm:
            self._raise_nonfinite_norm()
        self._pending_norm = None
        return bool(bad_loss), self.stop_agreed or bool(stop)

    def _pending_norm_flag(self) -> torch.Tensor:
        norm = None if self._pending_norm is None else self._pending_norm[1]
        if norm is None:
            return torch.zeros((), device=self.device)
        return (~torch.isfinite(torch.as_tensor(norm, dtype=torch.float32))).float().to(self.device)

    def _raise_nonfinite_norm(self):
        raise Diverged(f'non-finite gradient norm at step {self._pending_norm[0]}: the update may already '
                                 'be applied; resume from the last checkpoint')

    def check_last_step(self) -> None:
        """The gradient-norm check of the newest step, which no later micro-step has made yet."""
        if self._pending_norm is not None and self._pending_norm_flag().item():
            self._raise_nonfinite_norm()
        self._pending_norm = None

    def check_ranks_agree(self) -> None:
        """Every rank ends with the same weights (data parallelism really averaged the gradients):
        one all-gather of a per-rank fingerprint at the end of a run; ZeRO-3 partitions are gathered."""
        import deepspeed
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return
        params = list(self.engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params, enabled=self.engine.zero_optimization_stage() == 3):
            mine = weights_fingerprint(params).to(self.device)
        every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(every, mine)
        values = [v.item() for v in every]
        if ranks_disagree(values):
            raise RuntimeError(f'the ranks ended with different weights (fingerprints {values}): gradients were '
                               'not averaged across ranks; report this with the config and launch command')

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
        pinned = self.label_pin.pinned if self.label_pin is not None else None   # the labels this run trains on
        return evaluate_model(net, EvalSpec.of_run(self.cfg, pinned), self.device, self.env.rank, self.env.world_size,
                              max_batches)
