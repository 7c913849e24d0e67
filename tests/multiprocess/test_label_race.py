"""Two labeling jobs with different teachers racing on a fresh store: one claims the task, the other
fails naming both teachers (local disk and S3); a part written by another teacher is refused."""
import multiprocessing as mp
import time

import pytest

from labeling.store import LabelError, LabelStore, Row
from labeling.tasks import Task, TaskRegistry

pytestmark = pytest.mark.multiprocess


def registry():
    r = TaskRegistry()
    r.register(Task('toy', ('a', 'b', 'c', 'd')))
    return r


def _open_at(root: str, teacher: str, start_at: float, results) -> None:
    while time.time() < start_at:  # both processes call open_task at the same instant
        pass
    try:
        LabelStore(root, registry()).open_task('toy', teacher={'model': teacher}, topk=2)
        results[teacher] = 'ok'
    except LabelError as exc:
        results[teacher] = str(exc)


def race(root: str) -> dict:
    ctx = mp.get_context('spawn')
    results = ctx.Manager().dict()
    start_at = time.time() + 4.0  # after both interpreters have started
    procs = [ctx.Process(target=_open_at, args=(root, t, start_at, results)) for t in ('teacher-A', 'teacher-B')]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    return dict(results)


def check_one_winner(results: dict) -> None:
    assert sorted(results) == ['teacher-A', 'teacher-B']
    winners = [t for t, r in results.items() if r == 'ok']
    assert len(winners) == 1, results
    loser = next(r for r in results.values() if r != 'ok')
    assert 'teacher-A' in loser and 'teacher-B' in loser


@pytest.mark.parametrize('round_', range(3))
def test_racing_teachers_on_local_disk_leave_one_owner(tmp_path, round_):
    check_one_winner(race(str(tmp_path / 'store')))


def test_racing_teachers_on_s3_leave_one_owner(s3_prefix):
    check_one_winner(race(f'{s3_prefix}/store'))


def test_a_part_of_another_teacher_is_refused_by_validate_and_readers(tmp_path):
    store = LabelStore(str(tmp_path / 'store'), registry())
    store.open_task('toy', teacher={'model': 'teacher-A'}, topk=2)
    store.write_part('toy', 'toy-000000', [Row('toy/000000/000000', [1], [1.0], 'pseudo')], 'teacher',
                     teacher={'model': 'teacher-B'})  # a loser that wrote before it noticed
    store.refresh_manifest('toy')
    faults = store.validate('toy')
    assert any('written by teacher' in f and 'teacher-A' in f for f in faults), faults
    with pytest.raises(LabelError, match='written by teacher'):
        store.shard_targets('toy-000000', ['toy'])
