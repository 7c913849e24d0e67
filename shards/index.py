"""The shard index: which shards are complete. A shard absent from the index does not exist.

Layout beside the shards, one folder per source, written by build jobs that never write the same
object (README, "Shards": the multi-job protocol)::

    _index/{source}/build.json                          the build's parameters and plan fingerprint
                                                        (created first-writer-wins; every job checks it)
    _index/{source}/shards.{job:05d}-of-{jobs:05d}.parquet   the shards that job completed: name,
                                                        samples, bytes, sha256, human labels per task,
                                                        skipped count (rewritten by that job alone)
    _index/{source}/skipped.{job:05d}-of-{jobs:05d}.jsonl    the images it skipped, and why (a report:
                                                        readers of the stream never fetch it)
    _index/{source}/hashes.{job:05d}-of-{jobs:05d}.{ns}.parquet  perceptual hashes of the samples,
                                                        append-only segments (``hashes.py``)

A reader of one source lists its folder and reads the job parts (about 40 bytes a shard), once
per process: the listing (names, sizes, versions) tells a cached copy from a stale one. The
single ``_index.json`` of older builds is still read, merged with the parts.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import pyarrow as pa

from . import storage
from .common.errors import BadValue
from .common.safe_files import check_name
from .naming import LABEL_FIELDS, adopted_url, shard_name, shard_stem
from .parquet_bytes import table_from_bytes, table_to_bytes

INDEX_NAME = '_index.json'      # the single-file index of older builds (read, never written)
INDEX_DIR = '_index'
INDEX_VERSION = 1
BUILD_NAME = 'build.json'
PART_SCHEMA = pa.schema([('name', pa.string()), ('samples', pa.int64()), ('bytes', pa.int64()),
                         ('sha256', pa.binary(32)), ('tasks', pa.string()), ('skipped', pa.int64())])


class IndexError_(BadValue):
    """The index is missing, unreadable, or of another version."""


@dataclass
class ShardEntry:
    name: str                 # file name beside the index, e.g. "in1k-000012.tar"
    source: str
    samples: int
    bytes: int
    sha256: str
    tasks: Dict[str, int] = field(default_factory=dict)      # human labels per task in this shard
    skipped: List[dict] = field(default_factory=list)        # [{"id", "path", "reason"}] never written
    skipped_count: Optional[int] = None                      # when read without the skipped report

    @property
    def stem(self) -> str:
        return shard_stem(self.name)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped) if self.skipped_count is None else self.skipped_count


def job_tag(job_index: int, num_jobs: int) -> str:
    return f'{job_index:05d}-of-{num_jobs:05d}'


def source_folder(prefix: str, source: str) -> str:
    return storage.join(prefix, f'{INDEX_DIR}/{check_name(source, "source name")}')


# --- one build job's part ----------------------------------------------------------------------
def save_job_part(prefix: str, source: str, job_index: int, num_jobs: int, entries: List[ShardEntry],
                  policy: storage.RetryPolicy = storage.DEFAULT_RETRY) -> None:
    """Write the skipped report, then the part that lists the job's shards (readers key on the part)."""
    folder, tag = source_folder(prefix, source), job_tag(job_index, num_jobs)
    entries = sorted(entries, key=lambda e: e.name)
    report = ''.join(json.dumps(dict(s, shard=e.name)) + '\n' for e in entries for s in e.skipped)
    storage.write_bytes_atomic(f'{folder}/skipped.{tag}.jsonl', report.encode(), policy)
    table = pa.table(dict(name=[e.name for e in entries], samples=[e.samples for e in entries],
                          bytes=[e.bytes for e in entries], sha256=[bytes.fromhex(e.sha256) for e in entries],
                          tasks=[json.dumps(e.tasks, sort_keys=True) for e in entries],
                          skipped=[e.num_skipped for e in entries]), schema=PART_SCHEMA)
    storage.write_bytes_atomic(f'{folder}/shards.{tag}.parquet', table_to_bytes(table), policy)


def read_part(url: str, source: str, policy: storage.RetryPolicy, data: Optional[bytes] = None) -> List[ShardEntry]:
    table = table_from_bytes(storage.read_bytes(url, policy) if data is None else data)
    if table.schema != PART_SCHEMA:
        raise IndexError_(f'{url}: not a shard index part of this version (schema {table.schema})')
    # Names from storage are data: a crafted part must not point a reader or writer elsewhere.
    return [ShardEntry(name=check_name(r['name'], f'shard name in {url}'), source=source, samples=r['samples'],
                       bytes=r['bytes'], sha256=r['sha256'].hex(), tasks=json.loads(r['tasks']),
                       skipped_count=r['skipped']) for r in table.to_pylist()]


