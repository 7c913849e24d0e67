"""Joining labels to a batch by ``__key__``: the label store's parts, else the shard's human labels.

Runs inside DataLoader workers (as the stream's ``batch_transform``), so the join overlaps
training. Targets stay sparse (top-k) until the device: ``{task: {idx, prob, mask, human}}``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from labeling.class_map import human_index_map
from labeling.commits import LabelError
from labeling.store import LabelStore
from labeling.tasks import Task, TaskRegistry
from shards import storage
from shards.common.errors import BadValue
from shards.naming import shard_stem, shard_stem_of_key
from shards.stream import ResolvedSource

ShardFacts = Dict[str, Tuple[str, int]]   # shard stem -> (its sha256 in the index, the positions its keys index)


def shard_facts(sources: Sequence[ResolvedSource]) -> ShardFacts:
    """What the join checks a shard's labels against: the content the index lists, and how many
    build positions its keys can name (a skipped input keeps its position: keys are not contiguous)."""
    return {shard_stem(name): (sha, n) for src in sources for name, sha, n in zip(src.names, src.sha256, src.positions)}


class LabelJoiner:
    """Picklable: each worker opens the store lazily and caches the parts of recent shards. With
    ``shards`` (:func:`shard_facts`), a part made for other bytes of its shard and a label key past
    the shard's samples are refused rather than joined."""

    def __init__(self, tasks: Dict[str, int], store_root: Optional[str], tasks_file: Optional[str] = None,
                 cache_shards: int = 16, shards: Optional[ShardFacts] = None,
                 registry: Optional[TaskRegistry] = None, human_maps: Optional[Dict[str, dict]] = None):
        self.tasks, self.store_root, self.tasks_file, self.cache_shards = tasks, store_root, tasks_file, cache_shards
        self.shards, self.registry = shards, registry
        self.human_maps = human_maps or {}   # stem -> {task: shard class index -> task index}, where they differ
        self.pinned: Optional[Dict[str, dict]] = None
        self._store: Optional[LabelStore] = None
        self._cache: OrderedDict = OrderedDict()

    def pin(self, pinned: Optional[Dict[str, dict]]) -> None:
        """Join from these manifests only (``pretrain/label_pin.py``), never the store's newer ones."""
        self.pinned, self._store = pinned, None
        self._cache.clear()

    def _open_store(self) -> None:
        self._store = LabelStore(self.store_root, self.registry or TaskRegistry.from_json(self.tasks_file))
        if self.pinned is not None:
            from .label_pin import apply_pin
            apply_pin(self._store, self.pinned)
            self._store_tasks = [t for t in self.tasks if t in self.pinned]
        else:
            self._store_tasks = [t for t in self.tasks if self._store.has_task(t)]

    def _targets_of(self, stem: str) -> dict:
        if self._store is None:
            self._open_store()
        if stem not in self._cache:
            sha, positions = self.shards.get(stem, (None, None)) if self.shards is not None else (None, None)
            targets = self._store.shard_targets(stem, self._store_tasks, sha)
            if positions is not None:
                check_keys_within(targets, stem, positions)
            self._cache[stem] = targets
            if len(self._cache) > self.cache_shards:
                self._cache.popitem(last=False)
        return self._cache[stem]

    def __call__(self, batch: dict) -> dict:
        rows: Dict[str, List] = {t: [] for t in self.tasks}
        for key, meta in zip(batch['key'], batch['meta']):
            stem = shard_stem_of_key(key)
            stored = self._targets_of(stem) if self.store_root else {}
            human = meta.get('labels') or {}
            for task in self.tasks:
                row = stored.get(task, {}).get(key)
                if row is None and task in human:
                    index = int(human[task])
                    mapping = self.human_maps.get(stem, {}).get(task)   # the shard's class order -> the task's
                    row = ([mapping[index] if mapping else index], [1.0], 'human')
                rows[task].append(row)
        batch['targets'] = {t: _pack(r) for t, r in rows.items()}
        return batch


