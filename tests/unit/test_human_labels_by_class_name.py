"""Human labels are carried by class name: a tasks file listing a folder tree's classes in another
order gets the right labels (they used to flip silently), other classes or another count are an
error before anything is written or trained."""
import pytest
from helpers import write_image

from labeling.human import import_human
from labeling.store import LabelStore
from labeling.tasks import TaskRegistry
from pretrain.config import TaskConfig
from pretrain.labels import LabelJoiner, human_label_maps
from shards.build import BuildOptions, build
from shards.inputs import imagefolder_items
from shards.stream import SourceSpec, resolve_source


@pytest.fixture
def pets(tmp_path):
    """An ImageFolder of two classes: natural (index 0 in the build) and technical (1)."""
    for cls, seeds in {'natural': range(3), 'technical': range(10, 13)}.items():
        for seed in seeds:
            write_image(tmp_path / 'tree' / cls / f'{seed}.jpg', seed=seed)
    items, classes = imagefolder_items(str(tmp_path / 'tree'), 'pets')
    build(items, BuildOptions(str(tmp_path / 'shards'), 'pets', samples_per_shard=3, progress=False), {'pets': classes})
    return tmp_path


def tasks_file(tmp_path, classes):
    import json
    path = tmp_path / 'tasks.json'
    path.write_text(json.dumps({'pets': classes}))
    return str(path)


def stored_labels(store, stem):
    table = store.read_part('pets', stem)
    return dict(zip(table.column('key').to_pylist(), [i[0] for i in table.column('idx').to_pylist()]))


def test_import_human_maps_labels_by_class_name_when_the_tasks_file_orders_them_otherwise(pets):
    registry = TaskRegistry.from_json(tasks_file(pets, ['technical', 'natural']))
    store = LabelStore(str(pets / 'store'), registry)
    import_human(store, str(pets / 'shards'), ['pets'])
    assert set(stored_labels(store, 'pets-000000').values()) == {1}   # natural photos: 'natural' is index 1
    assert set(stored_labels(store, 'pets-000001').values()) == {0}   # technical photos: index 0


def test_import_human_refuses_classes_that_differ_naming_both_lists(pets):
    store = LabelStore(str(pets / 'store'), TaskRegistry.from_json(tasks_file(pets, ['technical', 'nature'])))
    with pytest.raises(ValueError, match=r"source pets: its build names the classes of task 'pets' "
                                         r"\['natural', 'technical'\], the tasks file \['technical', 'nature'\]"):
        import_human(store, str(pets / 'shards'), ['pets'])


def test_the_trainer_carries_shard_labels_by_name_and_refuses_another_class_count(pets):
    sources = [resolve_source(SourceSpec('pets', str(pets / 'shards')))]
    registry = TaskRegistry.from_json(tasks_file(pets, ['technical', 'natural']))
    maps = human_label_maps({'pets': TaskConfig(num_classes=2)}, sources, registry)
    joiner = LabelJoiner({'pets': 2}, None, None, human_maps=maps)
    batch = joiner(dict(key=['pets/000000/000000', 'pets/000001/000000'],
                        meta=[{'labels': {'pets': 0}}, {'labels': {'pets': 1}}]))   # as the shards hold them
    assert batch['targets']['pets']['idx'][:, 0].tolist() == [1, 0]
    with pytest.raises(ValueError, match=r'tasks.pets.num_classes=3 but the tasks file names 2 classes'):
        human_label_maps({'pets': TaskConfig(num_classes=3)}, sources, registry)
    with pytest.raises(ValueError, match=r"its build has 2 classes for task 'pets' .* the task has 1"):
        human_label_maps({'pets': TaskConfig(num_classes=1)}, sources, TaskRegistry())
