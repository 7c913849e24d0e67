"""Labels are bound to the shard content they label: after a source is rebuilt with other images
under the same names, a part made for the old bytes is refused — by validate, the trainer's start-up
check and the join — naming the shard, both hashes and the fix; relabeling binds them again."""
import json
import logging
import shutil

import pytest
from helpers import write_image

from labeling.human import import_human
from labeling.store import LabelError, LabelStore, Row
from labeling.tasks import Task, TaskRegistry
from pretrain.config import TaskConfig
from pretrain.labels import LabelJoiner, check_labels_match_shards, shard_facts
from shards.build import BuildOptions, build
from shards.inputs import imagefolder_items
from shards.stream import SourceSpec, resolve_source

TASK = 'pets'


def photos(root, names):
    for cls, seeds in names.items():
        for seed in seeds:
            write_image(root / cls / f'{seed}.jpg', seed=seed)
    return root


def build_tree(tree, prefix):
    items, classes = imagefolder_items(str(tree), TASK)
    build(items, BuildOptions(str(prefix), 'pets', samples_per_shard=4, progress=False), {TASK: classes})


@pytest.fixture
def rebuilt(tmp_path):
    """Human labels imported for a source, then the source rebuilt from a changed folder."""
    tree = photos(tmp_path / 'tree', {'cat': range(0, 8), 'dog': range(100, 108)})
    shards, store_root = tmp_path / 'shards', tmp_path / 'store'
    build_tree(tree, shards)
    registry = TaskRegistry({TASK: Task(TASK, ('cat', 'dog'))})
    store = LabelStore(str(store_root), registry)
    import_human(store, str(shards), [TASK])
    (tree / 'cat' / '3.jpg').unlink()              # one photo removed, another added:
    write_image(tree / 'cat' / '9.jpg', seed=9)    # every later sample shifts by one
    shutil.rmtree(shards)
    build_tree(tree, shards)
    return dict(shards=str(shards), store=str(store_root), registry=registry)


def test_validate_names_the_shards_whose_content_changed_since_they_were_labeled(rebuilt):
    store = LabelStore(rebuilt['store'], rebuilt['registry'])
    faults = store.validate(TASK, shards=rebuilt['shards'])
    changed = [f for f in faults if 'labels were made for other content' in f]
    assert changed and all('relabel it' in f and 'import-human' in f for f in changed)
    # cat/3 gone, cat/9 new: the two cat shards changed, the two dog shards kept their bytes
    assert sorted(f.split(':')[0] for f in changed) == ["task 'pets', shard pets-000000", "task 'pets', shard pets-000001"]


def test_the_trainer_refuses_labels_of_a_rebuilt_shard_before_the_first_step(rebuilt):
    sources = [resolve_source(SourceSpec('pets', rebuilt['shards']))]
    with pytest.raises(ValueError, match=r"task 'pets', shard pets-00000[01]: its labels were made for other content "
                                         r'\(shard sha256 [0-9a-f]{16}\.\.\., the index now says [0-9a-f]{16}\.\.\.\)'):
        check_labels_match_shards(rebuilt['store'], {TASK: TaskConfig(num_classes=2)}, sources, None,
                                  registry=rebuilt['registry'])


def test_the_join_refuses_a_part_made_for_other_bytes(rebuilt):
    sources = [resolve_source(SourceSpec('pets', rebuilt['shards']))]
    joiner = LabelJoiner({TASK: 2}, rebuilt['store'], None, shards=shard_facts(sources), registry=rebuilt['registry'])
    batch = dict(key=['pets/000001/000000'], meta=[{}])
    with pytest.raises(LabelError, match='its labels were made for other content'):
        joiner(batch)


def test_relabeling_binds_the_labels_to_the_new_content_and_they_land_on_the_right_images(rebuilt):
    store = LabelStore(rebuilt['store'], rebuilt['registry'])
    import_human(store, rebuilt['shards'], [TASK])
    assert store.validate(TASK, shards=rebuilt['shards']) == []   # no old record, no orphan part left
    sources = [resolve_source(SourceSpec('pets', rebuilt['shards']))]
    check_labels_match_shards(rebuilt['store'], {TASK: TaskConfig(num_classes=2)}, sources, None,
                              registry=rebuilt['registry'])
    joiner = LabelJoiner({TASK: 2}, rebuilt['store'], None, shards=shard_facts(sources), registry=rebuilt['registry'])
    from shards.reader import iter_shard_samples
    for url in sources[0].urls:
        samples = list(iter_shard_samples(url))
        batch = joiner(dict(key=[s['__key__'] for s in samples], meta=[{} for _ in samples]))
        truth = [json.loads(s['json'])['labels'][TASK] for s in samples]
        assert batch['targets'][TASK]['idx'][:, 0].tolist() == truth


