"""Checkpoints: DeepSpeed's own save/load, the registered parts (``train_state``), and a commit marker written last.

``{dir}/ckpt/step-{N}/`` counts only once ``COMMITTED`` is in it; a write killed half-way
leaves an uncommitted folder that resume ignores (and the next save removes).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from shards.common.errors import BadValue, NotFound, ReplkError
from shards.common.local_files import replacing
from shards.common.safe_files import check_checkpoint_folder, load_torch_file

from .train_state import Part

log = logging.getLogger(__name__)
MARKER = 'COMMITTED'
STATE_VERSION = 3   # 3: registered parts, listed in the marker, each file versioned


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
    with replacing(str(path), hidden=True) as f:   # hidden until renamed
        f.write(json.dumps(doc).encode())


def save(engine, run_dir: str, step: int, rank: int, world_size: int, parts: Dict[str, Part], keep: int,
         client_state: Optional[dict] = None, config: Optional[dict] = None,
         group_sizes: Optional[List[int]] = None) -> str:
    """Collective: every rank calls it. DeepSpeed writes the model, optimizer and scheduler; each
    registered part is written as ``{name}_rank{r}.pt`` (per rank) or ``{name}.pt`` (rank 0).
    The marker, written last, lists the parts and holds the run's resolved ``config`` and its
    optimizer's ``group_sizes`` (what a resume compares its own with). Returns the tag."""
    tag = f'step-{step}'
    root = ckpt_root(run_dir)

    def write_parts():
        engine.save_checkpoint(str(root), tag=tag, client_state=client_state or {}, save_latest=False)
        for name, part in parts.items():
            if part.per_rank or rank == 0:
                _save_atomic(dict(version=part.obj.state_version, state=part.obj.state_dict()),
                             root / tag / part.file_name(name, rank))

    def write_marker():
        if rank == 0:
            listed = {name: dict(per_rank=part.per_rank, version=part.obj.state_version) for name, part in parts.items()}
            _write_json_atomic(root / tag / MARKER, dict(version=STATE_VERSION, step=step, world_size=world_size,
                                                       parts=listed, time=time.time(), config=config,
                                                       param_group_sizes=group_sizes))
            _prune(root, keep)
    _check_room(engine, root, tag)
    for phase in (write_parts, write_marker):
        _on_every_rank(phase, root, tag)
    return tag


def _check_room(engine, root: Path, tag: str) -> None:
    """Refuse a save the disk cannot hold, on every rank, before any rank starts writing: DeepSpeed's
    own save is collective, and a rank that fails inside it would leave the others waiting there."""
    need = _expected_bytes(engine, root)
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if _any_rank(free < need):
        previous = committed_tags(str(root.parent))
        intact = f'the previous checkpoint {previous[-1]} is intact' if previous else 'no earlier checkpoint exists'
        raise CheckpointWriteError(f'writing checkpoint {tag} failed: no space left on {root} (about {need >> 20} MB '
                                   f'needed, {free >> 20} MB free on some rank); {intact}. Free space or move '
                                   'checkpoint.dir, then relaunch')


def _expected_bytes(engine, root: Path) -> int:
    """What a checkpoint takes: the newest committed one's size, else the fp32 weights and two
    optimizer moments (with room to spare either way)."""
    previous = committed_tags(str(root.parent))
    if previous:
        folder = root / previous[-1]
        return int(1.2 * sum(f.stat().st_size for f in folder.rglob('*') if f.is_file()))
    module = getattr(engine, 'module', None)
    params = sum(p.numel() for p in module.parameters()) if module is not None else 0
    return int(1.2 * 12 * params)


def _on_every_rank(phase, root: Path, tag: str) -> None:
    """Run one phase of a save; if it failed on any rank, every rank raises (none waits forever at
    the next barrier for a rank that gave up)."""
    failure = None
    try:
        phase()
    except (OSError, RuntimeError) as exc:
        failure = _write_failure(root, tag, exc)
        failure.__cause__ = exc
    if _any_rank(failure is not None):
        raise failure or CheckpointWriteError(f'writing checkpoint {tag} failed on another rank (its error is in its '
                                              'log); the previous checkpoint is intact')


def _any_rank(flag: bool) -> bool:
    """Whether ``flag`` is set on any rank (a barrier too)."""
    if not dist.is_initialized():
        return flag
    device = torch.device('cuda', torch.cuda.current_device()) if dist.get_backend() == 'nccl' else torch.device('cpu')
    mine = torch.tensor([float(flag)], device=device)
    dist.all_reduce(mine, op=dist.ReduceOp.MAX)
    return bool(mine.item())


