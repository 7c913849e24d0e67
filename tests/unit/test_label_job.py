"""The pseudo-labeling job with tiny timm and transformers ViTs, through the ViT-L code path."""
import json

import numpy as np
import pytest
import torch
from labeling_fixtures import job_config, timm_teacher_spec, tiny_hf_teacher, tiny_timm_weights, toy_shards

from labeling.cli import main as cli
from labeling.config import load_job_config
from labeling.job import assign_shards, run_job
from labeling.store import LabelStore
from labeling.tasks import TaskRegistry
from labeling.teachers import Ensemble, TeacherSpec, load_teacher


@pytest.fixture
def setup(tmp_path):
    shards = toy_shards(tmp_path)
    weights = tiny_timm_weights(tmp_path / 'teacher.safetensors')
    return tmp_path, shards, weights


def open_store(tmp_path, root):
    return LabelStore(root, TaskRegistry.from_json(str(tmp_path / 'tasks.json')))


def test_job_labels_every_shard_human_where_known_pseudo_elsewhere(setup):
    tmp, shards, weights = setup
    cfg = load_job_config(str(job_config(tmp, shards, str(tmp / 'store'), [timm_teacher_spec(weights)])))
    summary = run_job(cfg, progress=False)
    assert summary['committed'] == 4 and summary['images'] == 20
    store = open_store(tmp, str(tmp / 'store'))
    manifest = store.manifest('toy')
    assert sorted(manifest['parts']) == ['toy-000000', 'toy-000001', 'toy-000002', 'toy-000003']
    assert manifest['teacher']['teachers'][0]['weights_sha256'] and manifest['topk'] == 3
    rows = store.read_part('toy', 'toy-000000').to_pylist()
    by_key = {r['key']: r for r in rows}
    human = by_key['toy/000000/000000']       # id 000 -> label 0
    assert (human['source'], human['idx'], human['prob']) == ('human', [0], [1.0])
    assert len(human['teacher_idx']) == 3
    pseudo = by_key['toy/000000/000001']
    assert pseudo['source'] == 'pseudo' and len(pseudo['idx']) == 3
    assert sum(pseudo['prob']) == pytest.approx(1.0, abs=1e-2)
    assert run_job(cfg, progress=False)['already_done'] == 4  # committed parts are skipped


