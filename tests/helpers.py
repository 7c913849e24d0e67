"""Helpers the tests import (fixtures live in conftest.py, which pytest loads itself)."""
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent


# --- images and shards ------------------------------------------------------------------------
def free_tcp_port() -> int:
    """A port the kernel just handed out as free (a launcher binds it a moment later)."""
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def write_image(path: Path, seed: int, size=(24, 20), mode='RGB', fmt=None) -> Path:
    """A small random image; ``seed`` makes its pixels (and so its bytes) reproducible."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    if mode == 'I;16':
        img = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)
    return path


def rewrite_tar_member(shard, member: str, payload: bytes) -> None:
    """Replace one member's bytes in a tar file (to plant a fault after a valid build)."""
    import io
    import tarfile

    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, 'w') as tar:
        for m, data in members:
            data = payload if m.name == member else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))




# --- training runs ----------------------------------------------------------------------------
def train_tiny(tiny: dict, run_dir: Path, sets: dict, config: str = 'configs/tiny_cpu.json') -> dict:
    """``pretrain/run.py`` on pretrain.apps.tiny_data's set in one plain process, ``sets`` overriding
    the config; returns {step: loss} from its metrics.jsonl."""
    import json
    import os
    import subprocess
    base = {'data.sources': [{'name': 'lab', 'url': tiny['shards']}, {'name': 'unl', 'url': tiny['shards']}],
            'data.val_sources': [{'name': 'val', 'url': tiny['shards']}], 'data.label_store': tiny['labels'],
            'data.tasks_file': tiny['tasks_file'], 'checkpoint.dir': str(run_dir), 'log.tensorboard': False}
    proc = subprocess.run([sys.executable, 'pretrain/run.py', '--config', config,
                           *[f'--set={k}={json.dumps(v)}' for k, v in {**base, **sets}.items()]],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1', RANK='0', LOCAL_RANK='0', WORLD_SIZE='1',
                                   MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_tcp_port())))
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (run_dir / 'metrics.jsonl').read_text().splitlines()]
    return {r['step']: r['loss'] for r in rows if 'loss' in r}


# --- exports ----------------------------------------------------------------------------------
def tiny_pets_config(tmp: Path, model_kwargs: dict, *extra: str):
    """configs/tiny_cpu.json as a 2-class 'pets' run at 40 px (its tasks file written into ``tmp``)."""
    import json

    from pretrain.config import load_config
    (tmp / 'tasks.json').write_text(json.dumps({'pets': ['cat', 'dog']}))
    return load_config('configs/tiny_cpu.json', [f'model.kwargs={json.dumps(model_kwargs)}', 'data.transform.image_size=40',
                                                'tasks={"pets": {"num_classes": 2}}',
                                                f'data.tasks_file="{tmp / "tasks.json"}"', *extra])


def trained_looking_state(cfg) -> dict:
    """The config's model, seeded, with non-trivial BatchNorm statistics (so folding them is tested)."""
    import torch

    from pretrain.config import task_classes
    from pretrain.engine import build_model
    torch.manual_seed(0)
    model = build_model(cfg.model, task_classes(cfg.tasks))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.state_dict()