def _save_atomic(obj, path: Path) -> None:
    with replacing(str(path), hidden=True) as f:
        torch.save(obj, f)


class CheckpointWriteError(ReplkError, OSError):
    """A checkpoint could not be written (a full disk, a lost mount): what the user must fix, said in one line."""


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
    return CheckpointWriteError(f'writing checkpoint {tag} failed: {what}; {intact}. Free space or move checkpoint.dir, '
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
        raise NotFound(f'checkpoint.resume=must but {ckpt_root(run_dir)} holds no committed checkpoint')
    return tags[-1] if tags else None


def load(engine, run_dir: str, tag: str, rank: int, world_size: int, parts: Dict[str, Part]) -> dict:
    """Restore the engine and every registered part; returns DeepSpeed's client state.

    The parts registered now and the parts the checkpoint holds must be the same set: a part
    the checkpoint lacks, or holds but this run does not register, is an error naming it.
    A checkpoint resumes at the world size that wrote it (the only resume path): the ZeRO
    optimizer partitions and the per-rank data cursors belong to that world size, and
    re-partitioning through DeepSpeed's universal checkpoints needs state our saves do not store."""
    folder = ckpt_root(run_dir) / tag
    marker = _read_marker(folder, world_size)
    saved = marker['parts']
    newer = {n for n in set(parts) - set(saved) if getattr(parts[n].obj, 'optional_in_older_checkpoints', False)}
    if set(saved) != set(parts) - newer:
        raise BadValue(f'{folder} holds the parts {sorted(saved)}, this run registers {sorted(parts)} '
                         f'(missing: {sorted(set(parts) - set(saved))}, not registered: '
                         f'{sorted(set(saved) - set(parts))}): resume with the configuration that wrote it '
                         '(e.g. train.ema_decay), or start a new run from its weights with init.checkpoint')
    check_checkpoint_folder(folder)  # DeepSpeed unpickles fully: only tensors, plain data, its own classes
    _, client_state = engine.load_checkpoint(str(ckpt_root(run_dir)), tag=tag)
    if client_state is None:
        raise RuntimeError(f'{folder}: DeepSpeed could not load the checkpoint')
    for name, part in parts.items():
        if name in newer:   # state this code added since the checkpoint was written, and that can start afresh
            part.obj.on_missing(tag)
            continue
        part.obj.load_state_dict(_read_part(folder, name, part.file_name(name, rank), part.obj.state_version))
    return client_state


def saved_config(run_dir: str, tag: str) -> Optional[dict]:
    """The resolved config a committed checkpoint was written with (None: written before markers held it)."""
    return saved_marker(run_dir, tag).get('config')


def saved_marker(run_dir: str, tag: str) -> dict:
    """A committed checkpoint's marker: its parts, time, config and optimizer group sizes (the
    last two absent from checkpoints written before markers held them)."""
    return json.loads((ckpt_root(run_dir) / tag / MARKER).read_text())


def _read_marker(folder: Path, world_size: int) -> dict:
    marker = json.loads((folder / MARKER).read_text())
    if marker.get('version') != STATE_VERSION:
        raise BadValue(f'{folder}: checkpoint state version {marker.get("version")}, this code reads {STATE_VERSION}')
    if marker['world_size'] != world_size:
        raise BadValue(f'{folder} was written by world size {marker["world_size"]}, this run has {world_size}: '
                         f'resume with {marker["world_size"]} processes (re-partitioning a checkpoint is not '
                         'supported), or start a new run from its weights with init.checkpoint')
    return marker


def _read_part(folder: Path, name: str, file_name: str, version: int):
    path = folder / file_name
    if not path.is_file():
        raise NotFound(f'{path}: the checkpoint lists the part {name!r} but its file is missing')
    doc = load_torch_file(path)
    if doc.get('version') != version:
        raise BadValue(f'{path}: {name} state version {doc.get("version")!r}, this code reads {version}')
    return doc['state']


def load_part(run_dir: str, tag: str, name: str, version: int = 1) -> Optional[dict]:
    """One replicated part (e.g. ``'ema'``) of a committed checkpoint, or None if it has none;
    for readers outside training (export, starting weights)."""
    folder = ckpt_root(run_dir) / tag
    if not (folder / f'{name}.pt').is_file():
        return None
    return _read_part(folder, name, f'{name}.pt', version)