def read_skipped(prefix: str, source: str, job_index: int, num_jobs: int,
                 policy: storage.RetryPolicy = storage.DEFAULT_RETRY) -> Dict[str, List[dict]]:
    """The skipped report of one job part: shard name -> skipped images."""
    url = f'{source_folder(prefix, source)}/skipped.{job_tag(job_index, num_jobs)}.jsonl'
    try:
        lines = storage.read_bytes(url, policy).decode().splitlines()
    except FileNotFoundError:
        return {}
    out: Dict[str, List[dict]] = {}
    for line in lines:
        record = json.loads(line)
        out.setdefault(record.pop('shard'), []).append(record)
    return out


# --- reading a source ------------------------------------------------------------------------
_CACHE: Dict[tuple, tuple] = {}   # (prefix, source) -> (listing signature, entries)


def _legacy(prefix: str, policy: storage.RetryPolicy) -> Optional[dict]:
    """The single ``_index.json`` of older builds, or None."""
    url = storage.join(prefix, INDEX_NAME)
    try:
        raw = storage.read_bytes(url, policy)
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise IndexError_(f'{url} is not valid JSON: {exc}') from None
    if doc.get('version') != INDEX_VERSION:
        raise IndexError_(f'{url} has version {doc.get("version")!r}; this code reads version {INDEX_VERSION}')
    doc['shards'] = {check_name(s['name'], f'shard name in {url}'): ShardEntry(**s) for s in doc['shards']}
    return doc


def load_source(prefix: str, source: str, policy: storage.RetryPolicy = storage.DEFAULT_RETRY
                ) -> Dict[str, ShardEntry]:
    """The complete shards of one source (name -> entry): every job's part, and an older build's
    ``_index.json``. Cached per process; one LIST tells whether the cache is current."""
    return load_source_and_plan(prefix, source, policy)[0]


def load_source_and_plan(prefix: str, source: str, policy: storage.RetryPolicy = storage.DEFAULT_RETRY
                         ) -> Tuple[Dict[str, ShardEntry], Optional[dict]]:
    """:func:`load_source` and the build's plan (``build.json``, or an older build's), read with
    the same listing and cached with it."""
    folder = source_folder(prefix, source)
    listing = storage.list_details(folder, policy)
    parts = sorted(n for n in listing if n.startswith('shards.') and n.endswith('.parquet'))
    signature = tuple((n, listing[n]) for n in parts + ([BUILD_NAME] if BUILD_NAME in listing else []))
    cached = _CACHE.get((prefix, source))
    if cached is not None and cached[0] == signature:
        return dict(cached[1]), cached[2]
    entries: Dict[str, ShardEntry] = {}
    urls = [f'{folder}/{name}' for name in parts]
    for url, data in zip(urls, storage.read_many(urls, policy) if urls else []):  # concurrent GETs on S3
        for entry in read_part(url, source, policy, data):
            entries[entry.name] = entry
    legacy = _legacy(prefix, policy)  # one request where there is none
    for name, entry in (legacy or {}).get('shards', {}).items():
        if entry.source == source:
            entries.setdefault(name, entry)
    plan = (json.loads(storage.read_bytes(f'{folder}/{BUILD_NAME}', policy)) if BUILD_NAME in listing
            else (legacy or {}).get('builds', {}).get(source))
    _CACHE[(prefix, source)] = (signature, entries, plan)
    return dict(entries), plan


def load_build_info(prefix: str, source: str, policy: storage.RetryPolicy = storage.DEFAULT_RETRY
                    ) -> Optional[dict]:
    try:
        return json.loads(storage.read_bytes(f'{source_folder(prefix, source)}/{BUILD_NAME}', policy))
    except FileNotFoundError:
        legacy = _legacy(prefix, policy)
        return (legacy or {}).get('builds', {}).get(source)


def record_plan(prefix: str, source: str, plan: dict, policy: storage.RetryPolicy = storage.DEFAULT_RETRY
                ) -> Optional[dict]:
    """Record a source's plan (``build.json``) if none is: the first writer wins. Returns the plan
    recorded before (for the caller to compare with its own), or None when this one was recorded."""
    previous = load_build_info(prefix, source, policy)
    if previous is None:
        if storage.create_exclusive(f'{source_folder(prefix, source)}/{BUILD_NAME}', json.dumps(plan, indent=1).encode(),
                                    policy):
            return None
        previous = load_build_info(prefix, source, policy)
    return previous


