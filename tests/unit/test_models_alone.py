"""The models alone: a machine that only runs exported models needs torch, timm and safetensors (and
what they themselves require), not DeepSpeed, WebDataset, s3fs or the rest of the training stack.

The proof runs the loading in a fresh virtual environment whose site-packages holds only those three
distributions and their own requirements (by their installed metadata), linked from this project's
environment, plus this project's packages as ``pip install --no-deps`` would place them. Whatever the
loading path imports but that set lacks fails as it would on such a machine; a check that only blocks
named modules (``sys.modules['deepspeed'] = None``) would miss an unnamed one.
"""
import ast
import json
import os
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from safetensors.torch import load_file, save_file

from pretrain.export import load_export, write_export


def models_requires() -> tuple:
    """The distribution names of setup.py's MODELS_REQUIRES (read, not run: setup.py calls setup())."""
    tree = ast.parse((REPO_ROOT / 'setup.py').read_text())
    value = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                 and any(getattr(t, 'id', None) == 'MODELS_REQUIRES' for t in node.targets))
    return tuple(Requirement(ast.literal_eval(value)[i]).name for i in range(len(value.elts)))


MODELS_NEED = models_requires()
TRAINING_ONLY = ('deepspeed', 'webdataset', 's3fs', 'transformers', 'pyarrow', 'tensorboard', 'cv2', 'simplejpeg',
                 'imagehash', 'braceexpand')
LIGHT_SHARDS_MODULES = {'shards', 'shards.common', 'shards.common.safe_files', 'shards.common.local_files',
                        'shards.common.errors'}


def requirement_closure(names) -> dict:
    """Installed distributions ``names`` need, by their metadata (markers evaluated here, no extras)."""
    found, todo = {}, list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue   # an optional requirement this platform does not install
        found[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({'extra': ''}):
                todo.append(req.name)
    return found


def top_level_entries(dist) -> set:
    """What a distribution put directly into site-packages (packages, modules, its .dist-info)."""
    entries = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith('..')}
    return {e for e in entries if e != '__pycache__'}


def models_only_env(root: Path) -> Path:
    """A venv seeing only MODELS_NEED's closure and the project's packages; returns its python."""
    site = root / 'site'
    site.mkdir(parents=True)
    source = Path(torch.__file__).resolve().parents[1]   # this environment's site-packages
    for dist in requirement_closure(MODELS_NEED).values():
        for entry in top_level_entries(dist):
            if (source / entry).exists() and not (site / entry).exists():
                (site / entry).symlink_to(source / entry)
    for package in ('pretrain', 'labeling', 'shards'):   # pip install --no-deps replk-pretrain
        (site / package).symlink_to(REPO_ROOT / package)
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root / 'venv')
    purelib = next((root / 'venv' / 'lib').glob('python3*/site-packages'))
    (purelib / 'models_only.pth').write_text(f'{site}\n')
    return root / 'venv' / 'bin' / 'python'


LOAD = """
import importlib.util, json, sys
present = [m for m in {training!r} if importlib.util.find_spec(m) is not None]
import timm
import torch
from safetensors.torch import load_file, save_file
import pretrain.models
from pretrain.models.checkpoint import load_exported
x = load_file({io!r})['x']
with torch.no_grad():
    by_folder = timm.create_model('local-dir:' + {folder!r}, pretrained=True).eval()(x)
    by_file = load_exported({folder!r} + '/model.safetensors')[0].eval()(x)
save_file(dict(by_folder=by_folder, by_file=by_file), {io!r} + '.out')
print(json.dumps(dict(present=present, torch=torch.__file__,
                      modules=sorted(m for m in sys.modules if m.split('.')[0] in ('shards', 'labeling', 'pretrain')))))
"""


@pytest.mark.skipif(sys.platform == 'win32', reason='symlinked site-packages')
def test_an_export_loads_and_runs_with_only_torch_timm_and_safetensors(tmp_path):
    from pretrain.config import load_config, task_classes
    from pretrain.engine import build_model
    kwargs = {'kernel_sizes': [7, 5], 'depths': [1, 1], 'channels': [16, 32], 'small_kernel': 3}
    cfg = load_config('configs/tiny_cpu.json', [f'model.kwargs={json.dumps(kwargs)}', 'data.transform.image_size=40',
                                                'tasks={"pets": {"num_classes": 2}}'])
    torch.manual_seed(0)
    write_export(cfg, 'pets', build_model(cfg.model, task_classes(cfg.tasks)).state_dict(), str(tmp_path / 'export'),
                 source={})
    x = torch.randn(2, 3, 40, 40)
    save_file(dict(x=x), str(tmp_path / 'io'))
    with torch.no_grad():
        expected = load_export(tmp_path / 'export' / 'model.safetensors')[0].eval()(x)

    python = models_only_env(tmp_path / 'env')
    code = LOAD.format(training=TRAINING_ONLY, io=str(tmp_path / 'io'), folder=str(tmp_path / 'export'))
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV')}
    proc = subprocess.run([str(python), '-s', '-c', code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(env, PYTHONNOUSERSITE='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen['present'] == []                                   # the training stack is not there at all
    assert str(tmp_path / 'env' / 'site') in seen['torch']         # torch came through the models-only site
    assert not [m for m in seen['modules'] if m.startswith('labeling')]
    assert set(m for m in seen['modules'] if m.startswith('shards')) <= LIGHT_SHARDS_MODULES
    out = load_file(str(tmp_path / 'io.out'))
    assert torch.allclose(out['by_folder'], expected, rtol=0, atol=1e-6)
    assert torch.allclose(out['by_file'], expected, rtol=0, atol=1e-6)