def test_parts_of_an_older_store_without_a_content_hash_are_read_with_one_warning(tmp_path, caplog):
    registry = TaskRegistry({TASK: Task(TASK, ('cat', 'dog'))})
    store = LabelStore(str(tmp_path / 'store'), registry)
    store.open_task(TASK)
    store.write_part(TASK, 'pets-000000', [Row('pets/000000/000000', [1], [1.0], 'human')], 'human')  # no shard hash
    store.refresh_manifest(TASK)
    with caplog.at_level(logging.WARNING, logger='labeling.store'):
        for _ in range(2):
            table = store.read_part(TASK, 'pets-000000', shard_sha256='ab' * 32)
    assert table.num_rows == 1
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and 'do not name the shard content they label' in said[0]


def test_a_label_key_past_the_shards_samples_is_refused_by_the_join_not_silently_dropped(tmp_path):
    # the fault battery's case: key big/000003/000007 renamed big/000003/000077 in a shard of 50
    tree = photos(tmp_path / 'tree', {'cat': range(0, 4), 'dog': range(100, 104)})
    build_tree(tree, tmp_path / 'shards')
    registry = TaskRegistry({TASK: Task(TASK, ('cat', 'dog'))})
    store = LabelStore(str(tmp_path / 'store'), registry)
    store.open_task(TASK)
    sources = [resolve_source(SourceSpec('pets', str(tmp_path / 'shards')))]
    rows = [Row(f'pets/000000/{i:06d}', [0], [1.0], 'human') for i in (0, 1, 2)] + \
        [Row('pets/000000/000077', [0], [1.0], 'human')]
    store.write_part(TASK, 'pets-000000', rows, 'human', shard_sha256=sources[0].sha256[0])
    store.refresh_manifest(TASK)
    joiner = LabelJoiner({TASK: 2}, str(tmp_path / 'store'), None, shards=shard_facts(sources), registry=registry)
    with pytest.raises(LabelError, match=r"task 'pets', shard pets-000000: label key pets/000000/000077 is past "
                                         r"the shard's 4 positions \(1 such keys\), so some image of it lost its label"):
        joiner(dict(key=['pets/000000/000003'], meta=[{}]))


def test_keys_after_an_input_skipped_at_build_time_are_joined(tmp_path):
    # a skipped (unreadable) input keeps its position: the shard's 3 samples are keys 0, 2 and 3
    tree = photos(tmp_path / 'tree', {'cat': range(0, 2), 'dog': range(100, 102)})
    (tree / 'cat' / '1.jpg').write_bytes(b'not an image')
    build_tree(tree, tmp_path / 'shards')
    registry = TaskRegistry({TASK: Task(TASK, ('cat', 'dog'))})
    store = LabelStore(str(tmp_path / 'store'), registry)
    import_human(store, str(tmp_path / 'shards'), [TASK])
    sources = [resolve_source(SourceSpec('pets', str(tmp_path / 'shards')))]
    assert sources[0].counts == (3,)
    joiner = LabelJoiner({TASK: 2}, str(tmp_path / 'store'), None, shards=shard_facts(sources), registry=registry)
    batch = joiner(dict(key=['pets/000000/000000', 'pets/000000/000002', 'pets/000000/000003'], meta=[{}] * 3))
    assert batch['targets'][TASK]['idx'][:, 0].tolist() == [0, 1, 1]


def test_a_relabel_of_a_rebuilt_shard_leaves_no_old_record_or_orphan_part(tmp_path):
    tree = photos(tmp_path / 'tree', {'cat': range(0, 6), 'dog': range(100, 106)})
    shards = tmp_path / 'shards'
    build_tree(tree, shards)
    registry = TaskRegistry({TASK: Task(TASK, ('cat', 'dog'))})
    store = LabelStore(str(tmp_path / 'store'), registry)
    import_human(store, str(shards), [TASK])
    (tree / 'cat' / '0.jpg').unlink()       # every shard now holds other images and other labels
    shutil.rmtree(shards)
    build_tree(tree, shards)
    import_human(store, str(shards), [TASK])
    assert store.validate(TASK, shards=str(shards)) == []
    parts = sorted(p.name for p in (tmp_path / 'store' / 'labels' / TASK).glob('*.parquet'))
    assert len(parts) == 3      # one part per shard of the rebuilt source
