"""The multi-task label store (README, "Labeling" and "Design"), through fsspec (local or s3://).

Layout under the store root::

    labels/{task}/_task.json                       task, classes, class-map version, teacher, the parts table's name
    labels/{task}/_manifests/parts.{utc_ms}.{sha12}.parquet   the committed parts: one row each, columnar
    labels/{task}/{shard_stem}.{sha12}.parquet     one part per image shard: key, idx, prob, source
    labels/{task}/_commits/{stem}.{kind}.{rows}.{human}.{pseudo}.{teacher_id|-}.{sha256}.commit
                                                   the commit record of a part: its facts are its name

A part is written whole under a content-addressed name, then its commit record. The record's
facts live in its object name, so one LIST of ``_commits/`` (1000 names a page on S3) rebuilds
every record without reading one: a refresh costs O(parts / 1000) requests, not O(parts) GETs.
Two jobs racing on a shard each write a whole part and a record; every reader picks the same
winner (``winning_record``). The manifest is rebuilt from the records (any job can do it,
repeatedly, and all converge): the parts table first, under a new name, then ``_task.json``
naming it; tables older than ``PARTS_TABLE_TTL_S`` that it does not name are deleted. Readers
trust only the parts the manifest lists, and read ``_task.json`` again if its table was replaced
in between. Older stores are read as they are: ``_commits/{stem}.json`` records (facts inside,
one GET each; new commits never add any) and ``parts`` inline in ``_task.json``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shards import storage
from shards.common.errors import BadValue, UnknownName
from shards.common.safe_files import check_name
from shards.naming import shard_stem_of_key
from shards.parquet_bytes import table_from_bytes, table_to_bytes

from .commits import (
    COMMIT_SUFFIX,
    KINDS,
    PARTS_TABLE_TTL_S,
    LabelError,
    commit_name,
    parse_commit_name,
    parts_to_parquet,
    read_parts_table,
    shard_fingerprint,
    winning_record,
)
from .tasks import Task, TaskRegistry

log = logging.getLogger(__name__)
STORE_VERSION = 1
PART_SCHEMA = pa.schema([
    ('key', pa.string()),
    ('idx', pa.list_(pa.int32())),          # top-k class indices (one for a human label)
    ('prob', pa.list_(pa.float16())),       # their probabilities, re-normalized to sum 1
    ('source', pa.string()),                # "human" | "pseudo"
    ('teacher_idx', pa.list_(pa.int32())),  # the teacher's top-k on a human-labeled image, else null
])
SOURCES = ('human', 'pseudo')


@dataclass
class Row:
    key: str
    idx: Sequence[int]
    prob: Sequence[float]
    source: str
    teacher_idx: Optional[Sequence[int]] = None


def teacher_id(teacher: Optional[dict]) -> Optional[str]:
    """A short, stable identity of a teacher description (kind, model, weights hash, temperature...)."""
    if teacher is None:
        return None
    return hashlib.sha256(json.dumps(teacher, sort_keys=True).encode()).hexdigest()[:16]


def validate_table(task: Task, stem: str, table: pa.Table) -> None:
    """Every rule of the store, checked on write and on read, column-wise with pyarrow compute
    (it runs on every part a training rank reads: 0.4 ms for 1000 rows of top-10, 28x less than the
    per-row Python loop it replaced).
    An error names the task, the shard and the first offending key."""
    where = f'task {task.name!r}, shard {stem}'
    keys = table.column('key').combine_chunks()
    key_list = None

    def first_key(mask) -> str:
        nonlocal key_list
        key_list = key_list if key_list is not None else keys.to_pylist()
        return key_list[int(np.flatnonzero(np.asarray(mask))[0])]

    counts = pc.value_counts(keys)
    dup = pc.greater(counts.field('counts'), 1)
    if pc.any(dup).as_py():
        raise LabelError(f'{where}: duplicate key {pc.filter(counts.field("values"), dup)[0].as_py()}')
    source, shard = stem.rsplit('-', 1) if '-' in stem else (stem, '')
    prefix = f'{source}/{shard}/'
    rest = pc.utf8_slice_codeunits(keys, len(prefix))
    own = pc.and_(pc.starts_with(keys, prefix), pc.and_(pc.invert(pc.match_substring(rest, '/')),
                                                          pc.greater(pc.utf8_length(rest), 0)))
    foreign = ~own.to_numpy(zero_copy_only=False)
    if foreign.any():
        key = first_key(foreign)
        try:
            owner = shard_stem_of_key(key)
        except ValueError as exc:
            raise LabelError(f'{where}: {exc}') from None
        raise LabelError(f'{where}: key {key} belongs to shard {owner}, not this part')
    sources = table.column('source').combine_chunks()
    known = pc.fill_null(pc.is_in(sources, value_set=pa.array(SOURCES)), False).to_numpy(zero_copy_only=False)
    if not known.all():
        i = int(np.flatnonzero(~known)[0])
        raise LabelError(f'{where}, key {first_key(~known)}: source {sources[i].as_py()!r} is not one of {SOURCES}')
    _check_distributions(task, where, table, first_key)


def _check_distributions(task: Task, where: str, table: pa.Table, first_key) -> None:
    idx, prob = table.column('idx').combine_chunks(), table.column('prob').combine_chunks()
    n_idx = pc.fill_null(pc.list_value_length(idx), 0).to_numpy(zero_copy_only=False)
    n_prob = pc.fill_null(pc.list_value_length(prob), 0).to_numpy(zero_copy_only=False)
    shape_bad = (n_idx == 0) | (n_idx != n_prob)
    if shape_bad.any():
        i = int(np.flatnonzero(shape_bad)[0])
        raise LabelError(f'{where}, key {first_key(shape_bad)}: {n_idx[i]} indices and {n_prob[i]} probabilities')
    rows = len(n_idx)
    ix = pc.list_flatten(idx).to_numpy(zero_copy_only=False)
    p = pc.list_flatten(prob).to_numpy(zero_copy_only=False).astype(np.float32)
    row_of = np.repeat(np.arange(rows), n_idx)
    out_of_range = (ix < 0) | (ix >= task.num_classes)
    if out_of_range.any():
        j = int(np.flatnonzero(out_of_range)[0])
        raise LabelError(f'{where}, key {first_key(row_of == row_of[j])}: class index {int(ix[j])} out of range '
                         f'[0, {task.num_classes})')
    bad_value = ~np.isfinite(p) | (p < 0)
    if bad_value.any():
        r = row_of[int(np.flatnonzero(bad_value)[0])]
        raise LabelError(f'{where}, key {first_key(row_of == r)}: probabilities must be finite and >= 0, got '
                         f'{p[row_of == r].tolist()}')
    sums = np.bincount(row_of, weights=p, minlength=rows)
    unnormalized = np.abs(sums - 1.0) > 1e-2
    if unnormalized.any():
        r = int(np.flatnonzero(unnormalized)[0])
        raise LabelError(f'{where}, key {first_key(unnormalized)}: probabilities sum to {sums[r]:.4f}, not 1')


def rows_to_table(rows: Iterable[Row]) -> pa.Table:
    rows = sorted(rows, key=lambda r: r.key)
    return pa.table({
        'key': [r.key for r in rows],
        'idx': [list(map(int, r.idx)) for r in rows],
        'prob': [_renormalized_f16(r.prob) for r in rows],
        'source': [r.source for r in rows],
        'teacher_idx': [None if r.teacher_idx is None else list(map(int, r.teacher_idx)) for r in rows],
    }, schema=PART_SCHEMA)


def _renormalized_f16(prob) -> np.ndarray:
    p = np.asarray(prob, dtype=np.float64)
    total = p.sum()
    if not math.isfinite(total) or total <= 0:
        return np.asarray(p, dtype=np.float16)  # left for validation to reject with its context
    return (p / total).astype(np.float16)


class LabelStore:
    """Reader and writer of one store root (local folder or ``s3://bucket/prefix``)."""

    MANIFEST_REFRESH_S = 60.0
    # A refresh LISTs every commit (26 s at 73k parts on the loopback server): a job's refreshes
    # as it goes may take at most this share of its time; the one at its end always runs.
    REFRESH_MAX_SHARE = 0.1

    def __init__(self, root: str, registry: Optional[TaskRegistry] = None,
                 retry: storage.RetryPolicy = storage.DEFAULT_RETRY):
        self.root, self.registry, self.retry = root.rstrip('/'), registry or TaskRegistry(), retry
        self._manifests: Dict[str, dict] = {}
        self._pinned: set = set()   # tasks whose manifest is fixed (a training run's pinned labels)
        self._last_refresh: Dict[str, float] = {}
        self._refresh_cost: Dict[str, float] = {}

    # --- paths ----------------------------------------------------------------------------
    def _task_dir(self, task: str) -> str:
        return f'{self.root}/labels/{check_name(task, "task name")}'

    def _manifest_url(self, task: str) -> str:
        return f'{self._task_dir(task)}/_task.json'

    def _teacher_url(self, task: str) -> str:
        return f'{self._task_dir(task)}/_teacher.json'

    def _commit_url(self, task: str, stem: str) -> str:
        return f'{self._task_dir(task)}/_commits/{check_name(stem, "shard stem")}.json'

    # --- the task header ------------------------------------------------------------------
    def open_task(self, task_name: str, teacher: Optional[dict] = None, topk: Optional[int] = None) -> Task:
        """Create the task's records, or check that they agree with this registry and teacher.

        Both records are created first-writer-wins (``storage.create_exclusive``): ``_task.json``
        fixes the class map, ``_teacher.json`` the one teacher whose labels the task holds. Of two
        jobs with different teachers racing on a fresh store, one claims the task and the other
        fails naming both teachers.
        """
        task = self.registry.get(task_name)
        header = dict(version=STORE_VERSION, task=task.name, num_classes=task.num_classes,
                      class_map_version=task.class_map_version, class_names=list(task.class_names),
                      teacher=None, topk=None, parts={})
        storage.create_exclusive(self._manifest_url(task_name), json.dumps(header, indent=1).encode(), self.retry)
        manifest = self.manifest(task_name, reload=True)
        self.check_task(task, manifest)
        if teacher is not None:
            self._claim_teacher(task_name, teacher, topk, manifest)
        return task

    def _claim_teacher(self, task_name: str, teacher: dict, topk: Optional[int], manifest: dict) -> None:
        claim = json.dumps(dict(teacher=teacher, topk=topk), sort_keys=True).encode()
        storage.create_exclusive(self._teacher_url(task_name), claim, self.retry)
        holder = json.loads(storage.read_bytes(self._teacher_url(task_name), self.retry))['teacher']
        for other in (holder, manifest.get('teacher')):
            if other is not None and other != teacher:
                raise LabelError(f'task {task_name!r} of {self.root} holds the labels of teacher {other}; this job\'s '
                                 f'teacher is {teacher}. One task holds one teacher\'s labels: use another store '
                                 'or the same teacher')
        if manifest.get('teacher') is None:
            manifest.update(teacher=teacher, topk=topk)
            self._write_manifest(task_name, manifest)

    @staticmethod
    def check_task(task: Task, manifest: dict) -> None:
        if manifest.get('version') != STORE_VERSION:
            raise LabelError(f'task {task.name!r}: store version {manifest.get("version")!r}, '
                             f'this code reads {STORE_VERSION}')
        if manifest['class_map_version'] != task.class_map_version or manifest['num_classes'] != task.num_classes:
            stored = manifest.get('class_names') or []
            raise LabelError(f'task {task.name!r}: the label store was made with {manifest["num_classes"]} classes '
                             f'{_few(stored)} (class-map version {manifest["class_map_version"]}), the tasks file '
                             f'here gives {task.num_classes} {_few(task.class_names)} (version {task.class_map_version}); '
                             'its labels index the store\'s classes: use the tasks file the store was made with, '
                             'or label into a new store')

    def has_task(self, task: str) -> bool:
        try:
            self.manifest(task)
            return True
        except FileNotFoundError:
            return False

    def pin(self, task: str, manifest: dict) -> None:
        """Read this manifest for ``task`` from now on, never the store's (see ``pretrain/label_pin.py``)."""
        self._manifests[task] = manifest
        self._pinned.add(task)

    def manifest(self, task: str, reload: bool = False) -> dict:
        """``_task.json`` with ``parts`` (stem -> record) read from the table it names."""
        if task in self._pinned:
            return self._manifests[task]
        if reload or task not in self._manifests:
            for _ in range(5):
                header = json.loads(storage.read_bytes(self._manifest_url(task), self.retry))
                table = header.pop('parts_table', None)
                if table is None:  # a new task, or a store from before the parts table
                    break
                url = f'{self._task_dir(task)}/_manifests/{check_name(table, "parts table in _task.json")}'
                try:
                    header['parts'] = dict(read_parts_table(url, self.retry))
                    break
                except FileNotFoundError:  # replaced and collected since we read _task.json: read it again
                    continue
            else:
                raise LabelError(f'{self._manifest_url(task)}: its parts table kept being replaced while read')
            self._manifests[task] = header
        return self._manifests[task]

    def _write_manifest(self, task: str, manifest: dict) -> None:
        """The parts table first, under a new name, then ``_task.json`` naming it, then old tables
        collected (see the module docstring)."""
        data = parts_to_parquet(manifest['parts'])
        now_ms = int(time.time() * 1000)
        table = f'parts.{now_ms:013d}.{hashlib.sha256(data).hexdigest()[:12]}.parquet'
        folder = f'{self._task_dir(task)}/_manifests'
        storage.write_bytes_atomic(f'{folder}/{table}', data, self.retry)
        header = {k: v for k, v in manifest.items() if k != 'parts'}
        header.update(parts_table=table, num_parts=len(manifest['parts']))
        storage.write_bytes_atomic(self._manifest_url(task), json.dumps(header, indent=1).encode(), self.retry)
        self._manifests[task] = manifest
        for name in storage.list_names(folder, self.retry):
            written_ms = name.split('.')[1] if name.startswith('parts.') else ''
            if name != table and written_ms.isdigit() and now_ms - int(written_ms) > PARTS_TABLE_TTL_S * 1000:
                storage.remove(f'{folder}/{name}', self.retry)

    # --- writing --------------------------------------------------------------------------
    def commit_records(self, task: str) -> Dict[str, dict]:
        """The winning commit record of every committed shard (the truth ``_task.json`` is rebuilt
        from): one LIST of ``_commits/``, plus one GET per record of an older store."""
        by_stem = self.all_commit_records(task)
        teacher = teacher_id(self.manifest(task).get('teacher')) if by_stem else None
        winners = {stem: winning_record(records, teacher) for stem, records in by_stem.items()}
        return {stem: {k: v for k, v in r.items() if k != 'legacy'} for stem, r in sorted(winners.items())}

    def all_commit_records(self, task: str) -> Dict[str, List[dict]]:
        """Every commit record of every shard, winners and the records they supersede (a human part
        under a teacher's, an older teacher's)."""
        names = storage.list_names(f'{self._task_dir(task)}/_commits', self.retry)
        by_stem: Dict[str, List[dict]] = {}
        for name in names:
            if name.endswith(COMMIT_SUFFIX):
                record = parse_commit_name(name)
                by_stem.setdefault(record['stem'], []).append(record)
        legacy = [n[:-5] for n in names if n.endswith('.json')]
        if legacy:
            for stem, raw in zip(legacy, storage.read_many([self._commit_url(task, s) for s in legacy], self.retry)):
                by_stem.setdefault(stem, []).append(dict(json.loads(raw), legacy=True))
        return by_stem

    def write_part(self, task_name: str, stem: str, rows: Iterable[Row], kind: str,
                   teacher: Optional[dict] = None, shard_sha256: Optional[str] = None) -> dict:
        """Validate, write the part whole, then its commit record. ``kind``: "teacher" or "human".
        A teacher part's record carries the identity of its teacher (``teacher``, else the task's),
        and every record the content of the shard it labels (``shard_sha256``, from the shard index):
        the records of this shard made for other content are then removed (they label images the
        shard no longer holds)."""
        if kind == 'teacher' and teacher is None:
            teacher = self.manifest(task_name).get('teacher')
        task = self.registry.get(task_name)
        check_name(stem, 'shard stem')  # it becomes part of two file names
        table = rows_to_table(rows)
        validate_table(task, stem, table)
        data = table_to_bytes(table)
        digest = hashlib.sha256(data).hexdigest()
        file = f'{stem}.{digest[:12]}.parquet'
        storage.write_bytes_atomic(f'{self._task_dir(task_name)}/{file}', data, self.retry)
        counts = {s: int(pc.sum(pc.equal(table.column('source'), s)).as_py() or 0) for s in SOURCES}
        if kind not in KINDS:
            raise BadValue(f'kind {kind!r} is not one of {KINDS}')
        record = dict(stem=stem, file=file, rows=table.num_rows, sha256=digest, kind=kind, **counts)
        if teacher is not None:
            record['teacher_id'] = teacher_id(teacher)
        if shard_sha256 is not None:
            record['shard'] = shard_fingerprint(shard_sha256)
        # The name carries the facts (readers only LIST); the body repeats them for a person.
        name = commit_name(record)
        storage.write_bytes_atomic(f'{self._task_dir(task_name)}/_commits/{name}', json.dumps(record).encode(),
                                   self.retry)
        if shard_sha256 is not None:
            self._remove_records_of_other_content(task_name, stem, record['shard'], file)
        return record

    def _remove_records_of_other_content(self, task: str, stem: str, shard: str, keep_file: str) -> None:
        """The records of this shard made for other bytes, and their part files (one prefix LIST of
        this shard's records, not of the whole store)."""
        folder = f'{self._task_dir(task)}/_commits'
        for name in storage.list_prefixed(folder, f'{stem}.', self.retry):
            if name.endswith(COMMIT_SUFFIX):
                other = parse_commit_name(name)
                if other['stem'] == stem and other.get('shard') not in (None, shard):
                    storage.remove(f'{folder}/{name}', self.retry)
                    if other['file'] != keep_file:   # content-addressed: the same labels are the same file
                        storage.remove(f'{self._task_dir(task)}/{other["file"]}', self.retry)

    def refresh_manifest(self, task: str, force: bool = True) -> dict:
        """Rebuild ``parts`` of ``_task.json`` from the commit records until they agree.

        Jobs call it as they go (``force=False``: at most every minute, and no more often than
        keeps refreshing under ``REFRESH_MAX_SHARE`` of the job's time) and when they end; records
        only grow, so concurrent refreshes converge on the full set.
        """
        now = time.monotonic()
        interval = max(self.MANIFEST_REFRESH_S, self._refresh_cost.get(task, 0.0) / self.REFRESH_MAX_SHARE)
        if not force and now - self._last_refresh.get(task, -1e9) < interval:
            return self.manifest(task)
        self._last_refresh[task] = now
        try:
            return self._rebuild_manifest(task)
        finally:
            self._refresh_cost[task] = time.monotonic() - now

    def _rebuild_manifest(self, task: str) -> dict:
        while True:
            header = json.loads(storage.read_bytes(self._manifest_url(task), self.retry))
            header.pop('parts_table', None)  # the parts are rebuilt from the records, not read
            self._manifests[task] = manifest = dict(header, parts=header.get('parts', {}))
            records = self.commit_records(task)
            manifest = dict(manifest, parts=records)
            self._write_manifest(task, manifest)
            # Another job may have listed fewer records and written after us: re-LIST (names only).
            if self.commit_records(task) == records:
                return manifest

    # --- reading --------------------------------------------------------------------------
    def committed_parts(self, task: str) -> Dict[str, dict]:
        return self.manifest(task)['parts']

    def task(self, task_name: str) -> Task:
        """The registry's task, else the one the store records (its class names in ``_task.json``),
        so reading a store needs no tasks file."""
        try:
            return self.registry.get(task_name)
        except KeyError as unknown:
            try:
                names = self.manifest(task_name).get('class_names')
            except FileNotFoundError:
                raise unknown from None
            if not names:
                raise UnknownName(f'{unknown.args[0]} (this store predates recorded class names)') from None
            return Task(task_name, tuple(names))

    def read_part(self, task_name: str, stem: str, shard_sha256: Optional[str] = None) -> Optional[pa.Table]:
        """The validated part of one image shard for one task, or None if none is committed. With
        ``shard_sha256`` (the shard's hash in the index) a part made for other content is refused."""
        task = self.task(task_name)
        manifest = self.manifest(task_name)
        self.check_task(task, manifest)
        record = manifest['parts'].get(stem)
        if record is None:
            return None
        self.check_record(task_name, stem, record, shard_sha256)
        url = f'{self._task_dir(task_name)}/{check_name(record["file"], f"part file of {stem} in _task.json")}'
        data = storage.read_bytes(url, self.retry)
        if hashlib.sha256(data).hexdigest() != record['sha256']:
            raise LabelError(f'task {task_name!r}, shard {stem}: part {record["file"]} does not match the '
                             'hash it was committed with')
        table = table_from_bytes(data)
        validate_table(task, stem, table)
        return table

    def check_record(self, task_name: str, stem: str, record: dict, shard_sha256: Optional[str] = None) -> None:
        """What a part's commit record alone can refuse, without reading the part: labels made for
        other bytes of the shard (with ``shard_sha256``) or by a teacher the task no longer holds."""
        if shard_sha256 is not None:
            check_content(task_name, stem, record, shard_sha256)
        manifest = self.manifest(task_name)
        if record.get('teacher_id') not in (None, teacher_id(manifest.get('teacher'))):
            raise LabelError(f'task {task_name!r}, shard {stem}: its part was written by teacher '
                             f'{record["teacher_id"]}, but the task holds teacher {teacher_id(manifest.get("teacher"))} '
                             f'({manifest.get("teacher")}): relabel the shard with the task\'s teacher')

    def shard_targets(self, stem: str, tasks: Sequence[str],
                      shard_sha256: Optional[str] = None) -> Dict[str, Dict[str, tuple]]:
        """For one image shard: ``{task: {key: (idx, prob, source)}}`` for every committed task."""
        out = {}
        for task in tasks:
            table = self.read_part(task, stem, shard_sha256)
            if table is None:
                out[task] = {}
                continue
            cols = table.to_pydict()
            out[task] = {k: (i, p, s) for k, i, p, s in zip(cols['key'], cols['idx'], cols['prob'], cols['source'])}
        return out

    def _ghost_labels(self, task: str, shards: str) -> List[str]:
        from shards.index import ShardIndex
        from shards.reader import member_keys

        index = ShardIndex.load(shards, policy=self.retry)
        stems = {e.stem: e.name for e in index.shards.values()}
        faults = []
        for stem in sorted(self.manifest(task, reload=True)['parts']):
            if stem not in stems:
                faults.append(f'task {task!r}, shard {stem}: labeled, but {shards} has no such shard')
                continue
            try:
                check_content(task, stem, self.manifest(task)['parts'][stem], index.shards[stems[stem]].sha256)
            except LabelError as exc:
                faults.append(str(exc))
                continue
            members = member_keys(index.url_of(shards, index.shards[stems[stem]]), self.retry)
            ghosts = [k for k in self.read_part(task, stem).column('key').to_pylist() if k not in members]
            if ghosts:
                faults.append(f'task {task!r}, shard {stem}: {len(ghosts)} labels for keys the shard does not '
                              f'hold, e.g. {ghosts[0]}')
        return faults

    def orphans(self, task: str) -> List[str]:
        """Part files no commit record names (a superseded record still names its part), and
        unfinished writes (a racing or killed job's leftovers)."""
        named = {r['file'] for records in self.all_commit_records(task).values() for r in records}
        return [n for n in storage.list_names(self._task_dir(task), self.retry)
                if (n.endswith('.parquet') and n not in named) or '.parquet.tmp-' in n]

    def validate(self, task: str, shards: Optional[str] = None) -> List[str]:
        """All faults of one task: unreadable or invalid parts, uncommitted records, orphans; with
        ``shards`` (their prefix), also labels for keys their shard does not hold (tar member names
        are read, not the images)."""
        faults = []
        if shards is not None:
            faults += self._ghost_labels(task, shards)
        records = self.commit_records(task)
        listed = self.manifest(task, reload=True)['parts']
        for stem in sorted(set(records) - set(listed)):
            faults.append(f'task {task!r}, shard {stem}: committed but not yet listed in _task.json '
                          '(run `python -m labeling commit`)')
        for stem in sorted(listed):
            try:
                self.read_part(task, stem)
            except (LabelError, FileNotFoundError) as exc:
                faults.append(str(exc))
        faults += [f'task {task!r}: orphan part {name} (no commit record names it)' for name in self.orphans(task)]
        return faults


_WARNED_UNBOUND: set = set()


def check_content(task: str, stem: str, record: dict, shard_sha256: str) -> None:
    """Refuse a part made for other bytes of its shard (a source rebuilt under the same names);
    a part from before records named their content is read, with one warning per task."""
    made_for = record.get('shard')
    if made_for is None:
        if task not in _WARNED_UNBOUND:
            _WARNED_UNBOUND.add(task)
            log.warning('task %r: its label parts (e.g. shard %s) do not name the shard content they label '
                        '(committed by an older version); a rebuilt shard cannot be told from its old bytes: '
                        'relabel or re-import to bind them', task, stem)
        return
    if made_for != shard_fingerprint(shard_sha256):
        raise LabelError(f'task {task!r}, shard {stem}: its labels were made for other content (shard sha256 '
                         f'{made_for}..., the index now says {shard_fingerprint(shard_sha256)}...): the shard was '
                         f'rebuilt since; relabel it (python -m labeling run) or re-import its human labels '
                         f'(python -m labeling import-human)')


def _few(names) -> str:
    names = list(names)
    return str(names[:4])[:-1] + (', ...]' if len(names) > 4 else ']') if names else '(names not recorded)'
