"""Checkpoints: DeepSpeed's own save/load, per-rank data positions, and a commit marker written last.

``{dir}/ckpt/step-{N}/`` counts only once ``COMMITTED`` is in it; a write killed half-way
leaves an uncommitted folder that resume ignores (and the next save removes).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.distributed as dist

from shards.safe_files import check_checkpoint_folder, load_torch_file

log = logging.getLogger(__name__)
MARKER = 'COMMITTED'
STATE_VERSION = 2   # 2: RNG states as tensors and plain data (loadable without unpickling numpy)


def ckpt_root(run_dir: str) -> Path:
    return Path(run_dir) / 'ckpt'


def step_of(tag: str) -> int:
    return int(tag.split('-', 1)[1])


def committed_tags(run_dir: str) -> list:
    root = ckpt_root(run_dir)
    if not root.is_dir():
        return []
    tags = [p.name for p in root.iterdir() if p.name.startswith('step-') and (p / MARKER).is_file()]
    return sorted(tags, key=step_of)


def _write_json_atomic(path: Path, doc: dict) -> None:
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    with open(tmp, 'w') as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(engine, run_dir: str, step: int, rank: int, world_size: int, data_state: dict, keep: int,
         client_state: Optional[dict] = None, rank0_tensors: Optional[dict] = None) -> str:
    """Collective: every rank calls it. ``rank0_tensors``: extra state dicts rank 0 saves as
    ``{name}.pt`` beside DeepSpeed's files (e.g. the EMA weights). Returns the tag."""
    tag = f'step-{step}'
    root = ckpt_root(run_dir)
    try:
        engine.save_checkpoint(str(root), tag=tag, client_state=client_state or {}, save_latest=False)
        if rank == 0:
            for name, state in (rank0_tensors or {}).items():
                torch.save(state, root / tag / f'{name}.pt.tmp')
                os.replace(root / tag / f'{name}.pt.tmp', root / tag / f'{name}.pt')
        _write_json_atomic(root / tag / f'data_state_rank{rank}.json', data_state)
        rng_file = root / tag / f'rng_rank{rank}.pt'
        torch.save(rng_states(), rng_file.with_suffix('.tmp'))
        os.replace(rng_file.with_suffix('.tmp'), rng_file)
    except (OSError, RuntimeError) as exc:
        raise _write_failure(root, tag, exc) from exc
    dist.barrier()
    if rank == 0:
        _write_json_atomic(root / tag / MARKER, dict(version=STATE_VERSION, step=step, world_size=world_size,
                                                   time=time.time()))
        _prune(root, keep)
    dist.barrier()
    return tag


def _write_failure(root: Path, tag: str, exc: Exception) -> Exception:
    """A failed checkpoint write, said plainly: torch reports a full disk as
    ``[enforce fail at inline_container.cc] . unexpected pos``."""
    import errno
    import shutil
    full = getattr(exc, 'errno', None) == errno.ENOSPC or 'unexpected pos' in str(exc) or \
        'No space left' in str(exc)
    try:
        full = full or shutil.disk_usage(root).free < (1 << 20)
    except OSError:
        pass
    previous = [t for t in committed_tags(str(root.parent)) if t != tag]
    intact = (f'the previous checkpoint {previous[-1]} is intact (it resumes from there)' if previous
              else 'no earlier checkpoint exists')
    what = f'no space left on {root}' if full else f'{type(exc).__name__}: {exc}'
    return OSError(f'writing checkpoint {tag} failed: {what}; {intact}. Free space or move checkpoint.dir, '
                   'then relaunch')


def _prune(root: Path, keep: int) -> None:
    tags = sorted((p.name for p in root.iterdir() if p.name.startswith('step-')), key=step_of)
    committed = [t for t in tags if (root / t / MARKER).is_file()]
    newest = step_of(committed[-1]) if committed else -1
    for t in tags:
        stale_partial = not (root / t / MARKER).is_file() and step_of(t) < newest
        if t in committed[:-keep] or stale_partial:
            shutil.rmtree(root / t, ignore_errors=True)


def resume_tag(run_dir: str, mode: str) -> Optional[str]:
    tags = committed_tags(run_dir)
    if mode == 'never':
        if tags:
            log.warning('checkpoint.resume=never: starting fresh although %s holds %s', run_dir, tags[-1])
        return None
    if not tags and mode == 'must':
        raise FileNotFoundError(f'checkpoint.resume=must but {ckpt_root(run_dir)} holds no committed checkpoint')
    return tags[-1] if tags else None


def load(engine, run_dir: str, tag: str, rank: int, world_size: int) -> Tuple[dict, Optional[dict]]:
    """Restore the engine; returns (client state, this rank's data state).

    A checkpoint resumes at the world size that wrote it. Re-partitioning through DeepSpeed's
    universal checkpoints is not offered: ``ds_to_universal`` needs state our saves do not store."""
    folder = ckpt_root(run_dir) / tag
    marker = json.loads((folder / MARKER).read_text())
    if marker.get('version') != STATE_VERSION:
        raise ValueError(f'{folder}: checkpoint state version {marker.get("version")}, this code reads {STATE_VERSION}')
    if marker['world_size'] != world_size:
        raise ValueError(f'{folder} was written by world size {marker["world_size"]}, this run has {world_size}: '
                         f'resume with {marker["world_size"]} processes (re-partitioning a checkpoint is not '
                         'supported), or start a new run from its weights with init.checkpoint')
    check_checkpoint_folder(folder)  # DeepSpeed unpickles fully: only tensors, plain data, its own classes
    _, client_state = engine.load_checkpoint(str(ckpt_root(run_dir)), tag=tag)
    if client_state is None:
        raise RuntimeError(f'{folder}: DeepSpeed could not load the checkpoint')
    data_file = folder / f'data_state_rank{rank}.json'
    same_world = marker['world_size'] == world_size
    data_state = json.loads(data_file.read_text()) if same_world and data_file.is_file() else None
    if same_world and (folder / f'rng_rank{rank}.pt').is_file():
        set_rng_states(load_torch_file(folder / f'rng_rank{rank}.pt'))
    return client_state, data_state


def load_rank0_tensors(run_dir: str, tag: str, name: str) -> Optional[dict]:
    path = ckpt_root(run_dir) / tag / f'{name}.pt'
    return load_torch_file(path) if path.is_file() else None


def rng_states() -> dict:
    """Every RNG a training step draws from (drop path, mixup), to resume step for step."""
    import random

    import numpy as np
    # Tensors and plain data only, so that loading never needs to unpickle numpy objects.
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return dict(python=random.getstate(), numpy=(kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
                torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def set_rng_states(states: dict) -> None:
    import random

    import numpy as np
    random.setstate(states['python'])
    kind, keys, pos, has_gauss, gauss = states['numpy']
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states['torch'])
    if states.get('cuda') is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])
