"""A configured label store that is absent, a task it lacks, a source nobody labeled: errors (or a
loud warning with the count) before the first step, never a quiet run without pseudo-labels."""
import logging

import pytest

from pretrain.apps.tiny_data import make
from pretrain.config import TaskConfig
from pretrain.labels import check_store_tasks, label_coverage, warn_unlabeled_sources
from shards.stream import SourceSpec


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return make(str(tmp_path_factory.mktemp('tiny')), per_source=16)


TASKS = {'shape': TaskConfig(num_classes=4), 'stripes': TaskConfig(num_classes=3)}


def test_a_label_store_path_that_holds_no_store_is_an_error(tiny, tmp_path):
    with pytest.raises(ValueError, match=r'data\.label_store=.*no label store there'):
        check_store_tasks(str(tmp_path / 'labelz'), TASKS, tiny['tasks_file'])


def test_a_configured_task_the_store_lacks_is_an_error(tiny, tmp_path):
    tasks_file = tmp_path / 'tasks.json'
    tasks_file.write_text('{"shape": {"num_classes": 4}, "stripes": {"num_classes": 3}, "colour": {"num_classes": 2}}')
    with pytest.raises(ValueError, match=r"tasks\.colour: the label store .* has no task 'colour'"):
        check_store_tasks(tiny['labels'], dict(TASKS, colour=TaskConfig(num_classes=2)), str(tasks_file))


def test_the_store_matching_the_config_passes(tiny):
    check_store_tasks(tiny['labels'], TASKS, tiny['tasks_file'])


def test_a_source_without_any_label_is_counted_and_warned_about(tiny, caplog):
    sources = [SourceSpec('lab', tiny['shards']), SourceSpec('unl', tiny['shards'])]
    coverage = label_coverage(sources, list(TASKS), tiny['labels'], tiny['tasks_file'])
    assert coverage == {'lab': (16, 16), 'unl': (0, 16)}
    with caplog.at_level(logging.WARNING):
        warn_unlabeled_sources(coverage, logging.getLogger('test'))
    assert 'source unl: none of its 16 samples has a label' in caplog.text and 'source lab' not in caplog.text


def test_committed_but_unlisted_label_parts_stop_the_run_before_it_starts(tiny, tmp_path):
    import shutil

    from labeling.store import LabelStore, Row
    from labeling.tasks import TaskRegistry
    root = tmp_path / 'labels'
    shutil.copytree(tiny['labels'], root)
    store = LabelStore(str(root), TaskRegistry.from_json(tiny['tasks_file']))
    store.write_part('shape', 'unl-000000', [Row('unl/000000/000000', [1], [1.0], 'human')], 'human')  # not listed
    with pytest.raises(ValueError, match=r'tasks\.shape: 1 committed label parts .* `python -m labeling commit'):
        check_store_tasks(str(root), TASKS, tiny['tasks_file'])
    store.refresh_manifest('shape')
    check_store_tasks(str(root), TASKS, tiny['tasks_file'])


def test_a_tasks_file_naming_other_classes_than_the_store_is_an_error_before_the_first_step(tiny, tmp_path):
    from labeling.commits import LabelError
    tasks_file = tmp_path / 'tasks.json'
    tasks_file.write_text('{"shape": ["a", "b", "c", "d"], "stripes": {"num_classes": 3}}')
    with pytest.raises(LabelError, match=r"task 'shape': the label store was made with 4 classes .* the tasks file "
                                         r"here gives 4 \['a', 'b', 'c', 'd'\] .* use the tasks file the store was made"):
        check_store_tasks(tiny['labels'], TASKS, str(tasks_file))


def test_a_part_of_a_teacher_the_task_no_longer_holds_stops_the_run_before_it_starts(tiny, tmp_path):
    import shutil

    from labeling.store import LabelStore, Row
    from labeling.tasks import TaskRegistry
    from pretrain.labels import check_labels_match_shards
    from shards.stream import resolve_source
    root = tmp_path / 'labels'
    shutil.copytree(tiny['labels'], root)
    store = LabelStore(str(root), TaskRegistry.from_json(tiny['tasks_file']))
    store.open_task('shape', teacher={'model': 'now'}, topk=1)
    store.write_part('shape', 'unl-000000', [Row('unl/000000/000000', [1], [1.0], 'pseudo')], 'teacher',
                     teacher={'model': 'before'})
    store.refresh_manifest('shape')
    sources = [resolve_source(SourceSpec('unl', tiny['shards']))]
    with pytest.raises(ValueError, match=r"task 'shape', shard unl-000000: its part was written by teacher \w+, but "
                                         r"the task holds teacher .*relabel the shard"):
        check_labels_match_shards(str(root), TASKS, sources, tiny['tasks_file'])   # was: a LabelError in a worker
