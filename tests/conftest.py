"""Shared fixtures for the three test tiers (DESIGN.md, "Tests").

- tests/unit: CPU, tiny models and data built by the tests themselves.
- tests/multiprocess: real processes (torchrun, the deepspeed launcher) on gloo.
- tests/gpu: marked ``gpu``; skipped where CUDA is absent.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA device')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


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
