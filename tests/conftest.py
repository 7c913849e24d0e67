"""Shared fixtures for the three test tiers (helpers that tests import live in helpers.py).

- tests/unit: CPU, tiny models and data built by the tests themselves.
- tests/multiprocess: real processes (torchrun, the deepspeed launcher) on gloo.
- tests/gpu: marked ``gpu``; skipped where CUDA is absent.
"""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run under Triton's interpreter, which Triton picks when a kernel
# is defined: set it before anything imports pretrain.models.lk_conv.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')
# lk_impl='auto' keeps its decisions in a per-user cache: the tests (and the processes they start)
# keep theirs in a folder of their own, never the user's.
os.environ.setdefault('REPLK_CACHE_DIR', tempfile.mkdtemp(prefix='replk-test-cache-'))

# A suite started in the background by a non-interactive shell (`make test &`, nohup) inherits
# SIGINT ignored, and every process it starts would too: the Ctrl-C tests would then test nothing
# (the run ignores the signal and finishes). Those tests play a terminal's Ctrl-C, so the processes
# get the default a terminal's foreground job has; a handler, unlike SIG_IGN, resets at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from helpers import BIN_DIR, REPO_ROOT, free_tcp_port, write_image  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA device')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def free_port() -> int:
    return free_tcp_port()


@pytest.fixture
def launch():
    """Run a launcher command line from the repo root; fail with its output if it fails."""
    def _launch(args: list[str], timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        full_env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', **(env or {}))
        # The launchers live next to the interpreter running the tests (.venv/bin).
        full_env['PATH'] = f'{BIN_DIR}{os.pathsep}{full_env.get("PATH", "")}'
        proc = subprocess.run(args, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            pytest.fail(f'{" ".join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}'
                        f'\n--- stderr\n{proc.stderr[-6000:]}')
        return proc
    return _launch


@pytest.fixture
def randomize_bn():
    """Give every BatchNorm non-trivial statistics and affine terms, so fusions are really tested."""
    @torch.no_grad()
    def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
        gen = torch.Generator().manual_seed(seed)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
        return model
    return _randomize


@pytest.fixture
def image_tree(tmp_path) -> Path:
    """An ImageFolder tree: 3 classes x 6 JPEGs."""
    root = tmp_path / 'imagefolder'
    for c, name in enumerate(['cat', 'dog', 'fox']):
        for i in range(6):
            write_image(root / name / f'{i}.jpg', seed=10 * c + i)
    return root


# --- a real S3 server (SeaweedFS) on loopback -------------------------------------------------
@pytest.fixture(scope='session')
def s3_server(tmp_path_factory):
    from pretrain.apps.local_s3 import LocalS3

    server = LocalS3(str(tmp_path_factory.mktemp('seaweedfs'))).start()
    yield server
    server.stop()


def _clear_s3fs_cache():
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


S3_TEST_BUCKET = 'replk-test'


@pytest.fixture
def s3_prefix(s3_server, monkeypatch, request) -> str:
    """A fresh ``s3://replk-test/<test>`` prefix on the loopback server, AWS variables pointing at it.

    One bucket for the session: SeaweedFS gives every bucket its own volumes, and a
    default server runs out of them after a few buckets.
    """
    import re

    for name, value in s3_server.env().items():   # its per-run keys: it refuses anonymous requests
        monkeypatch.setenv(name, value)
    _clear_s3fs_cache()
    from shards import storage

    fs, _ = storage.filesystem(f's3://{S3_TEST_BUCKET}')
    if not fs.exists(S3_TEST_BUCKET):
        fs.mkdir(S3_TEST_BUCKET)
    name = re.sub(r'[^a-z0-9]+', '-', request.node.name.lower()).strip('-')
    yield f's3://{S3_TEST_BUCKET}/{name}'
    _clear_s3fs_cache()


DIST_VARS = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT', 'LOCAL_WORLD_SIZE')


@pytest.fixture(autouse=True)
def no_process_group_leaks():
    """A test that initialises torch.distributed in this process (a CLI's main run in-process) must not
    leave its process group or its MASTER_PORT to later tests and the processes they start."""
    before = {k: os.environ.get(k) for k in DIST_VARS}
    yield
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def fresh_lk_decisions(tmp_path_factory, monkeypatch):
    """Each test starts with no large-kernel decision made in this process, an empty decision cache,
    and ranks that decide alone (a CLI run in-process installs the process group's agreement)."""
    from pretrain.models import lk_choice
    monkeypatch.setenv('REPLK_CACHE_DIR', str(tmp_path_factory.mktemp('lk-cache')))
    lk_choice.forget_decisions()
    yield
    lk_choice.forget_decisions()
    lk_choice.set_agreement(None)


@pytest.fixture
def small_filesystem(tmp_path):
    """``mount(size)`` -> a real filesystem of that size (a tmpfs; mounting needs root, else the test
    is skipped), unmounted after the test: a full disk for real, not a mock."""
    mounted = []

    def mount(size: str) -> Path:
        disk = tmp_path / f'disk{len(mounted)}'
        disk.mkdir()
        if subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(disk)],
                          capture_output=True).returncode:
            pytest.skip('mounting a tmpfs needs root')
        mounted.append(disk)
        return disk
    yield mount
    for disk in mounted:
        subprocess.run(['umount', '-l', str(disk)])
