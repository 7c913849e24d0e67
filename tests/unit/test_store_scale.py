"""What the label store's protocols cost as the store grows, counted, not timed: a storage layer
that counts requests (LIST pages of 1000 names as S3 serves them, GETs, PUTs) and bytes, over a
synthetic store of tens of thousands of committed parts on local disk. A change that brings back
O(parts) requests per manifest refresh, per job end or per training rank's start-up fails here."""
import hashlib
import math

import pytest
from store_counting import S3_LIST_PAGE, CountingStorage

from labeling.store import COMMIT_SUFFIX, LabelStore, commit_name, teacher_id
from labeling.tasks import TaskRegistry
from pretrain.labels import check_store_tasks


def synthetic_store(root, parts: int, legacy: bool = False) -> LabelStore:
    """A task with ``parts`` committed parts: the commit records as the protocol writes them (the part
    files themselves are not read by the protocols measured here)."""
    store = LabelStore(str(root), TaskRegistry())
    store.open_task('in1k', teacher={'model': 'vit_large'}, topk=5)
    commits = root / 'labels' / 'in1k' / '_commits'
    commits.mkdir(parents=True)
    teacher = teacher_id(store.manifest('in1k')['teacher'])
    for i in range(parts):
        record = dict(stem=f'yfcc-{i:06d}', rows=1000, sha256=hashlib.sha256(b'%d' % i).hexdigest(), kind='teacher',
                      human=0, pseudo=1000, teacher_id=teacher)
        if legacy:  # the previous protocol: facts inside {stem}.json, one GET each
            (commits / f'{record["stem"]}.json').write_text(
                '{"stem": "%s", "file": "f", "rows": 1000, "sha256": "%s", "kind": "teacher", "human": 0, '
                '"pseudo": 1000, "teacher_id": "%s"}' % (record['stem'], record['sha256'], teacher))
        else:
            (commits / commit_name(record)).touch()
    return store


@pytest.fixture
def counting(monkeypatch):
    return CountingStorage(monkeypatch)


@pytest.mark.parametrize('parts', [2_000, 20_000])  # the same cost at both sizes
def test_a_manifest_refresh_lists_names_and_reads_no_commit_record(tmp_path, counting, parts):
    store = synthetic_store(tmp_path, parts)
    ops = counting.during(lambda: store.refresh_manifest('in1k'))
    pages = math.ceil(parts / S3_LIST_PAGE)
    assert ops['LIST'] == 2 * pages + 1      # the listing, the convergence check, old parts tables
    assert ops['GET'] == 1                   # _task.json's header (a new task has no parts table yet)
    assert ops['PUT'] == 2                   # the parts table, then _task.json naming it
    assert len(store.committed_parts('in1k')) == parts


def test_the_previous_protocol_read_every_record_which_is_what_this_file_guards_against(tmp_path, counting):
    store = synthetic_store(tmp_path, 2_000, legacy=True)
    ops = counting.during(lambda: store.refresh_manifest('in1k'))
    assert ops['GET'] >= 2 * 2_000             # the counter sees O(parts): a regression cannot hide
    assert len(store.committed_parts('in1k')) == 2_000


def test_a_training_rank_start_up_reads_a_compact_manifest_and_one_rank_lists_the_commits(tmp_path, counting):
    parts = 20_000
    store = synthetic_store(tmp_path, parts)
    store.refresh_manifest('in1k')
    head = type('TaskConfig', (), dict(num_classes=1000, class_map_version=None))()
    from labeling import commits
    for main in (True, False):
        commits._PARTS_TABLES.clear()                   # a fresh process
        ops = counting.during(lambda: check_store_tasks(str(tmp_path), {'in1k': head}, None, list_commits=main))
        assert ops['GET'] == 2                         # _task.json and the parts table it names
        assert ops['LIST'] == (math.ceil(parts / S3_LIST_PAGE) if main else 0)
        assert ops['bytes_read'] < 45 * parts + 20_000  # ~42 bytes a part (JSON inline took ~250)
    # A DataLoader worker forked afterwards (or any later reader in the process): _task.json only.
    again = counting.during(lambda: LabelStore(str(tmp_path), TaskRegistry()).manifest('in1k'))
    assert again['GET'] == 1 and again['bytes_read'] < 20_000


def test_commit_names_stay_within_a_file_name(tmp_path):
    record = dict(stem='places365-' + 'x' * 60 + '-000123', rows=1_000_000, sha256='f' * 64, kind='teacher',
                  human=999_999, pseudo=1, teacher_id='a' * 16)
    assert commit_name(record).endswith(COMMIT_SUFFIX) and len(commit_name(record)) <= 255


def test_resolving_a_source_reads_its_job_parts_once_per_process(tmp_path, counting):
    from shards.index import ShardEntry, save_job_part
    from shards.stream import SourceSpec, resolve_source
    jobs, per_job = 64, 300
    for job in range(jobs):
        save_job_part(str(tmp_path), 'yfcc', job, jobs, [
            ShardEntry(name=f'yfcc-{i:06d}.tar', source='yfcc', samples=1000, bytes=10 ** 8,
                       sha256=hashlib.sha256(b'%d' % i).hexdigest(), skipped=[{'id': 'x', 'path': 'x', 'reason': 'r'}])
            for i in range(job, jobs * per_job, jobs)])
    first = counting.during(lambda: resolve_source(SourceSpec('yfcc', str(tmp_path))))
    assert first['GET'] == jobs + 1                  # the job parts, and the probe for an older _index.json
    assert first['bytes_read'] < 45 * jobs * per_job  # ~40 bytes a shard; skipped reports not read
    again = counting.during(lambda: resolve_source(SourceSpec('yfcc', str(tmp_path))))
    assert again['GET'] == 0 and again['LIST'] == 1  # cached: one listing says nothing changed


def test_refreshing_as_a_job_goes_takes_at_most_a_tenth_of_its_time(tmp_path, monkeypatch):
    from labeling import store as store_module
    store = synthetic_store(tmp_path, 10)
    clock = [1000.0]
    monkeypatch.setattr(store_module.time, 'monotonic', lambda: clock[0])
    real = store._rebuild_manifest
    rebuilds = []

    def slow_rebuild(task):  # a refresh that costs 30 s, as a 73k-part store's LISTs on a slow link
        rebuilds.append(clock[0])
        clock[0] += 30.0
        return real(task)
    monkeypatch.setattr(store, '_rebuild_manifest', slow_rebuild)
    for _ in range(200):                 # a job asking every 5 s for 1000 s
        store.refresh_manifest('in1k', force=False)
        clock[0] += 5.0
    elapsed = clock[0] - 1000.0
    assert 2 <= len(rebuilds) <= 1 + elapsed * 0.1 / 30.0   # one per 300 s (30 s / a tenth), the first at once
    store.refresh_manifest('in1k')       # the job's end: always
    assert rebuilds[-1] == clock[0] - 30.0
