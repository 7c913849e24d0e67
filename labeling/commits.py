"""The label store's manifest formats (README, "Labeling": the commit protocol): commit records
whose facts are their object names, the winner among racing records, and the columnar parts
table that ``_task.json`` names."""
from __future__ import annotations

from typing import Dict, List, Optional

import pyarrow as pa

from shards import storage
from shards.common.errors import BadValue
from shards.common.safe_files import check_name
from shards.parquet_bytes import table_from_bytes, table_to_bytes


class LabelError(BadValue):
    """Labels that break the store's contract; the message names task, shard and key."""


COMMIT_SUFFIX = '.commit'
PARTS_TABLE_TTL_S = 600  # a replaced parts table outlives any reader that read _task.json before
OLD_PARTS_SCHEMA = pa.schema([('stem', pa.string()), ('file', pa.string()), ('kind', pa.string()), ('rows', pa.int64()),
                              ('human', pa.int64()), ('pseudo', pa.int64()), ('teacher_id', pa.string()),
                              ('sha256', pa.binary(32))])
# 'shard': the first 16 hex digits of the sha256 of the image shard the part labels (null: a part
# committed before parts named their shard's content)
PARTS_SCHEMA = OLD_PARTS_SCHEMA.append(pa.field('shard', pa.string()))
SHARD_TAG = 's'          # a commit name's shard-content field: 's' + 16 hex digits
SHARD_DIGITS = 16
KINDS = ('teacher', 'human')
MAX_NAME_BYTES = 255  # a file name on local filesystems (S3 allows 1024 for the whole key)


def commit_name(record: dict) -> str:
    """A commit record as an object name (see the module docstring)."""
    fields = [record['stem'], record['kind'], record['rows'], record['human'], record['pseudo'],
              record.get('teacher_id') or '-'] + ([SHARD_TAG + record['shard']] if record.get('shard') else []) \
        + [record['sha256']]
    name = '.'.join(map(str, fields)) + COMMIT_SUFFIX
    if len(name.encode()) > MAX_NAME_BYTES:
        raise LabelError(f'shard stem {record["stem"]!r}: too long for a commit record name '
                         f'({len(name.encode())} bytes over {MAX_NAME_BYTES}); use shorter source names')
    return name


def parse_commit_name(name: str) -> dict:
    """The record a commit name encodes; a malformed name is an error naming it."""
    fields = name[:-len(COMMIT_SUFFIX)].rsplit('.', 7) if name.endswith(COMMIT_SUFFIX) else []
    shard = None
    if len(fields) == 8 and is_shard_field(fields[6]):
        shard = fields.pop(6)[len(SHARD_TAG):]
    elif fields:   # a record from before records named their shard's content
        fields = name[:-len(COMMIT_SUFFIX)].rsplit('.', 6)
    try:
        stem, kind, rows, human, pseudo, tid, sha = fields
        record = dict(stem=check_name(stem, 'shard stem'), file=f'{stem}.{sha[:12]}.parquet', rows=int(rows),
                      sha256=sha, kind=kind, human=int(human), pseudo=int(pseudo))
        ok = (kind in KINDS and len(sha) == 64 and int(sha, 16) >= 0 and record['human'] + record['pseudo'] == record['rows']
              and (tid == '-' or (len(tid) == 16 and int(tid, 16) >= 0)))
    except ValueError:
        ok = False
    if not ok:
        raise LabelError(f'commit record {name!r}: not a name this store writes '
                         '({stem}.{kind}.{rows}.{human}.{pseudo}.{teacher_id|-}.{sha256}.commit)')
    if tid != '-':
        record['teacher_id'] = tid
    if shard is not None:
        record['shard'] = shard
    return record


def is_shard_field(field: str) -> bool:
    digits = field[len(SHARD_TAG):]
    return (field.startswith(SHARD_TAG) and len(digits) == SHARD_DIGITS
            and all(c in '0123456789abcdef' for c in digits))


def labels_this_content(record: Optional[dict], shard_sha256: str, kind: str) -> bool:
    """Whether a committed record of ``kind`` labels these bytes of its shard (a record from before
    records named their content counts as labeling them: it cannot be told apart)."""
    return (record is not None and record.get('kind') == kind
            and record.get('shard') in (None, shard_fingerprint(shard_sha256)))


def shard_fingerprint(shard_sha256: str) -> str:
    """What a record keeps of its shard's sha256 (64 bits tell a rebuilt shard from its old bytes)."""
    return shard_sha256[:SHARD_DIGITS]


def parts_to_parquet(parts: Dict[str, dict]) -> bytes:
    """The committed parts as a columnar table (about 40 bytes a part, where JSON took 250)."""
    records = [parts[stem] for stem in sorted(parts)]
    columns = {name: [r.get(name) for r in records] for name in PARTS_SCHEMA.names}
    columns['sha256'] = [bytes.fromhex(r['sha256']) for r in records]
    return table_to_bytes(pa.table(columns, schema=PARTS_SCHEMA), use_dictionary=['kind', 'teacher_id'])


def parts_from_parquet(data: bytes, where: str) -> Dict[str, dict]:
    table = table_from_bytes(data)
    if table.schema == OLD_PARTS_SCHEMA:
        table = table.append_column('shard', pa.nulls(table.num_rows, pa.string()))
    if table.schema != PARTS_SCHEMA:
        raise LabelError(f'{where}: not a parts table of this store (schema {table.schema})')
    parts = {}
    for row in table.to_pylist():
        sha = row['sha256'].hex()
        record = dict(stem=check_name(row['stem'], f'shard stem in {where}'), file=row['file'],
                      rows=row['rows'], sha256=sha, kind=row['kind'], human=row['human'], pseudo=row['pseudo'])
        if row['teacher_id'] is not None:
            record['teacher_id'] = row['teacher_id']
        if row['shard'] is not None:
            record['shard'] = row['shard']
        parts[record['stem']] = record
    return parts


_PARTS_TABLES: Dict[str, Dict[str, dict]] = {}   # url -> parts; a table's name is never reused


def read_parts_table(url: str, retry: storage.RetryPolicy) -> Dict[str, dict]:
    """A parts table, read once per process: a table is immutable under its name (time and hash),
    so DataLoader workers forked after the trainer's start-up checks read none again."""
    if url not in _PARTS_TABLES:
        if len(_PARTS_TABLES) >= 16:
            _PARTS_TABLES.pop(next(iter(_PARTS_TABLES)))
        _PARTS_TABLES[url] = parts_from_parquet(storage.read_bytes(url, retry), url)
    return _PARTS_TABLES[url]


def winning_record(records: List[dict], task_teacher: Optional[str]) -> dict:
    """One shard's record when several were committed (racing jobs, a relabel, a human import
    and a teacher run), the same for every reader: a record of the task's current teacher (or a
    human one) over a stale teacher's, a teacher's over a human-only one (it carries the human
    labels too), a named record over an older store's, then the larger hash."""
    def rank(r):
        current = r['kind'] == 'human' or r.get('teacher_id') in (None, task_teacher)
        return current, r['kind'] == 'teacher', 'shard' in r, not r.get('legacy', False), r['sha256']
    return max(records, key=rank)
