"""``labeling import-human``: the human labels in the shards' metadata, as ``source=human`` rows."""
from __future__ import annotations

import json
from typing import Dict, List

from shards import storage
from shards.index import ShardIndex
from shards.reader import iter_shard_samples

from .commits import labels_this_content
from .store import LabelStore, Row


def human_rows(shard_url: str, tasks: List[str], retry=storage.DEFAULT_RETRY) -> Dict[str, List[Row]]:
    """Per task, a one-hot row for every sample of the shard whose metadata labels that task."""
    rows: Dict[str, List[Row]] = {t: [] for t in tasks}
    for sample in iter_shard_samples(shard_url, retry=retry):
        labels = json.loads(sample['json']).get('labels') or {}
        for task in tasks:
            if task in labels:
                rows[task].append(Row(sample['__key__'], [int(labels[task])], [1.0], 'human'))
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
        rows = human_rows(storage.join(shard_prefix, entry.name), todo, store.retry)
        for task, task_rows in rows.items():
            if task_rows:
                store.write_part(task, entry.stem, task_rows, kind='human', shard_sha256=entry.sha256)
                written[task] += len(task_rows)
    for task in tasks:
        store.refresh_manifest(task)
    return written