def entry_url(prefix: str, entry: 'ShardEntry', plan: Optional[dict]) -> str:
    """The URL readers pass to ``reader.iter_shard_samples`` for a shard of the index: the shard
    beside the index, under its own name or, for an adopted source (``plan['adopted']``:
    ``adopt.py``), under the name the other tool gave it, addressed with the project's name for it
    (``naming.adopted_url``)."""
    adopted = (plan or {}).get('adopted')
    if not adopted:
        return storage.join(prefix, entry.name)
    where = f'{source_folder(prefix, entry.source)}/{BUILD_NAME}'
    number, files, labels = int(entry.stem.rsplit('-', 1)[1]), adopted.get('files') or [], adopted.get('labels') or {}
    if not 0 <= number < len(files):
        raise IndexError_(f'{where} lists {len(files)} adopted tars; the index names shard {entry.name}: adopt again')
    file_name = check_name(files[number], f'adopted shard file in {where}')
    bad = [f'{t}={w}' for t, w in labels.items() if not (isinstance(w, str) and LABEL_FIELDS.fullmatch(w))]
    if '#' in file_name or bad:   # a name from storage is data
        raise IndexError_(f'{where}: unusable adopted entry ({file_name!r}, labels {bad}); adopt again')
    elsewhere = adopted.get('base') is not None   # the index is not beside the tars: readers are told where
    return adopted_url(storage.join(_tar_folder(adopted.get('base'), prefix, where), file_name), entry.source, number,
                       labels, index=prefix if elsewhere else None)


TAR_FOLDER = re.compile(r'(?:s3|gs|gcs|az|abfs|file)://[^#;=\s]+|/[^#;=\s]*')


def usable_folder(folder: str) -> bool:
    """An object-store URL or an absolute path that an adopted shard's URL can carry as it is."""
    return isinstance(folder, str) and bool(TAR_FOLDER.fullmatch(folder)) and '/../' not in f'{folder}/'


def _tar_folder(base, prefix: str, where: str) -> str:
    """Where an adopted source's tars are: beside the index, or the folder ``build.json`` records
    (read from storage, so checked: an object-store URL or an absolute path, nothing to unescape;
    an index on an object store never sends readers to this machine's disk)."""
    if base is None:
        return prefix
    if not usable_folder(base) or (not storage.is_local(prefix) and storage.is_local(base)):
        raise IndexError_(f'{where}: unusable tar folder {base!r}; adopt again')
    return base


def planned_but_missing(source: str, entries: Dict[str, 'ShardEntry'], build_info: Optional[dict]
                        ) -> List[Tuple[str, Optional[int]]]:
    """(name, the build job that owns it, or None when the build predates recording its job count) of
    every shard the build planned but the index does not list: a job that never ran, or failed."""
    planned = (build_info or {}).get('shards')
    if not isinstance(planned, int):
        return []
    jobs = build_info.get('num_jobs')
    return [(shard_name(source, i), owner_job(i, jobs) if jobs else None) for i in range(planned)
            if shard_name(source, i) not in entries]


def owner_job(shard: int, num_jobs: int) -> int:
    """Which of ``num_jobs`` build jobs writes shard ``shard`` (the multi-job protocol's one rule)."""
    return shard % num_jobs


def missing_shards(prefix: str, source: str, policy: storage.RetryPolicy = storage.DEFAULT_RETRY
                   ) -> List[Tuple[str, Optional[int]]]:
    return planned_but_missing(source, load_source(prefix, source, policy), load_build_info(prefix, source, policy))


def incomplete_message(source: str, missing: List[Tuple[str, Optional[int]]], build_info: dict) -> str:
    """One line naming the missing shards, the jobs that own them and the rerun that fills them in."""
    jobs = build_info.get('num_jobs')
    shown = ', '.join(name + (f' (job {job} of {jobs})' if job is not None else '') for name, job in missing[:3])
    owners = sorted({job for _, job in missing if job is not None})
    rerun = (f'rerun `replk-shards build` for source {source} with ' +
             ' / '.join(f'--job-index {j} --num-jobs {jobs}' for j in owners[:4]) + (' ...' if len(owners) > 4 else '')
             if owners else 'rerun its build (with the job count it was planned for)')
    return (f'source {source!r} is incomplete: {len(missing)} of {build_info["shards"]} planned shards are not in '
            f'the index, e.g. {shown}; {rerun} (a build writes only what is missing)')


def list_sources(prefix: str, policy: storage.RetryPolicy = storage.DEFAULT_RETRY) -> List[str]:
    sources = set(storage.list_names(storage.join(prefix, INDEX_DIR), policy))
    legacy = _legacy(prefix, policy)
    sources |= {e.source for e in (legacy or {}).get('shards', {}).values()}
    return sorted(sources)


