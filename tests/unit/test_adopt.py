"""`replk-shards adopt`: tar shards another tool wrote (here webdataset's own ShardWriter, in timm's
.jpg + .cls + .json layout) become a source without a byte of them rewritten; the stream, the
labeling job, human-label import and validation read them by the project's keys."""
import hashlib
import json
from pathlib import Path

import pytest
import torch
from adopt_fixtures import CLASS_NAMES, PER_TAR, TARS, foreign_shards
from helpers import write_image

from labeling.human import import_human
from labeling.store import LabelStore
from labeling.tasks import TaskRegistry
from shards.adopt import AdoptError, AdoptOptions, adopt
from shards.loader import ShardStream
from shards.reader import iter_shard_samples
from shards.stream import SourceSpec, StreamConfig, resolve_source
from shards.verify import orphans, verify


def digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob('*.tar'))}


def options(folder: Path, **kw) -> AdoptOptions:
    return AdoptOptions(**{**dict(prefix=str(folder), source='foreign', labels={'toy': 'cls'},
                                  num_classes={'toy': 2}, workers=2), **kw})


def test_adopting_writes_the_index_and_leaves_the_tars_as_they_were(tmp_path):
    folder = foreign_shards(tmp_path / 'wds')
    before = digests(folder)
    summary = adopt(options(folder))
    assert digests(folder) == before
    assert (summary['tars'], summary['counted_now'], summary['samples']) == (TARS, TARS, TARS * PER_TAR)
    assert summary['labels'] == {'toy': TARS * PER_TAR - 1} and summary['without_label_now'] == {'toy': 1}
    again = adopt(options(folder))                       # a rerun counts nothing twice
    assert (again['counted_now'], again['already_counted']) == (0, TARS)
    assert verify(str(folder)) == [] and orphans(str(folder)) == []


def test_adopted_samples_carry_the_projects_keys_their_own_id_and_their_labels(tmp_path):
    folder = foreign_shards(tmp_path / 'wds')
    adopt(options(folder))
    src = resolve_source(SourceSpec('foreign', str(folder)))
    assert src.names == tuple(f'foreign-{i:06d}.tar' for i in range(TARS)) and src.counts == (PER_TAR,) * TARS
    samples = list(iter_shard_samples(src.urls[1], 0, PER_TAR))
    assert [s['__key__'] for s in samples] == [f'foreign/000001/{p:06d}' for p in range(PER_TAR)]
    meta = [json.loads(s['json']) for s in samples]
    assert [m['id'] for m in meta] == [f'n0144_{1000 + PER_TAR + p}' for p in range(PER_TAR)]
    assert [m['labels'] for m in meta] == [{'toy': (PER_TAR + p) % 2} for p in range(PER_TAR)]

    stream = ShardStream([SourceSpec('foreign', str(folder))], StreamConfig(shuffle_buffer=3),
                         lambda img: torch.zeros(1), rank=0, world_size=1, workers=1, batch_size=5)
    keys = [k for batch in stream for k in batch['key']]
    assert sorted(keys) == sorted(f'foreign/{s:06d}/{p:06d}' for s in range(TARS) for p in range(PER_TAR))


def test_human_labels_of_adopted_shards_import_and_validate_by_the_projects_keys(tmp_path):
    folder = foreign_shards(tmp_path / 'wds')
    adopt(options(folder))
    tasks = tmp_path / 'tasks.json'
    tasks.write_text(json.dumps({'toy': ['even', 'odd']}))
    store = LabelStore(str(tmp_path / 'labels'), TaskRegistry.from_json(str(tasks)))
    assert import_human(store, str(folder), ['toy']) == {'toy': TARS * PER_TAR - 1}
    rows = store.read_part('toy', 'foreign-000000').to_pydict()
    assert rows['key'] == [f'foreign/000000/{p:06d}' for p in range(PER_TAR) if p != 4]
    assert rows['idx'] == [[p % 2] for p in range(PER_TAR) if p != 4]
    assert store.validate('toy', shards=str(folder)) == []


def test_a_class_index_out_of_range_is_one_error_naming_the_sample(tmp_path):
    folder = foreign_shards(tmp_path / 'wds', bad_class=True)
    with pytest.raises(AdoptError, match=r'train-0001\.tar: sample n0144_1006 has cls 7 for task .toy., which has 2 '
                                         r'classes'):
        adopt(options(folder, workers=1))


