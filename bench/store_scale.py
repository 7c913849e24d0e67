"""The two stores at growing sizes, old protocol vs new, on a real S3 server on loopback
(SeaweedFS); one JSON line at the end. Requests are counted as S3 bills them (LIST pages of 1000
names, GETs, PUTs) and timed.

Label store: a manifest refresh and a training rank's start-up, at N committed parts.

- old: commit records ``_commits/{stem}.json`` read one GET each (batched concurrently, as the
  store reads older stores), twice per refresh; the parts inline in ``_task.json`` (JSON);
- new: commit facts in the record's name (one LIST), the parts in a columnar table.
Shard index: resolving one source (what every rank and loader does), at N shards:
- old: one ``_index.json`` for the prefix, skipped inputs inline (2 per shard here);
- new: 64 build jobs' parts under ``_index/{source}/``, skipped inputs in separate reports.
ratio = old seconds / new seconds. The stores are synthetic (commit records, manifests and index
parts as the protocols write them; the label parts and tar shards are not touched by these).

    python bench/store_scale.py                       # 1k and 10k parts (about a minute)
    python bench/store_scale.py --parts 1000 10000 73000
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / 'tests')]


def fill(url: str, parts: int, legacy: bool) -> None:
    """A task ``in1k`` with ``parts`` committed parts, in the old or the new layout."""
    from labeling.store import LabelStore, commit_name, teacher_id
    from labeling.tasks import TaskRegistry
    from shards import storage
    store = LabelStore(url, TaskRegistry())
    store.open_task('in1k', teacher={'model': 'vit_large'}, topk=5)
    tid = teacher_id(store.manifest('in1k')['teacher'])
    records = [dict(stem=f'yfcc-{i:06d}', rows=1000, sha256=hashlib.sha256(b'%d' % i).hexdigest(), kind='teacher',
                    human=0, pseudo=1000, teacher_id=tid) for i in range(parts)]
    for r in records:
        r['file'] = f'{r["stem"]}.{r["sha256"][:12]}.parquet'
    fs, root = storage.filesystem(f'{url}/labels/in1k/_commits')
    objects = {(f'{root}/{r["stem"]}.json' if legacy else f'{root}/{commit_name(r)}'):
               (json.dumps(r).encode() if legacy else b'') for r in records}
    names = list(objects)
    for start in range(0, len(names), 2000):  # fsspec's batched, concurrent PUTs
        fs.pipe({n: objects[n] for n in names[start:start + 2000]})
    if legacy:  # the old manifest: every part inline in _task.json
        header = json.loads(storage.read_bytes(f'{url}/labels/in1k/_task.json'))
        header.pop('parts_table', None)
        header['parts'] = {r['stem']: r for r in records}
        storage.write_bytes_atomic(f'{url}/labels/in1k/_task.json', json.dumps(header, indent=1).encode())


def measure(counting, url: str, parts: int, legacy: bool) -> dict:
    from labeling.store import LabelStore
    from labeling.tasks import TaskRegistry
    from pretrain.labels import check_store_tasks
    head = type('TaskConfig', (), dict(num_classes=1000, class_map_version=None))()
    out = {}
    if legacy:  # the old start-up first: a refresh would move the store to the new manifest
        start = time.perf_counter()
        ops = counting.during(lambda: check_store_tasks(url, {'in1k': head}, None, list_commits=False))
        out['rank_start_up'] = dict(ops, seconds=round(time.perf_counter() - start, 3))
    store = LabelStore(url, TaskRegistry())
    start = time.perf_counter()
    ops = counting.during(lambda: store.refresh_manifest('in1k'))
    # old: the legacy records are read on both listings (the rebuild and the convergence check), as before
    out['refresh'] = dict(ops, seconds=round(time.perf_counter() - start, 3))
    assert len(store.committed_parts('in1k')) == parts
    if not legacy:
        start = time.perf_counter()
        ops = counting.during(lambda: check_store_tasks(url, {'in1k': head}, None, list_commits=False))
        out['rank_start_up'] = dict(ops, seconds=round(time.perf_counter() - start, 3))
    return out


def fill_index(url: str, shards: int, legacy: bool) -> None:
    from shards import storage
    from shards.index import INDEX_NAME, ShardEntry, save_job_part
    skipped = [dict(id=f'web/{k}.jpg', path=f'/data/web/{k}.jpg', reason='not an image (cannot identify image file)')
               for k in range(2)]
    entries = [ShardEntry(name=f'yfcc-{i:06d}.tar', source='yfcc', samples=1000, bytes=10 ** 8,
                          sha256=hashlib.sha256(b'%d' % i).hexdigest(), skipped=skipped) for i in range(shards)]
    if legacy:
        from dataclasses import asdict
        doc = dict(version=1, builds={}, shards=[asdict(e) for e in entries])
        for e in doc['shards']:
            e.pop('skipped_count')
        storage.write_bytes_atomic(f'{url}/{INDEX_NAME}', json.dumps(doc, indent=1).encode())
        return
    for job in range(64):
        save_job_part(url, 'yfcc', job, 64, entries[job::64])


def measure_index(counting, url: str) -> dict:
    from shards import index
    from shards.stream import SourceSpec, resolve_source
    index._CACHE.clear()
    start = time.perf_counter()
    ops = counting.during(lambda: resolve_source(SourceSpec('yfcc', url)))
    return dict(ops, seconds=round(time.perf_counter() - start, 3))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--parts', type=int, nargs='+', default=[1000, 10000])
    args = ap.parse_args(argv)
    import pytest
    from store_counting import CountingStorage

    from pretrain.apps.local_s3 import LocalS3
    rows = []
    with tempfile.TemporaryDirectory() as tmp, LocalS3(tmp) as s3:
        bucket = s3.make_bucket('bench')
        patch = pytest.MonkeyPatch()
        counting = CountingStorage(patch)
        for parts in args.parts:
            row = dict(parts=parts)
            for name, legacy in (('old', True), ('new', False)):
                url = f'{bucket}/{name}{parts}'
                fill(url, parts, legacy)
                row[name] = measure(counting, url, parts, legacy)
            row['refresh_ratio'] = round(row['old']['refresh']['seconds'] / row['new']['refresh']['seconds'], 1)
            row['start_up_ratio'] = round(row['old']['rank_start_up']['seconds']
                                          / row['new']['rank_start_up']['seconds'], 1)
            for name, legacy in (('old', True), ('new', False)):
                url = f'{bucket}/index-{name}{parts}'
                fill_index(url, parts, legacy)
                row[name]['resolve_source'] = measure_index(counting, url)
            row['resolve_ratio'] = round(row['old']['resolve_source']['seconds']
                                         / row['new']['resolve_source']['seconds'], 1)
            rows.append(row)
            for name in ('old', 'new'):
                r, s = row[name]['refresh'], row[name]['rank_start_up']
                print(f'{parts:>6} parts {name}: refresh {r["seconds"]:8.3f} s (GET {r.get("GET", 0)}, '
                      f'LIST pages {r.get("LIST", 0)}, PUT {r.get("PUT", 0)}); rank start-up {s["seconds"]:7.3f} s '
                      f'({s.get("GET", 0)} GETs, {s.get("bytes_read", 0) / 1e6:.2f} MB); shard index of one source '
                      f'{row[name]["resolve_source"]["seconds"]:.3f} s ({row[name]["resolve_source"].get("GET", 0)} GETs, '
                      f'{row[name]["resolve_source"].get("bytes_read", 0) / 1e6:.2f} MB)', flush=True)
        patch.undo()
    summary = dict(bench='store_scale', server='SeaweedFS on loopback', rows=rows)
    print(json.dumps(summary))
    return summary


if __name__ == '__main__':
    main()
