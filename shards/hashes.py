"""Perceptual hashes of every sample, beside the shard index (what decontamination reads).

A build job appends one segment per index save, covering the shards it completed since the last
one; ``replk-shards hash`` appends segments for shards built before hashing existed. Segments are
only ever added, never rewritten, so concurrent jobs on S3 or a shared disk never touch each
other's objects::

    _index/{source}/hashes.{job:05d}-of-{jobs:05d}.{unix_ns}.parquet
        shard, ordinal (position in the tar), key, phash, dhash (uint64)

A killed job may leave a segment for shards its part does not list yet; the rerun writes them
again (same bytes, same hashes). Readers keep the rows of indexed shards, once per key.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from . import storage
from .common.errors import BadValue
from .common.safe_files import check_name
from .images import BadImage, decode_rgb, image_part
from .index import entry_url, job_tag, load_source, load_source_and_plan, source_folder
from .parquet_bytes import schema_from_bytes, table_from_bytes, table_to_bytes
from .perceptual import image_hashes
from .reader import iter_shard_samples

log = logging.getLogger(__name__)

SEGMENT_SCHEMA = pa.schema([('shard', pa.string()), ('ordinal', pa.int32()), ('key', pa.string()),
                            ('phash', pa.uint64()), ('dhash', pa.uint64())])


@dataclass(frozen=True)
class SampleHash:
    shard: str
    ordinal: int
    key: str
    phash: int
    dhash: int


def save_segment(prefix: str, source: str, job_index: int, num_jobs: int, rows: Sequence[SampleHash],
                 policy: storage.RetryPolicy = storage.DEFAULT_RETRY) -> Optional[str]:
    """Append one segment (nothing when ``rows`` is empty); returns its URL."""
    if not rows:
        return None
    table = pa.table(dict(shard=[r.shard for r in rows], ordinal=[r.ordinal for r in rows],
                          key=[r.key for r in rows], phash=[r.phash for r in rows],
                          dhash=[r.dhash for r in rows]), schema=SEGMENT_SCHEMA)
    url = f'{source_folder(prefix, source)}/hashes.{job_tag(job_index, num_jobs)}.{time.time_ns()}.parquet'
    storage.write_bytes_atomic(url, table_to_bytes(table), policy)
    return url


def _segment_urls(prefix: str, source: str, policy: storage.RetryPolicy) -> List[str]:
    folder = source_folder(prefix, source)
    return [f'{folder}/{n}' for n in sorted(storage.list_details(folder, policy))
            if n.startswith('hashes.') and n.endswith('.parquet')]


def iter_segments(prefix: str, source: str, columns: Optional[List[str]] = None, batch: int = 64,
                  policy: storage.RetryPolicy = storage.DEFAULT_RETRY) -> Iterator[pa.Table]:
    """The source's hash segments one at a time (memory bounded by a batch of segments, not by the
    source: 50M samples are 2 GB of hashes), each cut to the rows of indexed shards. A key can recur
    in two segments (a killed job's rerun): same shard bytes, same hashes."""
    indexed = pa.array(sorted(load_source(prefix, source, policy)))
    urls = _segment_urls(prefix, source, policy)
    for first in range(0, len(urls), batch):
        chunk = urls[first:first + batch]
        for url, data in zip(chunk, storage.read_many(chunk, policy)):
            schema = schema_from_bytes(data)
            if schema != SEGMENT_SCHEMA:
                raise BadValue(f'{url}: not a hash segment of this version (schema {schema})')
            table = table_from_bytes(data, None if columns is None else sorted({'shard', *columns}))
            for name in pc.unique(table['shard']).to_pylist():
                check_name(name, f'shard name in {url}')
            yield table.filter(pc.is_in(table['shard'], indexed))


def load_hashes(prefix: str, source: str, policy: storage.RetryPolicy = storage.DEFAULT_RETRY) -> pa.Table:
    """All hashes of the source's indexed shards, once per key, sorted by shard and position (for
    tools and tests; decontamination streams ``iter_segments`` instead)."""
    tables = list(iter_segments(prefix, source, policy=policy))
    if not tables:
        return SEGMENT_SCHEMA.empty_table()
    table = pa.concat_tables(tables).sort_by([('shard', 'ascending'), ('ordinal', 'ascending')])
    keys = table['key'].to_numpy(zero_copy_only=False)
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return table.filter(pa.array(first))


def shards_without_hashes(prefix: str, source: str, policy: storage.RetryPolicy = storage.DEFAULT_RETRY
                          ) -> List[str]:
    """Indexed shards no segment covers (a segment always covers whole shards); reads one column."""
    hashed = set()
    for table in iter_segments(prefix, source, columns=['shard'], policy=policy):
        hashed.update(pc.unique(table['shard']).to_pylist())
    return [n for n in sorted(load_source(prefix, source, policy)) if n not in hashed]


def hash_shard(name: str, url: str, policy: storage.RetryPolicy = storage.DEFAULT_RETRY) -> List[SampleHash]:
    """Read shard ``name`` (of the index) from ``url`` and hash every sample (the pass for shards
    built before hashing existed, and adopted ones)."""
    rows = []
    for ordinal, raw in enumerate(iter_shard_samples(url, 0, None, policy)):
        try:
            rows.append(SampleHash(name, ordinal, raw['__key__'], *_sample_hashes(raw)))
        except (BadImage, ValueError) as exc:  # counted by the stream and `verify` as corrupt
            log.warning('hash: skipping %s in %s: %s', raw['__key__'], url, exc)
    return rows


def _sample_hashes(raw: dict):
    meta = json.loads(raw['json']) if 'json' in raw else {}
    if 'phash' in meta and 'dhash' in meta:  # hashed at build time: no decoding
        return int(meta['phash'], 16), int(meta['dhash'], 16)
    return image_hashes(decode_rgb(image_part(raw)))


def hash_source(prefix: str, source: str, job_index: int = 0, num_jobs: int = 1, save_every: int = 50,
                policy: storage.RetryPolicy = storage.DEFAULT_RETRY, progress: bool = False) -> int:
    """Hash this job's share of the source's unhashed shards (shard ``i`` of the source's sorted list
    goes to job ``i % num_jobs``, whatever other jobs did), one segment per ``save_every`` shards.
    Returns the shards hashed."""
    unhashed = set(shards_without_hashes(prefix, source, policy))
    entries, plan = load_source_and_plan(prefix, source, policy)
    todo = [n for i, n in enumerate(sorted(entries)) if i % num_jobs == job_index and n in unhashed]
    pending: List[SampleHash] = []
    for i, name in enumerate(tqdm(todo, unit='shard', desc=f'hash {source}', disable=not progress), 1):
        pending += hash_shard(name, entry_url(prefix, entries[name], plan), policy)
        if i % save_every == 0 or i == len(todo):
            save_segment(prefix, source, job_index, num_jobs, pending, policy)
            pending = []
    return len(todo)