def test_jobs_split_the_tars_and_must_agree_on_the_plan(tmp_path):
    folder = foreign_shards(tmp_path / 'wds')
    first = adopt(options(folder, job_index=0, num_jobs=2))
    second = adopt(options(folder, job_index=1, num_jobs=2))
    assert (first['counted_now'], second['counted_now']) == (2, 1)
    assert resolve_source(SourceSpec('foreign', str(folder))).samples == TARS * PER_TAR
    with pytest.raises(AdoptError, match='planned for 2 jobs'):
        adopt(options(folder, job_index=0, num_jobs=3))
    with pytest.raises(AdoptError, match='other tars or other label fields'):
        adopt(AdoptOptions(prefix=str(folder), source='foreign', labels={'toy': 'json:label'}, num_jobs=2))


def test_a_labeling_job_labels_adopted_shards_under_the_projects_shard_names(tmp_path):
    from labeling_fixtures import job_config, timm_teacher_spec, tiny_timm_weights

    from labeling.config import load_job_config
    from labeling.job import run_job

    folder = foreign_shards(tmp_path / 'wds')
    adopt(options(folder))
    cfg = job_config(tmp_path, str(folder), str(tmp_path / 'store'),
                     [timm_teacher_spec(tiny_timm_weights(tmp_path / 'w.safetensors'))])
    config = json.loads(cfg.read_text())
    config['sources'] = [dict(name='foreign', url=str(folder))]
    cfg.write_text(json.dumps(config))
    summary = run_job(load_job_config(str(cfg)), progress=False)
    assert (summary['committed'], summary['images']) == (TARS, TARS * PER_TAR)
    store = LabelStore(str(tmp_path / 'store'), TaskRegistry.from_json(str(tmp_path / 'tasks.json')))
    assert sorted(store.manifest('toy', reload=True)['parts']) == [f'foreign-{i:06d}' for i in range(TARS)]
    assert store.validate('toy', shards=str(folder)) == []


def test_adopted_shards_get_perceptual_hashes_for_decontamination(tmp_path):
    from shards.hashes import hash_source, shards_without_hashes
    folder = foreign_shards(tmp_path / 'wds')
    adopt(options(folder))
    assert shards_without_hashes(str(folder), 'foreign') == [f'foreign-{i:06d}.tar' for i in range(TARS)]
    assert hash_source(str(folder), 'foreign') == TARS
    assert shards_without_hashes(str(folder), 'foreign') == []


def test_the_training_join_checks_adopted_shards_by_their_index_names(tmp_path):
    from pretrain.labels import shard_facts
    folder = foreign_shards(tmp_path / 'wds')
    adopt(options(folder))
    src = resolve_source(SourceSpec('foreign', str(folder)))
    facts = shard_facts([src])
    assert sorted(facts) == [f'foreign-{i:06d}' for i in range(TARS)]
    assert facts['foreign-000001'] == (src.sha256[1], PER_TAR)


def test_a_brace_list_of_adopted_shards_reads_their_own_files(tmp_path):
    folder = foreign_shards(tmp_path / 'wds')
    adopt(options(folder))
    src = resolve_source(SourceSpec('foreign', f'{folder}/foreign-{{000001..000002}}.tar'))
    assert src.counts == (PER_TAR, PER_TAR)
    assert [s['__key__'] for s in iter_shard_samples(src.urls[0], 0, 1)] == ['foreign/000001/000000']


def test_a_hash_sign_in_a_folder_name_is_part_of_the_path(tmp_path):
    from labeling_fixtures import toy_shards
    shards = toy_shards(tmp_path / 'exp#2', n=4, per_shard=4)
    src = resolve_source(SourceSpec('toy', shards))
    assert [s['__key__'] for s in iter_shard_samples(src.urls[0], 0, 4)] == [f'toy/000000/{i:06d}' for i in range(4)]


