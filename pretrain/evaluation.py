"""Evaluation: top-1/top-5 per task on labeled shards, for training runs and ``pretrain.evaluate``.

An ``EvalSpec`` holds what evaluating needs and nothing else; a run derives it from its config
(``EvalSpec.of_run``), the evaluate CLI builds it from a run folder, an export or its arguments.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from shards.loader import EvalShards
from shards.storage import DEFAULT_RETRY, RetryPolicy
from shards.stream import SourceSpec
from shards.transforms import DeviceNormalize, TransformConfig, eval_transform

from .config import RunConfig, task_classes
from .labels import LabelJoiner, shard_facts


def to_model_input(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The memory format the model trains in, for training and evaluation alike (loader batches
    arrive channels-last: a contiguous-layout model gets a contiguous copy)."""
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images.contiguous()


@dataclass(frozen=True)
class EvalSpec:
    tasks: Dict[str, int]
    """task -> classes; accuracy is measured against each task's human labels"""
    sources: List[SourceSpec]
    """labeled shards; every sample once over all ranks"""
    transform: TransformConfig
    """resize to image_size / crop_pct, center crop, normalization"""
    batch_size: int = 64
    workers: int = 0
    precision: str = 'fp32'
    """bf16: under autocast, as a bf16 run trains"""
    channels_last: bool = False
    label_store: Optional[str] = None
    tasks_file: Optional[str] = None
    pinned_labels: Optional[Dict[str, dict]] = None
    """a training run's pinned label manifests (``label_pin.py``): evaluation reads the same labels"""
    retry: RetryPolicy = DEFAULT_RETRY
    """how long reads of the sources are retried"""

    @classmethod
    def of_run(cls, cfg: RunConfig, pinned_labels: Optional[Dict[str, dict]] = None) -> 'EvalSpec':
        d = cfg.data
        return cls(task_classes(cfg.tasks), list(d.val_sources), d.transform, cfg.train.micro_batch, d.workers,
                   cfg.train.precision, cfg.model.channels_last, d.label_store, d.tasks_file, pinned_labels,
                   d.stream.retry)


def eval_loader(spec: EvalSpec, rank: int, world_size: int, device: torch.device) -> DataLoader:
    """Every evaluation sample once, with the eval transform (resize, center crop) and the label join."""
    from shards.loader import leave_stopping_to_the_parent
    from shards.storage import worker_start_method
    data = EvalShards(spec.sources, eval_transform(spec.transform), rank, world_size, spec.batch_size,
                      retry=spec.retry)
    data.batch_transform = LabelJoiner(spec.tasks, spec.label_store, spec.tasks_file, shards=shard_facts(data.resolved))
    data.batch_transform.pin(spec.pinned_labels)
    urls = [s.url for s in spec.sources] + ([spec.label_store] if spec.label_store else [])
    return DataLoader(data, batch_size=None, num_workers=spec.workers, pin_memory=device.type == 'cuda',
                      multiprocessing_context=worker_start_method(urls) if spec.workers else None,
                      worker_init_fn=leave_stopping_to_the_parent if spec.workers else None)


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
def evaluate_model(net: nn.Module, spec: EvalSpec, device: torch.device, rank: int, world_size: int,
                   max_batches: Optional[int] = None) -> Dict[str, float]:
    """In the training precision and memory format; a DeepSpeed engine applies its own autocast
    section (derived from the same ``train.precision``), a bare module gets the same autocast here."""
    normalize = DeviceNormalize(spec.transform, device, train=False)
    counts = {t: torch.zeros(3, device=device, dtype=torch.float64) for t in spec.tasks}  # n, top1, top5
    size = spec.transform.image_size
    standin = torch.zeros(1, 3, size, size, device=device)
    was_training = net.training
    net.eval()
    for batch in lockstep(eval_loader(spec, rank, world_size, device), device, max_batches):
        images = standin if batch is None else normalize(batch['image'])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec.precision == 'bf16'):
            logits = net(to_model_input(images, spec.channels_last))
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
            if spec.tasks[task] > 5:   # with 5 classes or fewer top-5 is 1 by construction
                out[f'val/{task}/top5'] = (c[2] / c[0]).item()
            out[f'val/{task}/images'] = int(c[0].item())
    return out

