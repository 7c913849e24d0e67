"""An export travels the way timm's models do: a folder in timm's Hugging Face layout (config.json as
``save_config_for_hf`` writes it, model.safetensors, a model card) that ``timm.create_model('local-dir:...')``
loads to the same outputs as the project's own loaders; exports in the older layout keep loading; and
``--push-to-hub`` uploads that folder through huggingface_hub, or says in one line why it could not."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import timm
import torch
from helpers import REPO_ROOT, tiny_pets_config, trained_looking_state, write_image

from pretrain.config import to_dict
from pretrain.export import EXPORT_FILES, HubError, load_export, main, push_to_hub, write_export
from pretrain.models.checkpoint import NOT_SHAPE

TINY = {'kernel_sizes': [7, 5], 'depths': [1, 1], 'channels': [16, 32], 'small_kernel': 3}
# (and global_pool, which timm writes since 1.0.27, as it does in model_args)
TIMM_KEYS = {'architecture', 'num_classes', 'num_features', 'model_args', 'pretrained_cfg', 'label_names'}


def tiny_config(tmp, *extra):
    return tiny_pets_config(tmp, dict(TINY, lk_impl='native'), *extra)


def trained_looking(cfg):
    return trained_looking_state(cfg)


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('hf')
    cfg = tiny_config(tmp)
    write_export(cfg, 'pets', trained_looking(cfg), str(tmp / 'export'), source={})
    return tmp / 'export'


def old_layout(new_folder, out):
    """The export as pretrain.export wrote it before issue 38: ``model_kwargs``, the architecture inside
    pretrained_cfg, no model card."""
    out.mkdir()
    shutil.copy(new_folder / 'model.safetensors', out / 'model.safetensors')
    meta = json.loads((new_folder / 'config.json').read_text())
    shape = {k: v for k, v in meta['model_args'].items() if k not in ('num_classes', 'global_pool')}
    cfg = {k: v for k, v in meta['pretrained_cfg'].items() if k not in ('crop_mode', 'fixed_input_size', 'custom_load')}
    old = dict(architecture=meta['architecture'], num_classes=meta['num_classes'], task=meta['task'], form=meta['form'],
               model_kwargs=shape, source={}, max_relative_error=meta['max_relative_error'],
               pretrained_cfg=dict(cfg, architecture=meta['architecture'], label_names=meta['label_names']),
               precision=meta['precision'], channels_last=meta['channels_last'])
    (out / 'config.json').write_text(json.dumps(old, indent=2))
    return out


def forward(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_the_export_folder_is_in_timms_hugging_face_layout(exported):
    assert sorted(os.listdir(exported)) == sorted(EXPORT_FILES)
    meta = json.loads((exported / 'config.json').read_text())
    assert TIMM_KEYS <= set(meta)
    assert meta['architecture'] == 'replknet_31b' and meta['num_classes'] == 2 and meta['num_features'] == 32
    assert meta['label_names'] == ['cat', 'dog'] and meta['pretrained_cfg']['input_size'] == [3, 40, 40]
    assert {k: v for k, v in meta['model_args'].items() if k != 'global_pool'} == dict(TINY, num_classes=2)
    assert not set(meta['model_args']) & NOT_SHAPE   # lk_impl is how to run it, not what it is
    assert 'model_kwargs' not in meta and 'architecture' not in meta['pretrained_cfg']   # timm's layout, not the old one


def test_the_config_is_what_timms_own_save_for_hf_writes_for_the_loaded_model(exported, tmp_path):
    """A model loaded from the export and saved again by timm gives the same config.json (but the
    project's own keys, which timm keeps only when told): the export speaks timm's format."""
    from timm.models._hub import save_for_hf

    import pretrain.models  # noqa: F401
    model = timm.create_model(f'local-dir:{exported}', pretrained=True)
    save_for_hf(model, str(tmp_path / 'again'), safe_serialization=True,
                model_config=dict(label_names=model.pretrained_cfg['label_names']))
    ours, theirs = (json.loads((f / 'config.json').read_text()) for f in (exported, tmp_path / 'again'))
    assert {k: v for k, v in ours.items() if k in theirs} == theirs


def test_local_dir_loads_what_pretrain_evaluate_loads(exported):
    import pretrain.models  # noqa: F401
    from pretrain.evaluate import main as evaluate  # noqa: F401  (its loader: pretrain.export.load_export)
    x = torch.randn(3, 3, 40, 40)
    reference, _ = load_export(exported / 'model.safetensors')
    by_folder = timm.create_model(f'local-dir:{exported}', pretrained=True)
    by_file = timm.create_model('replknet_31b', pretrained=True,
                                pretrained_cfg_overlay=dict(file=str(exported / 'model.safetensors')))
    expected = forward(reference, x)
    for model in (by_folder, by_file):
        assert torch.allclose(forward(model, x), expected, rtol=0, atol=1e-6)
        assert model.num_classes == 2 and tuple(model.pretrained_cfg['input_size']) == (3, 40, 40)
    assert by_folder.pretrained_cfg['label_names'] == ['cat', 'dog']   # timm's label_names at the top level
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in by_folder.modules())   # the deploy form


def test_an_export_in_the_older_layout_still_loads_everywhere(exported, tmp_path):
    import pretrain.models  # noqa: F401
    from labeling.teachers import TeacherSpec, load_teacher
    old = old_layout(exported, tmp_path / 'old')
    x = torch.randn(2, 3, 40, 40)
    expected = forward(load_export(exported / 'model.safetensors')[0], x)
    model, meta = load_export(old / 'model.safetensors')   # pretrain.evaluate's and pretrain.analysis.erf's loader
    assert meta['model_kwargs'] == TINY and torch.allclose(forward(model, x), expected, rtol=0, atol=1e-6)
    teacher = load_teacher(TeacherSpec('export', path=str(old)), 2, ('cat', 'dog'))   # labeling's export teacher
    assert teacher.preprocess.size == (40, 40) and torch.allclose(forward(teacher.model, x), expected, rtol=0, atol=1e-6)
    by_folder = timm.create_model(f'local-dir:{old}', pretrained=True)   # was: the default shape, mismatched keys
    assert torch.allclose(forward(by_folder, x), expected, rtol=0, atol=1e-6)


def test_evaluate_reads_both_layouts(exported, tmp_path):
    from pretrain.evaluate import main as evaluate
    from shards.build import BuildOptions, build
    from shards.inputs import Item
    items = [Item(str(write_image(tmp_path / f'{i}.jpg', i, size=(48, 40))), f'{i:03d}', {'pets': i % 2}) for i in range(4)]
    build(items, BuildOptions(str(tmp_path / 'shards'), 'val', samples_per_shard=2, progress=False))
    results = [evaluate(['--checkpoint', str(folder), '--data', f'val={tmp_path / "shards"}', '--workers', '0'])
               for folder in (exported, old_layout(exported, tmp_path / 'old'))]
    assert results[0]['val/pets/top1'] == results[1]['val/pets/top1'] and results[0]['size'] == 40


def test_a_folder_missing_its_weights_is_refused_naming_the_file(exported, tmp_path):
    import pretrain.models  # noqa: F401
    broken = tmp_path / 'broken'
    shutil.copytree(exported, broken)
    (broken / 'model.safetensors').unlink()
    with pytest.raises(RuntimeError, match='No suitable checkpoints'):   # timm's own words
        timm.create_model(f'local-dir:{broken}', pretrained=True)
    with pytest.raises(FileNotFoundError, match='model.safetensors missing'):
        push_to_hub(str(broken), 'me/tiny', token='hf_x')


# --- the model card and the run folder it describes ---------------------------------------------------

def fake_run(tmp, cfg, state, teacher=None, result_step=4):
    """A run folder as pretrain.run leaves it, without training: config.json, a committed step-4 with its
    EMA weights and pinned label manifests, result.json."""
    run = tmp / 'run'
    step = run / 'ckpt' / 'step-4'
    step.mkdir(parents=True)
    (run / 'config.json').write_text(json.dumps(to_dict(cfg)))
    torch.save(dict(version=1, state=state), step / 'ema.pt')
    if teacher is not None:
        header = dict(task='pets', num_classes=2, teacher=teacher, topk=2)
        torch.save(dict(version=1, state=dict(tasks={'pets': dict(header=header, num_parts=1)}, switches=[])),
                   step / 'labels.pt')
    (step / 'COMMITTED').write_text(json.dumps(dict(version=1, step=4, world_size=2, parts={})))
    (run / 'result.json').write_text(json.dumps({'step': result_step, 'val_ema/pets/top1': 0.75, 'val/pets/top1': 0.5,
                                                 'loss': 1.0}))
    return run


TEACHER = dict(kind='transformers', model='/home/someone/teachers/vit-pets', weights_sha256='ab' * 32, temperature=1.0)


@pytest.fixture(scope='module')
def from_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('card')
    items = [Item_(tmp, i) for i in range(5)]
    from shards.build import BuildOptions, build
    build(items, BuildOptions(str(tmp / 'shards'), 'lab', samples_per_shard=2, progress=False))
    cfg = tiny_config(tmp, f'data.sources=[{{"name": "lab", "url": "{tmp / "shards"}"}}, '
                           f'{{"name": "gone", "url": "{tmp / "nowhere"}"}}]',
                      f'data.label_store="{tmp / "labels"}"')
    run = fake_run(tmp, cfg, trained_looking(cfg), TEACHER)
    out = tmp / 'export'
    meta = main([str(run), '--task', 'pets', '--out', str(out), '--ema', '--license', 'mit'])
    return tmp, out, meta


def Item_(tmp, i):
    from shards.inputs import Item
    return Item(str(write_image(tmp / f'{i}.jpg', i, size=(48, 40))), f'{i:03d}', {'pets': i % 2})


def test_the_model_card_states_recipe_data_teachers_metrics_and_the_reparam_check(from_run):
    from huggingface_hub import ModelCard
    tmp, out, meta = from_run
    text = (out / 'README.md').read_text()
    card = ModelCard(text)   # the Hub's own parser of the front matter
    assert card.data.library_name == 'timm' and card.data.license == 'mit' and 'image-classification' in card.data.tags
    assert 'adamw, lr 0.002, weight decay 0.05' in text and 'cosine over 8.0 epochs' in text
    assert '16 (8 x 1 accumulation x 2 processes)' in text   # world size from the checkpoint's marker
    assert 'lab: 5 samples' in text                          # the source by name and count, from its shard index
    assert 'gone: sample count unknown (its shard index was not reachable at export)' in text
    assert 'transformers vit-pets (a local folder), weights sha256 ' + 'ab' * 32 in text and 'top-2 stored' in text
    assert 'val_ema/pets/top1: 0.75' in text and 'val/pets/top1' not in text   # the EMA weights' evaluation only
    assert 'EMA weights of checkpoint step-4' in text
    assert f'by at most {meta["max_abs_difference"]:.3g} (absolute)' in text
    assert str(tmp) not in text and '/home/someone' not in text   # names and counts, no paths


def test_a_card_without_a_reachable_store_or_a_matching_evaluation_says_so(tmp_path):
    from pretrain.model_card import run_metrics, teachers_of
    cfg = tiny_config(tmp_path, f'data.label_store="{tmp_path / "no-store"}"')
    run = fake_run(tmp_path, cfg, {}, teacher=None, result_step=8)
    assert teachers_of(cfg, str(run), 'step-4')['pets'].startswith('unknown (no pinned label manifest in the checkpoint')
    assert 'result.json is of step 8, this export of step-4' in run_metrics(str(run), 'step-4', 'pets', True)['note']
    human = tiny_config(tmp_path, 'data.label_store=null')
    assert teachers_of(human, str(run), 'step-4') == {'pets': 'none: human labels from the shards only'}


# --- --push-to-hub ------------------------------------------------------------------------------------

def test_push_to_hub_uploads_the_export_folder_and_its_card(exported, tmp_path, monkeypatch):
    """huggingface_hub's own upload preparation runs; only the calls that reach the network are replaced."""
    from huggingface_hub import HfApi
    from huggingface_hub.repocard import RepoCard
    folder = tmp_path / 'export'
    shutil.copytree(exported, folder)
    (folder / 'notes.txt').write_text('not part of the export')
    calls = {}

    def create_repo(self, repo_id, private=False, exist_ok=False, **kwargs):
        calls['create_repo'] = dict(repo_id=repo_id, private=private, exist_ok=exist_ok)
        return type('RepoUrl', (), {'repo_id': repo_id})()

    def validate_yaml(self, content, repo_type=None, token=None):   # the Hub's YAML check is a request
        calls['card'] = RepoCard(content).data.to_dict()

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, commit_message=None, **kwargs):
        ops = self._prepare_upload_folder_additions(folder_path, '', allow_patterns=allow_patterns, repo_type='model',
                                                    token=self.token)
        calls['upload'] = dict(repo_id=repo_id, files=sorted(op.path_in_repo for op in ops), message=commit_message)
        return type('CommitInfo', (), {'commit_url': f'https://huggingface.co/{repo_id}/commit/0'})()

    monkeypatch.setattr(HfApi, 'create_repo', create_repo)
    monkeypatch.setattr(HfApi, '_validate_yaml', validate_yaml)
    monkeypatch.setattr(HfApi, 'upload_folder', upload_folder)
    url = push_to_hub(str(folder), 'me/replknet-tiny-pets', token='hf_x', private=True)
    assert url == 'https://huggingface.co/me/replknet-tiny-pets/commit/0'
    assert calls['create_repo'] == dict(repo_id='me/replknet-tiny-pets', private=True, exist_ok=True)
    assert calls['upload']['files'] == sorted(EXPORT_FILES)   # notes.txt stays home
    assert calls['upload']['message'] == 'replknet_31b (pets), exported by pretrain.export'
    assert calls['card']['library_name'] == 'timm' and 'replknet' in calls['card']['tags']


