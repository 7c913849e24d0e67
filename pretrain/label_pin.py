"""The label manifest a run trains on: chosen once, the same on every rank and worker, kept in its
checkpoints.

A label store changes while runs read it (a labeling job commits a shard, a relabel, an import).
Reading it live would change a run's targets from one epoch to the next, differently on each rank,
and a resume would not repeat the run. So the main rank reads each task's committed parts once at
start-up, hands them to every rank, and every DataLoader worker joins labels from that copy only.
The copy (each task's header and its parts table, ~40 bytes a part) is a checkpoint part: a resume
trains on what the run trained on; ``data.labels_refresh`` takes the store's newer labels at a
resume instead, logging each task that changed and recording the switch in the checkpoint.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Dict, List, Optional, Sequence

from labeling.commits import parts_from_parquet, parts_to_parquet
from labeling.store import LabelStore
from labeling.tasks import TaskRegistry

log = logging.getLogger('pretrain')


def read_current(store_root: str, tasks: Sequence[str], tasks_file: Optional[str],
                 registry: Optional[TaskRegistry] = None) -> Dict[str, dict]:
    """{task: {header, parts (parquet bytes), digest, num_parts}} of the store's tasks now."""
    store = LabelStore(store_root, registry or TaskRegistry.from_json(tasks_file))
    out = {}
    for task in tasks:
        if store.has_task(task):
            manifest = store.manifest(task, reload=True)
            parts = parts_to_parquet(manifest['parts'])
            out[task] = dict(header={k: v for k, v in manifest.items() if k != 'parts'}, parts=parts,
                             digest=hashlib.sha256(parts).hexdigest()[:16], num_parts=len(manifest['parts']))
    return out


def apply_pin(store: LabelStore, pinned: Dict[str, dict]) -> None:
    """Make ``store`` read exactly the pinned manifests (never the store's newer ones)."""
    for task, pin in pinned.items():
        store.pin(task, dict(pin['header'], parts=parts_from_parquet(pin['parts'], f'pinned labels of {task}')))


def describe(pinned: Dict[str, dict]) -> str:
    return ', '.join(f'{t}: {p["num_parts"]} parts ({p["digest"]})' for t, p in sorted(pinned.items())) or 'none'


class LabelPin:
    """The checkpoint part holding the pinned manifests; loading it re-pins the run's label join."""
    state_version = 1
    optional_in_older_checkpoints = True   # checkpoints from before pinning resume with the pin made now

    def __init__(self, joiner, pinned: Dict[str, dict], refresh: bool):
        self.joiner, self.pinned, self.refresh = joiner, pinned, refresh
        self.switches: List[dict] = []
        joiner.pin(pinned)

    def state_dict(self) -> dict:
        return dict(tasks=self.pinned, switches=self.switches)

    def on_missing(self, tag: str) -> None:
        log.warning('labels: %s predates pinned label manifests; this run pins the store\'s current ones from here '
                    'on: %s', tag, describe(self.pinned))

    def load_state_dict(self, state: dict) -> None:
        saved = state['tasks']
        self.switches = list(state['switches'])
        if not self.refresh:
            self.pinned = saved
            self.joiner.pin(saved)
            log.info('labels: the manifests this run trained on (from its checkpoint): %s', describe(saved))
            return
        changed = sorted(t for t in set(saved) | set(self.pinned)
                         if saved.get(t, {}).get('digest') != self.pinned.get(t, {}).get('digest'))
        for task in changed:
            before, after = saved.get(task, {}), self.pinned.get(task, {})
            log.warning('labels: data.labels_refresh: task %s switches from %s parts (%s) to the store\'s %s (%s)',
                        task, before.get('num_parts', 0), before.get('digest', '-'), after.get('num_parts', 0),
                        after.get('digest', '-'))
            self.switches.append(dict(task=task, before=before.get('digest'), after=after.get('digest')))
