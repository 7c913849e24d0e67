"""A teacher this project trained and exported labels first-class: {"kind": "export", "path": ...}
reads architecture, shape, form, classes and preprocessing from the export, so a model trained at
40 px labels at 40 px (not timm's default 224), and the stored labels are its forward at that size."""
import json

import pytest
from helpers import tiny_pets_config, trained_looking_state, write_image
from labeling_fixtures import labels_against_teacher_forward

from labeling.config import JobConfig
from labeling.job import run_job
from labeling.teachers import TeacherSpec, load_teacher
from pretrain.export import write_export
from pretrain.models.checkpoint import export_model_args
from shards.build import BuildOptions, build
from shards.inputs import Item
from shards.stream import SourceSpec

TINY = {'kernel_sizes': [7, 5], 'depths': [1, 1], 'channels': [16, 32], 'small_kernel': 3}


@pytest.fixture(scope='module')
def teacher_export(tmp_path_factory):
    out = tmp_path_factory.mktemp('teacher')
    cfg = tiny_pets_config(out, TINY)
    write_export(cfg, 'pets', trained_looking_state(cfg), str(out / 'export'), source={})
    return out


def test_an_export_teacher_runs_at_the_size_it_was_trained_and_exported_at(teacher_export):
    teacher = load_teacher(TeacherSpec('export', path=str(teacher_export / 'export')), 2, ('cat', 'dog'))
    assert teacher.preprocess.size == (40, 40) and teacher.preprocess.resize == 40
    assert teacher.identity()['preprocess']['size'] == [40, 40]   # recorded in the store's teacher identity


def test_an_export_teacher_of_other_classes_or_another_count_is_refused(teacher_export):
    with pytest.raises(ValueError, match='predicts 2 classes'):
        load_teacher(TeacherSpec('export', path=str(teacher_export / 'export')), 3)
    with pytest.raises(ValueError, match="its class names do not match the task's"):
        load_teacher(TeacherSpec('export', path=str(teacher_export / 'export')), 2, ('dog', 'cat'))
    with pytest.raises(ValueError, match='drop model, weights and model_kwargs'):
        TeacherSpec('export', path=str(teacher_export / 'export'), model='replknet_31b')


def test_the_stored_labels_are_the_teachers_forward_at_its_trained_size(teacher_export, tmp_path):
    items = [Item(str(write_image(tmp_path / f'{i}.jpg', i, size=(60, 50))), f'{i}') for i in range(6)]
    build(items, BuildOptions(str(tmp_path / 'shards'), 'unl', samples_per_shard=3, progress=False))
    cfg = JobConfig(task='pets', store=str(tmp_path / 'store'), sources=[SourceSpec('unl', str(tmp_path / 'shards'))],
                    teachers=[TeacherSpec('export', path=str(teacher_export / 'export'))], topk=2, batch_size=4,
                    workers=0, precision='fp32', tasks_file=str(teacher_export / 'tasks.json'))
    summary = run_job(cfg, progress=False)
    assert summary['preprocess']['size'] == (40, 40) and summary['images'] == 6
    compared, worst = labels_against_teacher_forward(str(tmp_path / 'store'), str(teacher_export / 'tasks.json'),
                                                     'pets', str(tmp_path / 'shards'), str(teacher_export / 'export'))
    assert compared == 6 and worst < 2e-3


def test_a_timm_teacher_naming_a_project_model_loads_in_a_fresh_process(teacher_export):
    import subprocess
    import sys

    from helpers import REPO_ROOT
    meta = json.loads((teacher_export / 'export' / 'config.json').read_text())
    kwargs = dict(export_model_args(meta), reparam=meta['form'])
    kwargs.pop('num_classes')   # the timm teacher's head is the task's
    code = ('from labeling.teachers import TeacherSpec, load_teacher; '
            f'print(load_teacher(TeacherSpec("timm", "replknet_31b", {str(teacher_export / "export" / "model.safetensors")!r}, '
            f'model_kwargs={kwargs!r}), 2).name)')
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == 'replknet_31b', proc.stderr[-2000:]   # was: Unknown model