def human_label_maps(tasks: Dict[str, object], sources: Sequence[ResolvedSource],
                     registry: TaskRegistry) -> Dict[str, dict]:
    """{stem: {task: index map}} for the shards whose build ordered a task's classes otherwise than
    the task (labels carried by name, ``labeling/class_map.py``); an error where the classes differ,
    or where a build or the tasks file counts another number of classes than the config."""
    out: Dict[str, dict] = {}
    for name, task_cfg in tasks.items():
        task = registry_task(registry, name, task_cfg.num_classes)
        if task.num_classes != task_cfg.num_classes:
            raise BadValue(f'tasks.{name}.num_classes={task_cfg.num_classes} but the tasks file names '
                             f'{task.num_classes} classes ({list(task.class_names)[:6]}...)')
        for src in sources:
            for shard, built in zip(src.names, src.classes):
                mapping = human_index_map(task, built.get(name), f'source {src.name}')
                if mapping:
                    out.setdefault(shard_stem(shard), {})[name] = mapping
    return out


def registry_task(registry: TaskRegistry, name: str, num_classes: int) -> Task:
    """The task as the tasks file (or the built-in list) names it, else unnamed classes of the config's count."""
    try:
        return registry.get(name)
    except KeyError:
        return Task(name, tuple(f'{name}/{i}' for i in range(num_classes)))


def check_keys_within(targets: Dict[str, dict], stem: str, positions: int) -> None:
    """A label key names its sample's position in the shard's build (``{source}/{shard}/{index}``):
    one past the shard's positions labels no image, and the image it was meant for lost its label."""
    for task, rows in targets.items():
        stray = [k for k in rows if int(k.rsplit('/', 1)[1]) >= positions]
        if stray:
            raise LabelError(f'task {task!r}, shard {stem}: label key {stray[0]} is past the shard\'s {positions} '
                             f'positions ({len(stray)} such keys), so some image of it lost its label; find them with '
                             f'`python -m labeling validate --task {task} --shards <shard prefix>` and relabel '
                             'or re-import the shard')


def check_labels_match_shards(store_root: Optional[str], tasks: Dict[str, object], sources: Sequence[ResolvedSource],
                              tasks_file: Optional[str], registry: Optional[TaskRegistry] = None) -> None:
    """Before the first step: every committed part of the run's shards was made for the bytes the
    index lists now (a source rebuilt under the same names would put its labels on other images)
    and by the teacher its task holds. Reads only the manifests (each part's record names its
    shard's content and teacher), no part."""
    if not store_root:
        return
    store = LabelStore(store_root, registry or TaskRegistry.from_json(tasks_file))
    facts = shard_facts(sources)
    for task in (t for t in tasks if store.has_task(t)):
        faults = []
        for stem, record in store.committed_parts(task).items():
            if stem in facts:
                try:
                    store.check_record(task, stem, record, facts[stem][0])
                except LabelError as exc:
                    faults.append(str(exc))
        if faults:
            raise BadValue(faults[0] + (f' ({len(faults)} shards of task {task!r} in all)' if len(faults) > 1 else ''))


def _pack(rows: List) -> dict:
    k = max((len(r[0]) for r in rows if r is not None), default=1)
    idx = torch.zeros(len(rows), k, dtype=torch.long)
    prob = torch.zeros(len(rows), k)
    mask = torch.zeros(len(rows), dtype=torch.bool)
    human = torch.zeros(len(rows), dtype=torch.bool)
    for i, r in enumerate(rows):
        if r is None:
            continue
        n = len(r[0])
        idx[i, :n] = torch.as_tensor(r[0])
        prob[i, :n] = torch.as_tensor(r[1], dtype=torch.float32)
        mask[i], human[i] = True, r[2] == 'human'
    return dict(idx=idx, prob=prob, mask=mask, human=human)