def test_a_failed_upload_is_one_error_naming_the_export_folder(exported, monkeypatch):
    from huggingface_hub import HfApi

    def unreachable(self, *args, **kwargs):
        raise ConnectionError('[Errno 111] Connection refused')
    monkeypatch.setattr(HfApi, 'create_repo', unreachable)
    said = f'the upload failed .ConnectionError: .Errno 111. Connection refused.; the export is in {exported}'
    with pytest.raises(HubError, match=said):
        push_to_hub(str(exported), 'me/tiny', token='hf_x')


def cli(*args, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith('HF_')}
    return subprocess.run([sys.executable, '-m', 'pretrain.export', *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(base, PYTHONPATH=str(REPO_ROOT), **env))


def test_the_cli_without_a_token_says_so_in_one_line_before_exporting(tmp_path):
    proc = cli(str(tmp_path / 'no-run'), '--task', 'pets', '--out', str(tmp_path / 'out'), '--push-to-hub', 'me/x',
               HF_HOME=str(tmp_path / 'hf-home'))
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines() == ['error: --push-to-hub: no Hugging Face token: set HF_TOKEN or run '
                                                '`hf auth login` (a token with write access)']
    assert not (tmp_path / 'out').exists()


def test_the_cli_with_the_hub_unreachable_exports_then_says_so_in_one_line(from_run, tmp_path):
    """The real client against a closed local port: what a machine without the Hub sees."""
    tmp = from_run[0]
    out = tmp_path / 'out'
    proc = cli(str(tmp / 'run'), '--task', 'pets', '--out', str(out), '--ema', '--push-to-hub', 'me/x',
               HF_HOME=str(tmp_path / 'hf-home'), HF_TOKEN='hf_x', HF_ENDPOINT='http://127.0.0.1:9')
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: --push-to-hub me/x: the upload failed (') and f'the export is in {out}' in last
    assert sorted(os.listdir(out)) == sorted(EXPORT_FILES)   # the export itself is done
