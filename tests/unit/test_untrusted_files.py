"""Files from outside are data: a code-running pickle is refused at every loading entry point, names
read from storage never become paths, and the official release container still loads."""
import argparse
import json
from pathlib import Path

import pytest
import torch
from labeling_fixtures import TINY_VIT

from labeling.store import LabelStore
from labeling.tasks import TaskRegistry
from labeling.teachers import TeacherSpec, load_teacher
from pretrain import checkpoint
from pretrain.config import ConfigError, load_config
from pretrain.models import RepLKNet
from pretrain.weights import consolidate_run, read_weights
from shards.common.safe_files import UnsafeFileError
from shards.index import ShardIndex


class Payload:
    """Creates a file when unpickled: proof that unpickling ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / 'payload-ran'
    path = tmp_path / 'weights.pth'
    torch.save({'model': {'w': torch.zeros(2)}, 'extra': Payload(marker)}, path)
    return path, marker


def test_starting_weights_refuse_a_code_running_pickle(evil):
    path, marker = evil
    with pytest.raises(UnsafeFileError, match=r'weights\.pth.*io\.open.*--trust-pickle'):
        read_weights(str(path))
    assert not marker.exists()


def test_trust_pickle_is_an_explicit_opt_in(evil):
    path, marker = evil
    assert set(read_weights(str(path), trust_pickle=True)) == {'w'}
    assert marker.exists()


def test_evaluate_cli_refuses_a_code_running_pickle(evil):
    from pretrain.evaluate import main as evaluate
    path, marker = evil
    with pytest.raises(SystemExit, match=r'^error: .*weights.pth: refusing to unpickle it: it names io.open'):
        evaluate(['--checkpoint', str(path), '--data', 'val=/nowhere', '--model', 'replknet_31b',
                  '--model-kwargs', json.dumps(dict(kernel_sizes=[7, 5], depths=[1, 1], channels=[16, 32])),
                  '--task', 'a=2'])
    assert not marker.exists()


def test_timm_teacher_refuses_a_code_running_pickle(evil):
    path, marker = evil
    with pytest.raises(UnsafeFileError):
        load_teacher(TeacherSpec(kind='timm', model='vit_large_patch16_224', weights=str(path),
                                 model_kwargs=TINY_VIT), 4)
    assert not marker.exists()


def test_the_documented_official_checkpoint_route_reads_the_file_with_our_loader_not_timms(evil):
    import timm

    import pretrain.models  # noqa: F401  (registers RepLKNet)
    path, marker = evil
    with pytest.raises(UnsafeFileError, match=r'weights\.pth: refusing to unpickle it: it names io\.open'):
        timm.create_model('replknet_31b', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert not marker.exists()
    torch.save({'model': RepLKNet(kernel_sizes=(7, 5), depths=(1, 1), channels=(8, 16)).state_dict()},
               path.with_name('plain.pth'))
    model = timm.create_model('replknet_31b', pretrained=True, kernel_sizes=(7, 5), depths=(1, 1), channels=(8, 16),
                              pretrained_cfg_overlay=dict(file=str(path.with_name('plain.pth'))))
    assert 'state_dict' not in model.pretrained_cfg   # the weights handed to timm are not kept a second time


def test_timms_own_loaders_run_no_code_in_the_lowest_timm_allowed():
    """setup.py's floor (checked by `make lower-bounds`): timm 1.0.15-1.0.25 unpickled fully."""
    import inspect

    from timm.models import load_checkpoint, load_state_dict
    for loader in (load_checkpoint, load_state_dict):
        assert inspect.signature(loader).parameters['weights_only'].default is True, loader.__name__


@pytest.mark.parametrize('kwargs', [{'checkpoint_path': 'evil.pth'}, {'pretrained': True},
                                    {'pretrained_cfg_overlay': {'file': 'evil.pth'}}, {'pretrained_cfg': 'evil_tag'}])
def test_model_arguments_from_configs_and_teachers_never_steer_timms_loader(kwargs):
    with pytest.raises(ConfigError, match='would make timm load weights itself'):
        load_config('configs/tiny_cpu.json', [f'model.kwargs={json.dumps(kwargs)}'])
    with pytest.raises(ValueError, match='would make timm load weights itself'):
        TeacherSpec(kind='timm', model='vit_large_patch16_224', weights='w.safetensors', model_kwargs=kwargs)


def test_a_teacher_may_still_set_its_input_size_through_the_pretrained_config():
    TeacherSpec(kind='timm', model='vit_large_patch16_224', weights='w.safetensors', model_kwargs=TINY_VIT)


