"""The pseudo-labeling job: image shards in, one committed label part per shard out.

Shards are split over ``num_jobs x world_size`` workers by a pure function; each shard is
labeled in batches that never mix shards, so a shard's labels do not depend on which
other shards a job happened to get (a rerun after a kill reproduces them exactly).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from shards import storage
from shards.common.errors import BadValue
from shards.images import BadImage, decode_rgb, image_part, is_plain_jpeg
from shards.loader import leave_stopping_to_the_parent
from shards.naming import shard_stem
from shards.reader import iter_shard_samples
from shards.stream import ResolvedSource, resolve_source

from .class_map import human_index_map
from .commits import labels_this_content
from .config import JobConfig
from .device_decode import decode_batch
from .store import LabelStore, Row
from .tasks import TaskRegistry
from .teachers import Ensemble, Preprocess, load_teacher

log = logging.getLogger(__name__)


def assign_shards(stems: Sequence[str], job_index: int, num_jobs: int) -> List[str]:
    """Shards of job ``job_index`` of ``num_jobs``: every shard to exactly one job."""
    if not 0 <= job_index < num_jobs:
        raise BadValue(f'job index {job_index} is outside 0..{num_jobs - 1}')
    return sorted(stems)[job_index::num_jobs]


class ShardBatches(IterableDataset):
    """Per worker, whole shards: batches of (images, keys, human labels), one shard each.

    ``decode='workers'``: each image is decoded here at the reduced JPEG scale the teacher needs
    and preprocessed to a uint8 tensor. ``decode='device'``: plain JPEGs stay bytes, decoded in
    batches on the labeling device (labeling/device_decode.py); other images are decoded here."""

    def __init__(self, shards: List[tuple], task: str, preprocess: Preprocess, batch_size: int, retry,
                 decode: str = 'workers'):
        super().__init__()
        self.shards, self.task, self.batch_size, self.retry = shards, task, batch_size, retry
        self.preprocess, self.transform, self.decode = preprocess, preprocess.transform(), decode

    def __iter__(self):
        info = get_worker_info()
        worker, n = (info.id, info.num_workers) if info else (0, 1)
        for stem, url, count, index_map in self.shards[worker::n]:
            batch = []
            # The shared reader: a dropped connection reopens the shard instead of failing the job.
            for sample in iter_shard_samples(url, 0, count, self.retry):
                batch.append(self._prepare(sample, index_map))
                if len(batch) == self.batch_size:
                    yield self._collate(stem, batch, last=False)
                    batch = []
            yield self._collate(stem, batch, last=True)

    def _prepare(self, sample: dict, index_map: Optional[List[int]] = None):
        if sample.get('__missing__'):  # the shard was cut short: nothing to label at this position
            log.warning('%s: missing from a truncated shard (left unlabeled)', sample['__key__'])
            return sample['__key__'], None, -1
        meta = json.loads(sample.get('json', b'{}'))
        label = int((meta.get('labels') or {}).get(self.task, -1))
        if label >= 0 and index_map:   # the shard's class order -> the task's, by name
            label = index_map[label]
        try:
            data = image_part(sample)
            if self.decode == 'device' and is_plain_jpeg(data):
                return sample['__key__'], data, int(label)
            image = decode_rgb(data, min_side=self.preprocess.min_decode_side())
            return sample['__key__'], self.transform(image), int(label)
        except BadImage as exc:
            log.warning('%s: %s (left unlabeled)', sample['__key__'], exc)
            return sample['__key__'], None, int(label)

    @staticmethod
    def _collate(stem, batch, last):
        good = [b for b in batch if b[1] is not None]
        payloads = [b[1] for b in good]
        if payloads and all(torch.is_tensor(p) for p in payloads):
            payloads = torch.stack(payloads)
        return dict(stem=stem, last=last, keys=[b[0] for b in good], images=payloads if good else None,
                    human=[b[2] for b in good], failed=[b[0] for b in batch if b[1] is None])


class Labeler:
    """Runs a teacher ensemble over batches and turns probabilities into store rows.

    The same on every device: autocast in ``precision``, channels-last inputs (CPUs have both);
    ``compile`` names a torch.compile backend for the ensemble."""

    def __init__(self, ensemble: Ensemble, topk: int, device: torch.device, precision: str,
                 compile: Optional[str] = None):
        self.topk, self.device, self.preprocess = topk, device, ensemble.preprocess
        self.ensemble = ensemble.to(device)
        self.forward = torch.compile(self.ensemble, backend=compile) if compile else self.ensemble
        self.undecided = bool(compile)   # large-kernel convs decide eagerly before the first trace
        pre = ensemble.preprocess
        self.mean = torch.tensor([m * 255 for m in pre.mean], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor([s * 255 for s in pre.std], device=device).view(1, 3, 1, 1)
        self.autocast = dict(device_type=device.type, enabled=precision != 'fp32',
                             dtype={'bf16': torch.bfloat16, 'fp16': torch.float16}.get(precision, torch.bfloat16))

    def images(self, payloads) -> Tuple[Optional[torch.Tensor], List[int]]:
        """A worker-decoded uint8 batch as is, or JPEG bytes decoded on the device."""
        if torch.is_tensor(payloads):
            return payloads, []
        return decode_batch(payloads, self.preprocess, self.device)

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.to(self.device, non_blocking=True).float() - self.mean) / self.std
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(**self.autocast):
            if self.undecided:
                from pretrain.models import decide_before_compiling
                decide_before_compiling(self.ensemble, x)
                self.undecided = False
            return self.forward(x).float()

    def rows(self, keys, human, probs: torch.Tensor) -> List[Row]:
        k = min(self.topk, probs.shape[1])
        top_p, top_i = probs.topk(k, dim=1)
        out = []
        for key, label, p, i in zip(keys, human, top_p.cpu().tolist(), top_i.cpu().tolist()):
            if label >= 0:
                out.append(Row(key, [label], [1.0], 'human', teacher_idx=i))
            else:
                out.append(Row(key, i, p, 'pseudo'))
        return out


def label_batch(labeler: Labeler, batch: dict) -> Tuple[List[Row], List[str]]:
    """Rows for a batch's readable images, and the keys of the unreadable ones."""
    failed_keys = list(batch['failed'])
    if batch['images'] is None:
        return [], failed_keys
    images, failed = labeler.images(batch['images'])
    for i in failed:
        log.warning('%s: not decodable on %s nor by Pillow (left unlabeled)', batch['keys'][i], labeler.device)
    bad = set(failed)
    keep = [i for i in range(len(batch['keys'])) if i not in bad]
    failed_keys += [batch['keys'][i] for i in failed]
    if images is None:
        return [], failed_keys
    rows = labeler.rows([batch['keys'][i] for i in keep], [batch['human'][i] for i in keep],
                        labeler.probabilities(images))
    return rows, failed_keys


