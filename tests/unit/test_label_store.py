"""The label store's contract: layout, validation, commits and the join by key."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from labeling.store import LabelError, LabelStore, Row
from labeling.tasks import Task, TaskRegistry


@pytest.fixture
def registry():
    r = TaskRegistry()
    r.register(Task('toy', ('a', 'b', 'c', 'd')))
    return r


@pytest.fixture
def store(tmp_path, registry):
    s = LabelStore(str(tmp_path / 'store'), registry)
    s.open_task('toy', teacher={'model': 'tiny'}, topk=2)
    return s


def rows(stem='toy-000000', n=3):
    src, shard = stem.split('-')
    return [Row(f'{src}/{shard}/{i:06d}', [1, 2], [0.7, 0.3], 'pseudo') for i in range(n)]


def test_builtin_tasks_have_the_paper_class_counts():
    r = TaskRegistry()
    assert (r.get('in1k').num_classes, r.get('in22k').num_classes, r.get('places365').num_classes) == (1000, 21841, 365)
    with pytest.raises(KeyError, match='unknown task'):
        r.get('coco')


def test_user_tasks_load_from_json(tmp_path):
    (tmp_path / 't.json').write_text(json.dumps({'toy': ['x', 'y'], 'big': {'num_classes': 7}}))
    r = TaskRegistry.from_json(str(tmp_path / 't.json'))
    assert r.get('toy').num_classes == 2 and r.get('big').num_classes == 7
    (tmp_path / 'bad.json').write_text(json.dumps({'toy': 3}))
    with pytest.raises(ValueError, match="task 'toy'"):
        TaskRegistry.from_json(str(tmp_path / 'bad.json'))


def test_written_part_is_listed_and_read_back_with_renormalized_float16(store, tmp_path):
    store.write_part('toy', 'toy-000000', [Row('toy/000000/000000', [3, 0], [0.6, 0.2], 'pseudo')], 'teacher')
    assert store.committed_parts('toy') == {}          # not listed yet: does not count
    store.refresh_manifest('toy')
    table = store.read_part('toy', 'toy-000000')
    assert table.schema.field('prob').type.value_type.bit_width == 16
    prob = np.array(table.column('prob')[0].as_py(), dtype=np.float32)
    assert prob.sum() == pytest.approx(1.0, abs=1e-3) and prob[0] == pytest.approx(0.75, abs=1e-3)
    files = sorted(p.name for p in (tmp_path / 'store' / 'labels' / 'toy').iterdir())
    assert files[-1].startswith('toy-000000.') and files[-1].endswith('.parquet')
    assert '_task.json' in files and '_commits' in files


@pytest.mark.parametrize('bad, message', [
    (Row('toy/000000/000001', [4], [1.0], 'pseudo'), 'class index 4 out of range'),
    (Row('toy/000000/000001', [-1], [1.0], 'pseudo'), 'class index -1 out of range'),
    (Row('toy/000000/000001', [1, 2], [float('nan'), 0.5], 'pseudo'), 'finite'),
    (Row('toy/000000/000001', [1, 2], [-0.5, 1.5], 'pseudo'), '>= 0'),
    (Row('toy/000000/000001', [1], [1.0], 'teacher'), 'source'),
    (Row('toy/000001/000001', [1], [1.0], 'pseudo'), 'belongs to shard toy-000001'),
    (Row('toy/000000/000000', [1], [1.0], 'pseudo'), 'duplicate key toy/000000/000000'),
    (Row('toy/000000', [1], [1.0], 'pseudo'), "key 'toy/000000' is not of the form source/shard/index"),
    (Row('toy/000000/000001/x', [1], [1.0], 'pseudo'), 'is not of the form source/shard/index'),
    (Row('toy/000000/000001', [1, 2], [1.0], 'pseudo'), 'key toy/000000/000001: 2 indices and 1 probabilities'),
])
def test_bad_rows_are_refused_naming_task_shard_and_key(store, bad, message):
    good = Row('toy/000000/000000', [1], [1.0], 'human')
    with pytest.raises(LabelError, match=message) as err:
        store.write_part('toy', 'toy-000000', [good, bad], 'teacher')
    assert "task 'toy', shard toy-000000" in str(err.value)


def test_the_first_offending_key_is_named_among_many_rows(store):
    good = [Row(f'toy/000000/{i:06d}', [1], [1.0], 'human') for i in range(50)]
    bad = [Row(f'toy/000000/{i:06d}', [1, 9], [0.5, 0.5], 'pseudo') for i in (70, 60)]
    with pytest.raises(LabelError, match=r'key toy/000000/000060: class index 9 out of range \[0, 4\)'):
        store.write_part('toy', 'toy-000000', good + bad, 'teacher')


def test_unnormalized_probabilities_on_disk_are_caught_on_read(store, tmp_path):
    store.write_part('toy', 'toy-000000', rows(), 'teacher')
    store.refresh_manifest('toy')
    record = store.committed_parts('toy')['toy-000000']
    path = tmp_path / 'store' / 'labels' / 'toy' / record['file']
    table = pq.read_table(path)
    import pyarrow as pa
    probs = pa.array([np.array([0.9, 0.9], dtype=np.float16)] * 3, type=pa.list_(pa.float16()))  # pyarrow 17: numpy
    pq.write_table(table.set_column(2, 'prob', probs), path)
    with pytest.raises(LabelError, match='does not match the hash'):
        store.read_part('toy', 'toy-000000')
    import hashlib
    manifest = store.manifest('toy', reload=True)   # a manifest that vouches for the tampered part
    manifest['parts']['toy-000000']['sha256'] = hashlib.sha256(path.read_bytes()).hexdigest()
    store._write_manifest('toy', manifest)
    with pytest.raises(LabelError, match=r'key toy/000000/000000: probabilities sum to 1.79'):
        LabelStore(str(tmp_path / 'store'), store.registry).read_part('toy', 'toy-000000')


def test_another_class_map_version_is_refused(store, tmp_path):
    other = TaskRegistry()
    other.register(Task('toy', ('a', 'b', 'c', 'e')))
    with pytest.raises(LabelError, match='class-map version'):
        LabelStore(str(tmp_path / 'store'), other).open_task('toy')


def test_a_second_teacher_cannot_write_into_the_same_task(store):
    with pytest.raises(LabelError, match="One task holds one teacher's labels"):
        store.open_task('toy', teacher={'model': 'other'}, topk=2)


def test_orphan_parts_and_unlisted_commits_are_reported(store, tmp_path):
    store.write_part('toy', 'toy-000000', rows(), 'teacher')
    (tmp_path / 'store' / 'labels' / 'toy' / 'toy-000009.deadbeef0000.parquet').write_bytes(b'x')
    faults = '\n'.join(store.validate('toy'))
    assert 'committed but not yet listed' in faults
    assert 'orphan part toy-000009.deadbeef0000.parquet' in faults
    store.refresh_manifest('toy')
    assert [f for f in store.validate('toy') if 'orphan' not in f] == []


def test_racing_writers_leave_one_whole_part_the_same_whatever_the_commit_order(tmp_path, registry):
    winners = []
    for order in ((2, 3), (3, 2)):
        store = LabelStore(str(tmp_path / f'store{order}'), registry)
        store.open_task('toy', teacher={'model': 'tiny'}, topk=2)
        written = {n: store.write_part('toy', 'toy-000000', rows(n=n), 'teacher') for n in order}
        store.refresh_manifest('toy')
        file = store.committed_parts('toy')['toy-000000']['file']
        assert file in {r['file'] for r in written.values()}
        winners.append((file, store.read_part('toy', 'toy-000000').num_rows))
    assert winners[0] == winners[1]


def test_a_teacher_part_wins_over_a_human_one_and_the_current_teacher_over_a_stale_one(store):
    human = [Row(f'toy/000000/{i:06d}', [0], [1.0], 'human') for i in range(3)]
    store.write_part('toy', 'toy-000000', human, 'human')
    teacher = store.write_part('toy', 'toy-000000', rows(), 'teacher')
    stale = store.write_part('toy', 'toy-000000', rows(n=4), 'teacher', teacher={'model': 'old'})
    assert store.commit_records('toy')['toy-000000'] == teacher != stale


def test_commit_facts_are_read_from_names_alone(store, tmp_path, monkeypatch):
    record = store.write_part('toy', 'toy-000000', rows(), 'teacher')
    from shards import storage
    monkeypatch.setattr(storage, 'read_many', lambda urls, *a, **k: pytest.fail(f'read {urls}'))
    assert store.commit_records('toy') == {'toy-000000': record}


def test_a_malformed_commit_name_is_an_error_naming_it(store, tmp_path):
    store.write_part('toy', 'toy-000000', rows(), 'teacher')
    commits = tmp_path / 'store' / 'labels' / 'toy' / '_commits'
    (commits / 'toy-000001.teacher.3.0.x.-.abc.commit').write_bytes(b'{}')
    with pytest.raises(LabelError, match=r"commit record 'toy-000001.teacher.3.0.x.-.abc.commit': not a name"):
        store.commit_records('toy')


def test_an_older_stores_json_commit_records_are_still_read(store, tmp_path):
    record = store.write_part('toy', 'toy-000000', rows(), 'teacher')
    commits = tmp_path / 'store' / 'labels' / 'toy' / '_commits'
    for named in commits.glob('*.commit'):           # as the previous protocol left it
        named.rename(commits / 'toy-000000.json')
    assert store.commit_records('toy') == {'toy-000000': record}
    store.refresh_manifest('toy')
    assert store.read_part('toy', 'toy-000000').num_rows == 3


def test_shard_targets_join_all_tasks_by_key(tmp_path, registry):
    registry.register(Task('other', ('p', 'q')))
    store = LabelStore(str(tmp_path / 's'), registry)
    for task in ('toy', 'other'):
        store.open_task(task)
    store.write_part('toy', 'toy-000000', rows(), 'teacher')
    store.write_part('other', 'toy-000000', [Row('toy/000000/000001', [1], [1.0], 'human')], 'human')
    for task in ('toy', 'other'):
        store.refresh_manifest(task)
    targets = store.shard_targets('toy-000000', ['toy', 'other'])
    assert set(targets['toy']) == {'toy/000000/000000', 'toy/000000/000001', 'toy/000000/000002'}
    assert targets['other'] == {'toy/000000/000001': ([1], [1.0], 'human')}
    assert store.shard_targets('toy-000005', ['toy']) == {'toy': {}}


@pytest.mark.parametrize('order', [('human', 'teacher'), ('teacher', 'human')])
def test_a_store_validates_clean_whichever_labels_came_first(tmp_path, registry, order):
    """The README's order (import-human, then a teacher run) left the human parts under the
    teacher's winning records, and validate called them orphans."""
    store = LabelStore(str(tmp_path / 'store'), registry)
    store.open_task('toy', teacher={'model': 'tiny'}, topk=2)
    for kind in order:
        for stem in ('toy-000000', 'toy-000001'):
            src, shard = stem.split('-')
            human = [Row(f'{src}/{shard}/{i:06d}', [i % 4], [1.0], 'human') for i in range(3)]
            store.write_part('toy', stem, human if kind == 'human' else rows(stem), kind)
    store.refresh_manifest('toy')
    assert store.validate('toy') == []