def test_transformers_remote_code_is_only_set_on_the_teacher():
    with pytest.raises(ValueError, match='trust_remote_code'):
        TeacherSpec(kind='transformers', model='x', model_kwargs={'trust_remote_code': True})


def _run_folder(tmp_path, payload_file: str, marker: Path) -> Path:
    folder = tmp_path / 'run' / 'ckpt' / 'step-1'
    folder.mkdir(parents=True)
    (folder / 'COMMITTED').write_text(json.dumps(dict(version=checkpoint.STATE_VERSION, world_size=1, step=1,
                                                      parts={})))
    torch.save({'module': {'w': torch.zeros(1)}, 'x': Payload(marker)}, folder / payload_file)
    return tmp_path / 'run'


@pytest.mark.parametrize('payload_file', ['mp_rank_00_model_states.pt', 'rng_rank0.pt'])
def test_run_folders_are_checked_before_deepspeed_unpickles_them(tmp_path, payload_file):
    marker = tmp_path / 'payload-ran'
    run = _run_folder(tmp_path, payload_file, marker)
    with pytest.raises(UnsafeFileError, match=payload_file):
        consolidate_run(str(run))           # starting weights, evaluate, export from a run folder
    with pytest.raises(UnsafeFileError, match=payload_file):
        checkpoint.load(None, str(run), 'step-1', rank=0, world_size=1, parts={})  # resume
    assert not marker.exists()


def test_official_release_container_loads_without_the_opt_in(tmp_path):
    model = RepLKNet(num_classes=10, kernel_sizes=(7, 5), depths=(1, 1), channels=(16, 32), small_kernel=3)
    sd = model.state_dict()
    path = tmp_path / 'RepLKNet-31B_ImageNet-1K_224.pth'
    # the official trainer's save_model(): model, optimizer, epoch, scaler, args (a Namespace), model_ema
    torch.save({'model': sd, 'optimizer': {'state': {}, 'param_groups': [{'lr': 4e-4, 'params': [0, 1]}]},
                'epoch': 119, 'scaler': {'scale': 65536.0, 'growth_factor': 2.0},
                'args': argparse.Namespace(model='RepLKNet-31B', lr=4e-4, drop_path=0.3, data_path='/x'),
                'model_ema': sd}, path)
    loaded = read_weights(str(path))
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_our_rng_states_round_trip_through_the_safe_loader(tmp_path):
    import random

    import numpy as np

    from pretrain.train_state import RngState
    from shards.common.safe_files import load_torch_file
    torch.save(RngState().state_dict(), tmp_path / 'rng.pt')
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    RngState().load_state_dict(load_torch_file(tmp_path / 'rng.pt'))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


# --- names read from storage or configs are data, not paths --------------------------------------

@pytest.mark.parametrize('name', ['../../escape.tar', '/etc/passwd', 'a/b.tar', 'x\x00.tar', '..'])
def test_crafted_shard_name_in_an_index_is_refused_before_use(tmp_path, name):
    (tmp_path / '_index.json').write_text(json.dumps(dict(version=1, builds={}, shards=[
        dict(name=name, source='s', samples=1, bytes=1, sha256='0' * 64)])))
    with pytest.raises(ValueError, match='shard name'):
        ShardIndex.load(str(tmp_path))


@pytest.mark.parametrize('name', ['../../escape.tar', '/etc/passwd', 'a/b.tar'])
def test_crafted_shard_name_in_a_job_index_part_is_refused_before_use(tmp_path, name):
    from shards.index import ShardEntry, save_job_part
    save_job_part(str(tmp_path), 's', 0, 1, [ShardEntry(name=name, source='s', samples=1, bytes=1, sha256='0' * 64)])
    with pytest.raises(ValueError, match='shard name'):
        ShardIndex.load(str(tmp_path))


def _store(tmp_path):
    (tmp_path / 'tasks.json').write_text(json.dumps({'toy': ['a', 'b']}))
    return LabelStore(str(tmp_path / 'store'), TaskRegistry.from_json(str(tmp_path / 'tasks.json')))