def test_pseudo_labels_are_the_teachers_top_k(setup):
    tmp, shards, weights = setup
    cfg = load_job_config(str(job_config(tmp, shards, str(tmp / 'store'), [timm_teacher_spec(weights)])))
    run_job(cfg, progress=False)
    teacher = load_teacher(TeacherSpec(**timm_teacher_spec(weights)), 4)
    from PIL import Image
    img = Image.open(tmp / 'img' / '1.jpg').convert('RGB')
    x = teacher.preprocess.transform()(img).float()[None]
    mean = torch.tensor(teacher.preprocess.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(teacher.preprocess.std).view(1, 3, 1, 1) * 255
    with torch.no_grad():
        probs = teacher((x - mean) / std)[0]
    row = {r['key']: r for r in open_store(tmp, str(tmp / 'store')).read_part('toy', 'toy-000000').to_pylist()}
    stored = row['toy/000000/000001']
    assert stored['idx'] == probs.topk(3).indices.tolist()
    expected = (probs.topk(3).values / probs.topk(3).values.sum()).numpy()
    assert np.allclose(stored['prob'], expected, atol=2e-3)


def test_jobs_split_shards_exactly_once():
    stems = [f's-{i:06d}' for i in range(11)]
    parts = [assign_shards(stems, i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == stems
    with pytest.raises(ValueError, match='outside'):
        assign_shards(stems, 3, 3)


def test_two_jobs_together_equal_one(setup):
    tmp, shards, weights = setup
    one = load_job_config(str(job_config(tmp, shards, str(tmp / 'one'), [timm_teacher_spec(weights)])))
    run_job(one, progress=False)
    two = load_job_config(str(job_config(tmp, shards, str(tmp / 'two'), [timm_teacher_spec(weights)])))
    assert run_job(two, 0, 2, progress=False)['committed'] == 2
    assert run_job(two, 1, 2, progress=False)['committed'] == 2
    a, b = open_store(tmp, str(tmp / 'one')), open_store(tmp, str(tmp / 'two'))
    assert {s: r['sha256'] for s, r in a.manifest('toy', reload=True)['parts'].items()} == \
        {s: r['sha256'] for s, r in b.manifest('toy', reload=True)['parts'].items()}


def test_transformers_teacher_and_ensembles(setup):
    tmp, shards, weights = setup
    hf = tiny_hf_teacher(tmp / 'hf')
    cfg = load_job_config(str(job_config(tmp, shards, str(tmp / 'hfstore'),
                                         [dict(kind='transformers', model=str(hf))])))
    assert run_job(cfg, progress=False)['committed'] == 4
    a = load_teacher(TeacherSpec(**timm_teacher_spec(weights)), 4)
    b = load_teacher(TeacherSpec(**timm_teacher_spec(tiny_timm_weights(tmp / 't2.safetensors', seed=1))), 4)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(Ensemble([a, b])(x), (a(x) + b(x)) / 2)
    hf_teacher = load_teacher(TeacherSpec(kind='transformers', model=str(hf)), 4)
    with pytest.raises(ValueError, match='one preprocessing'):
        Ensemble([a, hf_teacher])


def test_config_errors_name_the_field(tmp_path):
    path = tmp_path / 'c.json'
    path.write_text(json.dumps(dict(task='toy', store='s', sources=[], teachers=[], tpok=3)))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['tpok'\]"):
        load_job_config(str(path))
    path.write_text(json.dumps(dict(task='toy', store='s', sources=[dict(name='a', url='u')],
                                    teachers=[dict(kind='onnx', model='m')])))
    with pytest.raises(ValueError, match=r"teachers\[0\]\.kind='onnx': input should be 'timm', 'transformers' or 'export'"):
        load_job_config(str(path))


def test_import_human_then_cli_commit_validate(setup, capsys):
    tmp, shards, _ = setup
    (tmp / 'tasks.json').write_text(json.dumps({'toy': ['a', 'b', 'c', 'd']}))
    store = str(tmp / 'hstore')
    args = ['--store', store, '--task', 'toy', '--tasks-file', str(tmp / 'tasks.json')]
    assert cli(['import-human', '--shards', shards, *args]) == 0
    assert 'toy: 10 human labels imported' in capsys.readouterr().out
    assert cli(['validate', *args]) == 0
    rows = open_store(tmp, store).read_part('toy', 'toy-000001').to_pylist()
    assert {r['source'] for r in rows} == {'human'} and len(rows) == 3


def test_report_gives_coverage_confidence_and_teacher_agreement(setup, capsys):
    tmp, shards, weights = setup
    cfg = load_job_config(str(job_config(tmp, shards, str(tmp / 'store'), [timm_teacher_spec(weights)])))
    run_job(cfg, progress=False)
    assert cli(['report', '--store', str(tmp / 'store'), '--task', 'toy', '--tasks-file', str(tmp / 'tasks.json'),
                '--out', str(tmp / 'report'), '--shards', shards]) == 0
    report = json.loads((tmp / 'report' / 'report.json').read_text())['toy']
    assert report['coverage'] == {'toy': {'human': 10, 'pseudo': 10, 'none': 0}}
    assert report['teacher_agreement']['images'] == 10
    assert 0 <= report['teacher_agreement']['top1'] <= 1
    k = report['pseudo']['stored_topk']
    assert (f'top{k}' in report['teacher_agreement']) == (1 < k < 4)   # named for the k the store keeps
    assert 1 / k <= report['pseudo']['mean_top1_of_stored_topk'] <= 1   # renormalized over the stored k
    assert sum(report['pseudo']['per_class'].values()) == 10 and set(report['pseudo']['per_class']) <= set('abcd')
    assert (tmp / 'report' / 'toy_confidence.png').stat().st_size > 1000


def test_a_report_without_human_labeled_images_says_why_agreement_is_unknown(tmp_path):
    from labeling.report import task_stats
    from labeling.store import LabelStore, Row
    from labeling.tasks import Task, TaskRegistry
    registry = TaskRegistry()
    registry.register(Task('pets', ('cat', 'dog')))
    store = LabelStore(str(tmp_path / 'store'), registry)
    store.open_task('pets', teacher={'model': 'tiny'}, topk=2)
    store.write_part('pets', 'pool-000000', [Row(f'pool/000000/{i:06d}', [i % 2, 1 - i % 2], [0.8, 0.2], 'pseudo')
                                             for i in range(3)], 'teacher')
    store.refresh_manifest('pets')
    stats = task_stats(store, 'pets')
    assert stats['teacher_agreement']['top1'] is None and 'put a labeled source' in stats['teacher_agreement']['why_none']
    assert stats['pseudo']['per_class'] == {'cat': 2, 'dog': 1}


def test_the_paper_teacher_configs_load_strictly():
    from pathlib import Path
    paths = sorted(Path(__file__).resolve().parents[2].glob('configs/label_*_vitl.json'))
    assert [p.name for p in paths] == ['label_in1k_vitl.json', 'label_in22k_vitl.json', 'label_places365_vitl.json']
    for p in paths:
        cfg = load_job_config(str(p))
        assert cfg.teachers[0].model == 'vit_large_patch16_224' and cfg.topk == 10
        assert TaskRegistry().get(cfg.task)  # a built-in task


def _pseudo_top1(tmp, store):
    s = open_store(tmp, store)
    return {r['key']: r['idx'][0] for stem in s.manifest('toy')['parts'] for r in s.read_part('toy', stem).to_pylist()
            if r['source'] == 'pseudo'}


def test_device_decode_labels_like_worker_decode_and_counts_unreadable_images(tmp_path):
    from helpers import rewrite_tar_member
    shards = toy_shards(tmp_path, n=24)
    rewrite_tar_member(f'{shards}/toy-000001.tar', 'toy/000001/000003.jpg', b'\xff\xd8\xff garbage')
    weights = tiny_timm_weights(tmp_path / 'teacher.safetensors')
    summaries, top1 = {}, {}
    for mode in ('workers', 'device'):
        cfg = load_job_config(str(job_config(tmp_path, shards, str(tmp_path / mode), [timm_teacher_spec(weights)],
                                             decode=mode)))
        summaries[mode] = run_job(cfg, progress=False)
        top1[mode] = _pseudo_top1(tmp_path, str(tmp_path / mode))
    assert summaries['workers']['unreadable'] == summaries['device']['unreadable'] == 1
    assert summaries['device']['images'] == summaries['workers']['images'] == 23
    assert top1['device'].keys() == top1['workers'].keys()
    agree = np.mean([top1['device'][k] == top1['workers'][k] for k in top1['device']])
    assert agree >= 0.8, agree  # resize of a decoded tensor vs Pillow's: the same teacher decision


def test_bf16_teacher_forward_and_a_compile_backend_on_cpu(setup):
    tmp, shards, weights = setup
    cfg = load_job_config(str(job_config(tmp, shards, str(tmp / 'store'), [timm_teacher_spec(weights)],
                                         compile='eager')))
    from dataclasses import replace
    summary = run_job(replace(cfg, precision='bf16'), progress=False)
    assert summary['committed'] == 4 and summary['images'] == 20


def test_decode_mode_typo_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"label_toy.json: decode='gpu': input should be 'workers' or 'device'"):
        load_job_config(str(job_config(tmp_path, 'x', 'y', [dict(kind='timm', model='m', weights='w')],
                                       decode='gpu')))


def test_validate_and_report_read_a_user_task_from_the_store_without_a_tasks_file(setup):
    tmp, shards, weights = setup
    cfg = load_job_config(str(job_config(tmp, shards, str(tmp / 'store'), [timm_teacher_spec(weights)])))
    run_job(cfg, progress=False)
    assert cli(['validate', '--store', str(tmp / 'store'), '--task', 'toy']) == 0
    assert cli(['report', '--store', str(tmp / 'store'), '--task', 'toy', '--out', str(tmp / 'report')]) == 0


def test_a_teacher_naming_the_task_classes_in_another_order_is_refused(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=4, id2label={0: 'b', 1: 'a', 2: 'c', 3: 'd'},
                       label2id={'b': 0, 'a': 1, 'c': 2, 'd': 3})
    ViTForImageClassification(config).save_pretrained(tmp_path / 'hf')
    ViTImageProcessor(size={'height': 32, 'width': 32}).save_pretrained(tmp_path / 'hf')
    spec = TeacherSpec(kind='transformers', model=str(tmp_path / 'hf'))
    with pytest.raises(ValueError, match=r"class names do not match the task's .* 0: 'b' vs 'a'"):
        load_teacher(spec, 4, ['a', 'b', 'c', 'd'])
    load_teacher(spec, 4, ['n01', 'n02', 'n03', 'n04'])  # another naming scheme: nothing to compare


def test_a_label_for_a_key_the_shard_does_not_hold_is_found_and_refused_by_training(setup):
    from labeling.store import Row
    from pretrain.labels import label_coverage
    from shards.stream import SourceSpec
    tmp, shards, _ = setup
    (tmp / 'tasks.json').write_text(json.dumps({'toy': ['a', 'b', 'c', 'd']}))
    store = open_store(tmp, str(tmp / 'ghost'))
    store.open_task('toy')
    real = [Row(f'toy/000000/{i:06d}', [1], [1.0], 'human') for i in range(6)]
    store.write_part('toy', 'toy-000000', real + [Row('toy/000000/000042', [2], [1.0], 'human')], 'human')
    store.refresh_manifest('toy')
    faults = store.validate('toy', shards)
    assert any('1 labels for keys the shard does not hold, e.g. toy/000000/000042' in f for f in faults), faults
    assert cli(['validate', '--store', str(tmp / 'ghost'), '--task', 'toy', '--shards', shards]) == 1
    with pytest.raises(ValueError, match='holds 7 labels for its 6 samples'):
        label_coverage([SourceSpec('toy', shards)], ['toy'], str(tmp / 'ghost'), str(tmp / 'tasks.json'))
