"""The exclusion list: training samples that are near-duplicates of evaluation images.

One Parquet file, written by ``replk-shards decontaminate`` and named by the user (keep one file
per version, e.g. ``exclusions/in1k-val.v1.parquet``). Each row names a sample by shard, position
in the tar and key, with the shard's sha256 at the time (a stream refuses a list made for other
shard bytes) and the evaluation image it matched. The file's schema metadata holds the format
version and how it was made; its identity is the sha256 of its bytes, which a training run records
in its data cursor so that a resume with another list is an error.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import pyarrow as pa

from . import storage
from .common.errors import BadValue, NotFound
from .common.safe_files import check_name
from .parquet_bytes import table_from_bytes, table_to_bytes

FORMAT = 'replk-exclusions'
VERSION = 1
SCHEMA = pa.schema([('source', pa.string()), ('shard', pa.string()), ('shard_sha256', pa.string()),
                    ('ordinal', pa.int32()), ('key', pa.string()), ('eval_key', pa.string()),
                    ('eval_variant', pa.string()), ('phash_distance', pa.int32()), ('dhash_distance', pa.int32())])


@dataclass
class Exclusions:
    url: str
    id: str                                   # sha256 of the file, first 16 hex digits
    info: dict                                # how it was made (thresholds, evaluation set, hashes)
    by_shard: Dict[str, Tuple[str, Tuple[int, ...], Tuple[str, ...]]] = field(default_factory=dict)
    #          shard name -> (its sha256, sorted ordinals, their keys)

    def sources(self) -> List[str]:
        return sorted(self.info.get('sources', {}))


def write(url: str, rows: List[dict], info: dict, policy: storage.RetryPolicy = storage.DEFAULT_RETRY) -> str:
    """Write the list (rows sorted by shard and ordinal); returns its id."""
    rows = sorted(rows, key=lambda r: (r['shard'], r['ordinal']))
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    meta = dict(format=FORMAT, version=VERSION, **info)
    table = table.replace_schema_metadata({b'replk': json.dumps(meta, sort_keys=True).encode()})
    data = table_to_bytes(table)
    storage.write_bytes_atomic(url, data, policy)
    return hashlib.sha256(data).hexdigest()[:16]


def load(url: str, policy: storage.RetryPolicy = storage.DEFAULT_RETRY) -> Exclusions:
    """Read and check an exclusion list (a clear error for anything else)."""
    try:
        data = storage.read_bytes(url, policy)
    except FileNotFoundError:
        raise NotFound(f'exclusion list {url} not found (data.stream.exclude)') from None
    try:
        table = table_from_bytes(data)
        meta = json.loads((table.schema.metadata or {}).get(b'replk', b'{}'))
    except Exception as exc:
        raise BadValue(f'{url} is not an exclusion list ({type(exc).__name__}: {exc})') from None
    if meta.get('format') != FORMAT or table.schema.remove_metadata() != SCHEMA:
        raise BadValue(f'{url} is not an exclusion list written by `replk-shards decontaminate`')
    if meta.get('version') != VERSION:
        raise BadValue(f'{url} is exclusion list version {meta.get("version")!r}; this code reads version {VERSION}')
    out = Exclusions(url=url, id=hashlib.sha256(data).hexdigest()[:16], info=meta)
    grouped: Dict[str, list] = {}
    for row in table.select(['shard', 'shard_sha256', 'ordinal', 'key']).to_pylist():
        grouped.setdefault(check_name(row['shard'], f'shard name in {url}'), []).append(row)
    for shard, rows in grouped.items():
        rows.sort(key=lambda r: r['ordinal'])
        out.by_shard[shard] = (rows[0]['shard_sha256'], tuple(r['ordinal'] for r in rows),
                               tuple(r['key'] for r in rows))
    return out


def kept_to_raw(kept: int, excluded: Tuple[int, ...]) -> int:
    """Tar position of the ``kept``-th sample left after removing the sorted positions ``excluded``."""
    raw = kept
    for e in excluded:
        if e <= raw:
            raw += 1
        else:
            break
    return raw
