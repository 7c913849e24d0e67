"""``labeling import-human``: the human labels in the shards' metadata, as ``source=human`` rows."""
from __future__ import annotations

import json
from typing import Dict, List, Optional

from shards import storage
from shards.index import ShardIndex
from shards.reader import iter_shard_samples

from .class_map import human_index_map
from .commits import labels_this_content
from .store import LabelStore, Row


def human_rows(shard_url: str, tasks: List[str], retry=storage.DEFAULT_RETRY,
               index_maps: Optional[Dict[str, Optional[List[int]]]] = None) -> Dict[str, List[Row]]:
    """Per task, a one-hot row for every sample of the shard whose metadata labels that task, its
    index carried to the task's class order (``index_maps``: see ``class_map.py``)."""
    rows: Dict[str, List[Row]] = {t: [] for t in tasks}
    for sample in iter_shard_samples(shard_url, retry=retry):
        if '__refused__' in sample or 'json' not in sample:   # refused by its tar header, or no metadata: no label
            continue
        labels = json.loads(sample['json']).get('labels') or {}
        for task in tasks:
            if task in labels:
                index = int(labels[task])
                mapping = (index_maps or {}).get(task)
                rows[task].append(Row(sample['__key__'], [mapping[index] if mapping else index], [1.0], 'human'))
    return rows


def import_human(store: LabelStore, shard_prefix: str, tasks: List[str]) -> Dict[str, int]:
    """Commit human-only parts for shards no teacher job has labeled yet; returns rows per task."""
    index = ShardIndex.load(shard_prefix, policy=store.retry)
    for task in tasks:
        store.open_task(task)
    done = {t: store.commit_records(t) for t in tasks}
    written = {t: 0 for t in tasks}
    for entry in index.shards.values():
        todo = [t for t in tasks if not labels_this_content(done[t].get(entry.stem), entry.sha256, kind='teacher')]
        if not todo:
            continue  # a teacher part of these very bytes already holds this shard's human labels too
        built = index.builds.get(entry.source, {}).get('classes', {})
        maps = {t: human_index_map(store.registry.get(t), built.get(t), f'source {entry.source}') for t in todo}
        rows = human_rows(index.url_of(shard_prefix, entry), todo, store.retry, maps)
        for task, task_rows in rows.items():
            if task_rows:
                store.write_part(task, entry.stem, task_rows, kind='human', shard_sha256=entry.sha256)
                written[task] += len(task_rows)
    for task in tasks:
        store.refresh_manifest(task)
    return written