def run_job(cfg: JobConfig, job_index: int = 0, num_jobs: int = 1, device: torch.device = torch.device('cpu'),
            progress: bool = True, retry: storage.RetryPolicy = storage.DEFAULT_RETRY) -> dict:
    """Label every not-yet-committed shard assigned to this job; returns a summary."""
    registry = TaskRegistry.from_json(cfg.tasks_file)
    task = registry.get(cfg.task)
    sources: List[ResolvedSource] = [resolve_source(s, retry) for s in cfg.sources]
    # Shards by their name in the index (an adopted shard's file has another; its URL says both).
    shard_urls = {shard_stem(name): (url, n) for src in sources for name, url, n in zip(src.names, src.urls, src.counts)}
    content = {shard_stem(name): sha for src in sources for name, sha in zip(src.names, src.sha256)}
    index_maps = {shard_stem(name): human_index_map(task, built.get(cfg.task), f'source {src.name}')
                  for src in sources for name, built in zip(src.names, src.classes)}   # human labels by class name
    mine = assign_shards(list(shard_urls), job_index, num_jobs)
    ensemble = Ensemble([load_teacher(t, task.num_classes, task.class_names) for t in cfg.teachers])
    store = LabelStore(cfg.store, registry, retry)
    identity = dict(teachers=ensemble.identity(), topk=cfg.topk)
    store.open_task(cfg.task, teacher=identity, topk=cfg.topk)
    done = {s for s, r in store.commit_records(cfg.task).items() if s in content
            and labels_this_content(r, content[s], kind='teacher')}   # a rebuilt shard is labeled again
    todo = [s for s in mine if s not in done]
    pre = asdict(ensemble.preprocess)
    log.info('task %s: teachers %s, preprocessing %s', cfg.task, [t.spec.path or t.spec.model for t in ensemble.teachers],
             pre)
    summary = dict(task=cfg.task, job_index=job_index, num_jobs=num_jobs, assigned=len(mine),
                   already_done=len(mine) - len(todo), committed=0, images=0, unreadable=0, preprocess=pre)
    if not todo:
        store.refresh_manifest(cfg.task)
        return summary
    data = ShardBatches([(s, *shard_urls[s], index_maps[s]) for s in todo], cfg.task, ensemble.preprocess,
                        cfg.batch_size, store.retry, decode=cfg.decode)
    loader = DataLoader(data, batch_size=None, num_workers=cfg.workers, pin_memory=device.type == 'cuda',
                        multiprocessing_context=storage.worker_start_method(
                            [shard_urls[s][0] for s in todo] + [cfg.store]) if cfg.workers else None,
                        worker_init_fn=leave_stopping_to_the_parent if cfg.workers else None)
    labeler = Labeler(ensemble, cfg.topk, device, cfg.precision, cfg.compile)
    pending: Dict[str, List[Row]] = {}
    bar = tqdm(total=sum(shard_urls[s][1] for s in todo), unit='img', disable=not progress,
               desc=f'label {cfg.task} job {job_index}/{num_jobs}')
    start = time.monotonic()
    for batch in loader:
        rows, failed = label_batch(labeler, batch)
        pending.setdefault(batch['stem'], []).extend(rows)
        summary['unreadable'] += len(failed)
        summary['images'] += len(rows)
        bar.update(len(rows) + len(failed))
        if batch['last']:
            store.write_part(cfg.task, batch['stem'], pending.pop(batch['stem']), kind='teacher', teacher=identity,
                             shard_sha256=content[batch['stem']])
            summary['committed'] += 1
            store.refresh_manifest(cfg.task, force=False)
    bar.close()
    store.refresh_manifest(cfg.task)
    summary['images_per_s'] = summary['images'] / max(time.monotonic() - start, 1e-9)
    return summary