def check_store_tasks(store_root: Optional[str], tasks: Dict[str, object], tasks_file: Optional[str],
                      list_commits: bool = True) -> None:
    """A configured store exists and holds every configured task, with the heads' class counts
    and (when given) class-map versions: a typo in the path must not train without pseudo-labels.
    ``list_commits``: also refuse parts committed but not yet listed — a LIST of every commit
    record (73 pages at 73k parts), so one rank does it, not all."""
    if not store_root:
        return
    store = LabelStore(store_root, TaskRegistry.from_json(tasks_file))
    present = [name for name in tasks if store.has_task(name)]
    if not present:
        missing = storage.missing_bucket(store_root)
        if missing is not None:
            raise missing
        raise BadValue(f'data.label_store={store_root}: no label store there (no labels/<task>/_task.json for '
                         f'any of {sorted(tasks)}); check the path, or remove data.label_store to train on the '
                         "shards' human labels only")
    for name, task_cfg in tasks.items():
        if name not in present:
            raise BadValue(f'tasks.{name}: the label store {store_root} has no task {name!r} (it has {present}); '
                             f'label it (python -m labeling run) or import its human labels '
                             f'(python -m labeling import-human), or remove the task')
        manifest = store.manifest(name)
        try:   # the tasks file (or a built-in task) names the classes the join maps labels onto
            known = store.registry.get(name)
        except KeyError:
            known = None
        if known is not None:
            LabelStore.check_task(known, manifest)   # before the first step, not in a DataLoader worker
        unlisted = sorted(set(store.commit_records(name)) - set(manifest['parts'])) if list_commits else []
        if unlisted:  # a job killed before listing them: training would silently miss their labels
            raise BadValue(f'tasks.{name}: {len(unlisted)} committed label parts (e.g. {unlisted[0]}) are not yet '
                             f'listed in {store_root}/labels/{name}/_task.json; list them with '
                             f'`python -m labeling commit --store {store_root} --task {name}`')
        if manifest['num_classes'] != task_cfg.num_classes:
            raise BadValue(f'tasks.{name}.num_classes={task_cfg.num_classes} but the label store has '
                             f'{manifest["num_classes"]} classes for {name}')
        expected = task_cfg.class_map_version
        if expected is not None and manifest['class_map_version'] != expected:
            raise BadValue(f'tasks.{name}.class_map_version={expected} but the label store has '
                             f'{manifest["class_map_version"]}')


def label_coverage(sources, tasks: List[str], store_root: Optional[str],
                   tasks_file: Optional[str] = None) -> Dict[str, tuple]:
    """Per source: (samples labeled for its best-covered task, samples), from the shard index's
    human-label counts and the label store's committed rows (no image is read); zero means no
    sample of the source has any label."""
    from shards.stream import source_entries

    store = LabelStore(store_root, TaskRegistry.from_json(tasks_file)) if store_root else None
    parts = {t: store.committed_parts(t) for t in tasks if store.has_task(t)} if store else {}
    out = {}
    for spec in sources:
        _, entries, _ = source_entries(spec)
        for task, task_parts in parts.items():
            ghosts = [(e.stem, task_parts[e.stem]['rows'], e.samples) for e in entries
                      if e.stem in task_parts and task_parts[e.stem]['rows'] > e.samples]
            if ghosts:  # more labels than samples: some are for keys the shard does not hold
                stem, rows, samples = ghosts[0]
                raise BadValue(f'task {task}, shard {stem}: the label store holds {rows} labels for its {samples} '
                                 f'samples ({len(ghosts)} such shards); find the keys with `python -m labeling '
                                 f'validate --store {store_root} --task {task} --shards <shard prefix>`')
        labeled = sum(min(e.samples, max([parts[t][e.stem]['rows'] if e.stem in parts.get(t, {}) else
                                          e.tasks.get(t, 0) for t in tasks] or [0])) for e in entries)
        out[spec.name] = (labeled, sum(e.samples for e in entries))
    return out


def warn_unlabeled_sources(coverage: Dict[str, tuple], log) -> None:
    for name, (labeled, total) in coverage.items():
        if total and labeled == 0:
            log.warning('source %s: none of its %d samples has a label for any task (no label-store part, no '
                        'human label): it contributes nothing to the loss; label it first', name, total)