def migrate_legacy(prefix: str, policy: storage.RetryPolicy = storage.DEFAULT_RETRY) -> Dict[str, int]:
    """Move an older build's ``_index.json`` to the per-source layout (one part per source, as job
    0 of 1; its build parameters as ``build.json``), check that every source reads back the same,
    then remove ``_index.json``. For a prefix no build is writing to. Returns shards per source."""
    legacy = _legacy(prefix, policy)
    if legacy is None:
        raise IndexError_(f'{storage.join(prefix, INDEX_NAME)} not found: nothing to migrate')
    by_source: Dict[str, List[ShardEntry]] = {}
    for entry in legacy['shards'].values():
        by_source.setdefault(entry.source, []).append(entry)
    for source, entries in by_source.items():
        folder = source_folder(prefix, source)
        if storage.list_details(folder, policy):
            raise IndexError_(f'{folder} already exists: {prefix} holds both layouts for {source!r}; '
                              'migrate by hand or rebuild')
        save_job_part(prefix, source, 0, 1, entries, policy)
        if source in legacy.get('builds', {}):
            storage.write_bytes_atomic(f'{folder}/{BUILD_NAME}', json.dumps(legacy['builds'][source], indent=1).encode(),
                                       policy)
    for source, entries in by_source.items():  # the parts alone must read back the same first
        url = f'{source_folder(prefix, source)}/shards.{job_tag(0, 1)}.parquet'
        back = {e.name: (e.samples, e.sha256, e.tasks) for e in read_part(url, source, policy)}
        if back != {e.name: (e.samples, e.sha256, e.tasks) for e in entries}:
            raise IndexError_(f'{url}: the migrated index of {source!r} does not read back the same; '
                              f'{INDEX_NAME} is kept')
    storage.remove(storage.join(prefix, INDEX_NAME), policy)
    _CACHE.clear()
    return {source: len(entries) for source, entries in sorted(by_source.items())}


@dataclass
class ShardIndex:
    """Every source under a prefix, merged (for the tools: stat, verify, validate, import)."""
    shards: Dict[str, ShardEntry] = field(default_factory=dict)
    builds: Dict[str, dict] = field(default_factory=dict)    # per source: the parameters it was built with
    missing: Dict[str, list] = field(default_factory=dict)   # per source: planned shards not listed (name, job)

    @classmethod
    def load(cls, prefix: str, missing_ok: bool = False,
             policy: storage.RetryPolicy = storage.DEFAULT_RETRY) -> 'ShardIndex':
        index = cls()
        for source in list_sources(prefix, policy):
            entries = load_source(prefix, source, policy)
            index.shards.update(entries)
            info = load_build_info(prefix, source, policy)
            if info is not None:
                index.builds[source] = info
                index.missing[source] = planned_but_missing(source, entries, info)
        if not index.shards and not missing_ok:
            missing = storage.missing_bucket(prefix)
            if missing is not None:
                raise missing
            raise IndexError_(f'no shard index under {prefix} ({INDEX_DIR}/ or {INDEX_NAME}): '
                              f'no shards were ever completed there')
        return index

    # --- queries ---------------------------------------------------------------------------
    def add(self, entry: ShardEntry) -> None:
        self.shards[entry.name] = entry

    def sources(self) -> List[str]:
        return sorted({s.source for s in self.shards.values()})

    def url_of(self, prefix: str, entry: ShardEntry) -> str:
        """The URL its readers read ``entry`` from (``entry_url``)."""
        return entry_url(prefix, entry, self.builds.get(entry.source))

    def shards_of(self, source: str) -> List[ShardEntry]:
        return [self.shards[n] for n in sorted(self.shards) if self.shards[n].source == source]

    def incomplete(self) -> Dict[str, str]:
        """Per incomplete source, the line that names its missing shards and their jobs."""
        return {src: incomplete_message(src, missing, self.builds[src]) for src, missing in sorted(self.missing.items())
                if missing}

    def totals(self, source: Optional[str] = None) -> dict:
        """Per source: shards, samples, bytes, skipped images and human labels per task."""
        out = {}
        for src in ([source] if source else self.sources()):
            entries = self.shards_of(src)
            tasks = Counter()
            for e in entries:
                tasks.update(e.tasks)
            out[src] = dict(shards=len(entries), samples=sum(e.samples for e in entries),
                            bytes=sum(e.bytes for e in entries),
                            skipped=sum(e.num_skipped for e in entries), tasks=dict(sorted(tasks.items())))
        return out