def test_label_store_refuses_crafted_stems_and_part_files(tmp_path):
    from labeling.store import Row
    store = _store(tmp_path)
    store.open_task('toy')
    with pytest.raises(ValueError, match='shard stem'):
        store.write_part('toy', '../../outside', [Row('k', [0], [1.0], 'human')], kind='human')
    record = store.write_part('toy', 'toy-000000', [Row('toy/000000/000000', [0], [1.0], 'human')], kind='human')
    store.refresh_manifest('toy')
    manifest_path = tmp_path / 'store' / 'labels' / 'toy' / '_task.json'
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps(dict(manifest, parts_table='../../../secret.parquet')))
    with pytest.raises(ValueError, match='parts table'):
        _store(tmp_path).read_part('toy', 'toy-000000')
    del manifest['parts_table']  # parts inline, as older stores keep them
    manifest['parts'] = {'toy-000000': dict(record, file='../../../secret.parquet')}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match='part file'):
        _store(tmp_path).read_part('toy', 'toy-000000')
    assert not list((tmp_path).glob('outside*'))


@pytest.mark.parametrize('task', ['../x', 'a/b', '/abs'])
def test_task_names_that_are_paths_are_refused_in_configs_and_tasks_files(tmp_path, task):
    with pytest.raises(ConfigError, match='task name'):
        load_config('configs/tiny_cpu.json', [f'tasks={json.dumps({task: {"num_classes": 2}})}'])
    (tmp_path / 'tasks.json').write_text(json.dumps({task: ['a', 'b']}))
    with pytest.raises(ValueError, match='task'):
        TaskRegistry.from_json(str(tmp_path / 'tasks.json'))


def test_a_checkpoint_resumes_only_at_its_world_size_and_says_how_to_continue(tmp_path):
    folder = tmp_path / 'run' / 'ckpt' / 'step-4'
    folder.mkdir(parents=True)
    (folder / 'COMMITTED').write_text(json.dumps(dict(version=checkpoint.STATE_VERSION, world_size=2, step=4)))
    with pytest.raises(ValueError, match='resume with 2 processes .* init.checkpoint'):
        checkpoint.load(None, str(tmp_path / 'run'), 'step-4', rank=0, world_size=1, parts={})


def test_a_full_disk_during_a_checkpoint_says_so_and_names_the_intact_one(tmp_path):
    import pytest as _pytest

    class FullDisk:
        def save_checkpoint(self, *args, **kwargs):
            raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 5568 vs 5460')
    run = tmp_path / 'run'
    (run / 'ckpt' / 'step-2').mkdir(parents=True)
    (run / 'ckpt' / 'step-2' / 'COMMITTED').write_text('{}')
    with _pytest.raises(OSError, match=r'writing checkpoint step-4 failed: no space left on .*step-2 is intact'):
        checkpoint.save(FullDisk(), str(run), 4, 0, 1, {}, keep=2)


def class_rewriting_checkpoint(path: Path) -> None:
    """A DeepSpeed-looking file that names only allowed globals, but whose pickle applies BUILD to the
    LossScaler class itself: a full unpickle sets ``LossScaler.loss_scale = 0.0`` process-wide."""
    import io
    import struct
    import zipfile

    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    plain = io.BytesIO()
    torch.save({'module': {'w': torch.zeros(1)}, 'scaler_class': LossScaler}, plain, pickle_protocol=2)
    rewrite = (b'N}' + b'X' + struct.pack('<I', 10) + b'loss_scale' + b'G' + struct.pack('>d', 0.0)
               + b's\x86b')   # state (None, {'loss_scale': 0.0}), BUILD onto the class just pushed
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, 'w') as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith('/data.pkl'):
                global_op = b'cdeepspeed.runtime.fp16.loss_scaler\nLossScaler\n'
                assert global_op in data
                data = data.replace(global_op, global_op + rewrite)
            dst.writestr(item, data)


def test_a_checkpoint_that_rewrites_an_allowed_class_is_refused(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler

    from shards.common.safe_files import check_checkpoint_folder
    folder = tmp_path / 'ckpt'
    folder.mkdir()
    class_rewriting_checkpoint(folder / 'mp_rank_00_model_states.pt')
    before = getattr(LossScaler, 'loss_scale', 'unset')
    with pytest.raises(UnsafeFileError, match=r'mp_rank_00_model_states\.pt: refusing to unpickle it'):
        check_checkpoint_folder(folder)
    assert getattr(LossScaler, 'loss_scale', 'unset') == before
    try:   # what DeepSpeed's own load would have done
        torch.load(folder / 'mp_rank_00_model_states.pt', weights_only=False)
        assert LossScaler.loss_scale == 0.0
    finally:
        if before == 'unset':
            del LossScaler.loss_scale
        else:
            LossScaler.loss_scale = before