def test_a_tar_that_repeats_a_key_apart_and_writes_minus_one_for_no_label_counts_as_its_readers_do(tmp_path):
    import io
    import tarfile

    from shards.reader import member_keys
    folder = tmp_path / 'odd'
    folder.mkdir()
    image = write_image(tmp_path / 'a.jpg', 1).read_bytes()
    with tarfile.open(folder / 'odd.tar', 'w') as tar:
        for name, data in (('a.jpg', image), ('a.cls', b'1'), ('b.jpg', image), ('b.cls', b'-1'), ('a.jpg', image),
                           ('a.cls', b'0')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    summary = adopt(options(folder))
    assert (summary['samples'], summary['labels'], summary['without_label_now']) == (3, {'toy': 2}, {'toy': 1})
    assert verify(str(folder)) == []
    src = resolve_source(SourceSpec('foreign', str(folder)))
    assert member_keys(src.urls[0]) == {f'foreign/000000/{p:06d}' for p in range(3)}


def test_size_files_other_tools_wrote_are_checked_against_the_count(tmp_path):
    # img2dataset: 00000.tar beside 00000_stats.json ("successes") and 00000.parquet
    folder = foreign_shards(tmp_path / 'img2dataset', pattern='%05d.tar')
    for i in range(TARS):
        (folder / f'{i:05d}_stats.json').write_text(json.dumps({'count': PER_TAR + 2, 'successes': PER_TAR}))
        (folder / f'{i:05d}.parquet').write_bytes(b'not read')
    assert adopt(options(folder))['samples'] == TARS * PER_TAR

    stale = foreign_shards(tmp_path / 'stale', pattern='%05d.tar')
    (stale / '00001_stats.json').write_text(json.dumps({'successes': PER_TAR + 1}))
    with pytest.raises(AdoptError, match=rf'00001\.tar holds {PER_TAR} samples but 00001_stats\.json says {PER_TAR + 1}'):
        adopt(options(stale))

    openclip = foreign_shards(tmp_path / 'openclip')
    (openclip / 'sizes.json').write_text(json.dumps({'train-0000.tar': PER_TAR, 'train-0002.tar': 1}))
    with pytest.raises(AdoptError, match=r'train-0002\.tar holds 5 samples but sizes\.json says 1'):
        adopt(options(openclip, workers=1))


def test_timms_split_info_is_checked_against_the_count(tmp_path):
    folder = foreign_shards(tmp_path / 'timm')
    info = {'name': 'toy', 'splits': {'train': {'name': 'train', 'num_samples': TARS * PER_TAR,
                                                'filenames': [f'train-{i:04d}.tar' for i in range(TARS)],
                                                'shard_lengths': [PER_TAR] * TARS}}}
    (folder / '_info.json').write_text(json.dumps(info))
    assert adopt(options(folder))['samples'] == TARS * PER_TAR

    stale = foreign_shards(tmp_path / 'stale')
    info['splits']['train']['shard_lengths'] = [PER_TAR, PER_TAR + 3, PER_TAR]
    (stale / '_info.json').write_text(json.dumps(info))
    with pytest.raises(AdoptError, match=rf'train-0001\.tar holds {PER_TAR} samples but _info\.json \(split train\) '
                                         rf'says {PER_TAR + 3}'):
        adopt(options(stale, workers=1))


def test_class_names_in_a_json_field_become_the_tasks_file_indices_for_every_reader(tmp_path):
    folder = foreign_shards(tmp_path / 'wds')
    names = ('odd', 'even')   # the tasks file's order, not the order the names first appear in
    summary = adopt(options(folder, labels={'toy': 'name:json:class_name'}, num_classes={'toy': 2},
                            class_names={'toy': names}))
    assert summary['labels'] == {'toy': TARS * PER_TAR} and summary['without_label_now'] == {'toy': 0}
    src = resolve_source(SourceSpec('foreign', str(folder)))
    meta = [json.loads(s['json']) for s in iter_shard_samples(src.urls[0], 0, PER_TAR)]
    assert [m['labels'] for m in meta] == [{'toy': names.index(CLASS_NAMES[p % 2])} for p in range(PER_TAR)]

    tasks = tmp_path / 'tasks.json'
    tasks.write_text(json.dumps({'toy': list(names)}))
    store = LabelStore(str(tmp_path / 'labels'), TaskRegistry.from_json(str(tasks)))
    assert import_human(store, str(folder), ['toy']) == {'toy': TARS * PER_TAR}
    assert store.read_part('toy', 'foreign-000000').to_pydict()['idx'][:2] == [[1], [0]]


def test_an_unknown_class_name_is_one_error_naming_the_sample_and_a_name_field_needs_the_names(tmp_path):
    folder = foreign_shards(tmp_path / 'wds', bad_class=True)
    with pytest.raises(AdoptError, match=r"train-0001\.tar: sample n0144_1006 has name:json:class_name 'heptagon', "
                                         r"not a class name of task 'toy'"):
        adopt(options(folder, labels={'toy': 'name:json:class_name'}, class_names={'toy': CLASS_NAMES}, workers=1))
    with pytest.raises(AdoptError, match=r'give --tasks-file with the names of .toy.'):
        options(folder, labels={'toy': 'name:json:class_name'})


def test_tars_named_by_a_brace_pattern_are_adopted_with_the_index_elsewhere_and_their_folder_untouched(tmp_path):
    folder = foreign_shards(tmp_path / 'readonly')
    before = sorted(p.relative_to(folder) for p in folder.rglob('*'))
    index = tmp_path / 'mine'
    summary = adopt(options(folder, prefix=f'{folder}/train-{{0000..0001}}.tar', index_to=str(index)))
    assert (summary['tars'], summary['samples'], summary['index']) == (2, 2 * PER_TAR, str(index))
    assert sorted(p.relative_to(folder) for p in folder.rglob('*')) == before
    src = resolve_source(SourceSpec('foreign', str(index)))
    assert [u.split('#')[0] for u in src.urls] == [f'{folder}/train-0000.tar', f'{folder}/train-0001.tar']
    keys = [s['__key__'] for s in iter_shard_samples(src.urls[1], 0, PER_TAR)]
    assert keys == [f'foreign/000001/{p:06d}' for p in range(PER_TAR)]
    assert verify(str(index)) == []

    with pytest.raises(AdoptError, match=r'1 of the 4 tars .* are not in .*readonly \(first: train-0003.tar\)'):
        adopt(options(folder, prefix=f'{folder}/train-{{0000..0003}}.tar', index_to=str(tmp_path / 'other')))


def test_a_tar_folder_read_from_the_index_is_checked_before_use(tmp_path):
    folder = foreign_shards(tmp_path / 'wds')
    index = tmp_path / 'mine'
    adopt(options(folder, index_to=str(index)))
    plan_file = index / '_index' / 'foreign' / 'build.json'
    plan = json.loads(plan_file.read_text())
    assert plan['adopted']['base'] == str(folder)
    for forged in ('relative/folder', 'http://elsewhere/x', f'{folder}/../../etc'):
        plan['adopted']['base'] = forged
        plan_file.write_text(json.dumps(plan))
        with pytest.raises(ValueError, match='unusable tar folder'):
            resolve_source(SourceSpec('foreign', str(index)))


def test_a_broken_image_in_a_foreign_tar_is_a_corrupt_sample_named_by_the_projects_key(tmp_path, caplog):
    folder = foreign_shards(tmp_path / 'wds', broken_image=True)
    assert adopt(options(folder))['samples'] == TARS * PER_TAR   # adopting reads no image
    stream = ShardStream([SourceSpec('foreign', str(folder))],
                         StreamConfig(shuffle_buffer=3, max_corrupt_fraction=0.5),
                         lambda img: torch.zeros(1), rank=0, world_size=1, workers=1, batch_size=5)
    keys = [k for batch in stream for k in batch['key']]
    assert len(keys) == TARS * PER_TAR and 'foreign/000001/000002' not in keys   # replaced, the count kept
    assert 'skipping corrupt sample foreign/000001/000002' in caplog.text


def test_the_long_passes_show_progress_and_no_progress_silences_them(tmp_path, capsys):
    from shards.cli import main as cli
    folder = foreign_shards(tmp_path / 'wds')
    assert cli(['adopt', str(folder), '--source', 'foreign']) == 0
    assert cli(['verify', str(folder)]) == 0
    assert cli(['hash', str(folder)]) == 0
    err = capsys.readouterr().err
    assert all(f'{bar}: 100%' in err for bar in ('adopt foreign', f'verify {folder}', 'hash foreign'))
    assert cli(['verify', str(folder), '--no-progress']) == 0
    assert capsys.readouterr().err == ''


def test_class_names_resolve_through_the_index_elsewhere_and_a_relative_tar_folder_is_recorded_whole(
        tmp_path, monkeypatch):
    foreign_shards(tmp_path / 'wds')
    # the tars' owner adopted them in place with the opposite class order: readers must not use theirs
    adopt(options(tmp_path / 'wds', labels={'toy': 'name:json:class_name'}, class_names={'toy': CLASS_NAMES}))
    monkeypatch.chdir(tmp_path)
    names = ('odd', 'even')
    adopt(options(Path('wds'), labels={'toy': 'name:json:class_name'}, class_names={'toy': names}, index_to='mine'))
    plan = json.loads((tmp_path / 'mine' / '_index' / 'foreign' / 'build.json').read_text())
    assert plan['adopted']['base'] == str(tmp_path / 'wds')
    monkeypatch.chdir(tmp_path / 'mine')   # a reader elsewhere, naming the index by its absolute path
    src = resolve_source(SourceSpec('foreign', str(tmp_path / 'mine')))
    meta = [json.loads(s['json']) for s in iter_shard_samples(src.urls[0], 0, PER_TAR)]
    assert [m['labels'] for m in meta] == [{'toy': names.index(CLASS_NAMES[p % 2])} for p in range(PER_TAR)]


def test_an_index_on_an_object_store_may_not_send_readers_to_a_local_folder(tmp_path):
    folder = foreign_shards(tmp_path / 'wds')
    with pytest.raises(AdoptError, match="cannot send readers to this machine's folder"):
        options(folder, index_to='s3://bucket/idx')
