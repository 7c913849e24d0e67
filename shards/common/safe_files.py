"""Files and names from outside are data: torch files load without running code, and names read
from storage (shard names, label-store stems, task names) never become paths unchecked.

Torch files are pickles; unpickling one can run any code it names. Every torch file this project
reads goes through :func:`load_torch_file` (``weights_only=True`` plus the few classes the known
containers hold) or, for checkpoints DeepSpeed itself unpickles, through
:func:`check_torch_file_globals` first. A file that names anything else is refused with its
name and the unexpected global; ``trust_pickle`` (``--trust-pickle``, ``init.trust_pickle``,
a teacher's ``"trust_pickle": true``) is the explicit opt-in for files the user trusts.
"""
from __future__ import annotations

import argparse
import json
import logging
import pickle
from pathlib import Path
from typing import Iterable, List

import torch

from .errors import BadValue, NotFound, ReplkError

log = logging.getLogger(__name__)

# The official RepLKNet training checkpoints ({'model', 'optimizer', 'epoch', 'scaler', 'args',
# 'model_ema'}) hold their command line as an argparse.Namespace; timm's train.py does the same.
CONTAINER_GLOBALS = (argparse.Namespace,)
# What DeepSpeed 0.19's ZeRO checkpoints pickle besides tensors and plain data (found with
# torch.serialization.get_unsafe_globals_in_checkpoint on stage 1-3 checkpoints of our runs).
DEEPSPEED_GLOBALS = frozenset({
    'deepspeed.runtime.fp16.loss_scaler.LossScaler',
    'deepspeed.runtime.zero.config.ZeroStageEnum',
    'deepspeed.utils.tensor_fragment.fragment_address',
})


class UnsafeFileError(ReplkError, pickle.UnpicklingError):
    """A torch file that names code this project does not load without the user's say-so."""


def _refusal(path, names: Iterable[str]) -> UnsafeFileError:
    return UnsafeFileError(
        f'{path}: refusing to unpickle it: it names {", ".join(sorted(names))}, which could run code on load. '
        'If you trust this file, opt in explicitly (--trust-pickle on the command line, init.trust_pickle '
        'in a run config, "trust_pickle": true for a teacher), or convert it to .safetensors')


def load_torch_file(path, trust_pickle: bool = False, map_location='cpu'):
    """``torch.load`` without code execution unless the user trusts the file."""
    if trust_pickle:
        log.warning('%s: unpickling with code execution allowed (trust_pickle)', path)
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(list(CONTAINER_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        allowed = {f'{c.__module__}.{c.__qualname__}' for c in CONTAINER_GLOBALS}
        raise _refusal(path, [n for n in names if n not in allowed] or [f'something unsafe ({exc})']) from None


def check_torch_file_globals(path, allowed: Iterable[str] = DEEPSPEED_GLOBALS) -> None:
    """Refuse a torch file naming a global outside torch's weights-only set and ``allowed``,
    before a library that unpickles it fully (DeepSpeed's checkpoint loader) sees it.

    Names alone do not make a file safe: a BUILD applied to an allowed class itself (not to an
    instance) would rewrite that class for the whole process (``LossScaler.loss_scale = 0.0``).
    So the file is also loaded once by torch's weights-only unpickler with ``allowed`` as its only
    extra classes, which refuses that; tensors are memory-mapped, not read."""
    unexpected = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))) - set(allowed)
    if unexpected:
        raise _refusal(path, unexpected)
    try:
        with torch.serialization.safe_globals(_classes(allowed)):
            try:
                torch.load(path, map_location='cpu', weights_only=True, mmap=True)
            except RuntimeError as exc:   # a legacy (non-zip) file, or a disk without mmap: read it
                if 'mmap' not in str(exc):
                    raise
                torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).split('\n')[0][:300]
        raise UnsafeFileError(f'{path}: refusing to unpickle it: torch\'s weights-only reader refuses it ({reason}). '
                              'If you trust this file, opt in explicitly (--trust-pickle, init.trust_pickle)') from None


def _classes(names: Iterable[str]) -> list:
    """The classes named ``module.Qualname`` (imported: they are the loading library's own)."""
    import importlib
    found = []
    for name in sorted(names):
        module, _, qualname = name.rpartition('.')
        found.append(getattr(importlib.import_module(module), qualname))
    return found


def check_checkpoint_folder(folder, trust_pickle: bool = False) -> List[Path]:
    """Every torch file under a DeepSpeed checkpoint folder, checked (see above)."""
    files = sorted(Path(folder).rglob('*.pt'))
    if not trust_pickle:
        for f in files:
            check_torch_file_globals(f)
    return files


def add_trust_pickle_argument(parser) -> None:
    """The command-line opt-in, worded the same in every command that reads torch files."""
    parser.add_argument('--trust-pickle', action='store_true',
                        help='unpickle torch files with code execution allowed: only for files you trust')


def check_name(name: str, what: str) -> str:
    """A name read from storage or a config, about to become part of a path: one plain segment."""
    if not isinstance(name, str) or not name or name in ('.', '..') or '\x00' in name:
        raise BadValue(f'{what} {name!r}: not a usable name')
    if '/' in name or '\\' in name or name.startswith('~') or Path(name).is_absolute():
        raise BadValue(f'{what} {name!r}: must be a plain name, not a path (no "/", "\\", "..", "~")')
    return name


def read_json(path: str, what: str):
    """A JSON file the user named (a config, a tasks file), or one line naming it and the fault."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise NotFound(f'{what} {path} not found') from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadValue(f'{what} {path}: not valid JSON ({exc})') from None
