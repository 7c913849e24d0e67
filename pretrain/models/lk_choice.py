"""Which implementation runs a large-kernel layer, decided by measurement (like ``cudnn.benchmark``).

At a layer shape's first call in a process (dtype, memory format, channels, kernel, map size: see
:class:`~pretrain.models.lk_measure.LayerShape`; card), :func:`choose` times each allowed
candidate's forward + input gradient + weight gradient at that call's batch and keeps the fastest.
The times are kept on disk, one file per card and torch/triton version
(``$REPLK_CACHE_DIR/lk_conv/``, else ``$XDG_CACHE_HOME/replk/lk_conv/``, else
``~/.cache/replk/lk_conv/``), so a card pays the measurement once, not once per process; Triton's
own autotuning results are cached by Triton (``cache_results``, under ``~/.triton``). A file written
by another torch or triton version is not read (the kernels and cuDNN may have changed).

Order of authority: the shipped override table ``lk_conv_measured.json`` (a card/dtype/shape listed
there is taken as written), then the cache, then a measurement (CUDA only: under Triton's CPU
interpreter nothing is measured, the cache alone decides — that is how the tests and the GPU
check's dry run drive the Triton path on a "simulated card").

Ranks must run the same algorithm. The model library does not touch ``torch.distributed``; the
trainer installs an *agreement* (:func:`set_agreement`): a function that runs the decision on the
main rank and hands its result to every rank. It is called at a shape's first forward, which every
rank reaches together (training forwards are collective; evaluation keeps ranks in lockstep).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from shards.common.errors import BadValue
from shards.common.local_files import replacing

from .lk_measure import TRITON_ALGORITHMS, LayerShape, candidates_for

log = logging.getLogger(__name__)
CACHE_ENV = 'REPLK_CACHE_DIR'
CACHE_FORMAT = 1
INTERPRETER_CARD = 'cpu (Triton interpreter)'
TABLE_NAME = 'lk_conv_measured.json'
EVERY_CANDIDATE = ('cudnn',) + TRITON_ALGORITHMS
MEASURE_REPS = 5
Measure = Callable[[str, LayerShape, int], Dict[str, float]]   # (candidate, shape, batch) -> pass times
Agreement = Callable[[Callable[[], 'Decision']], 'Decision']


@dataclass
class Decision:
    algorithm: str                       # 'cudnn' | 'direct' | 'toeplitz'
    source: str                          # 'table' | 'cache' | 'measured' | 'unmeasured'
    times_ms: Dict[str, float] = field(default_factory=dict)   # candidate -> fwd+dgrad+wgrad ms
    batch: int = 0                       # the batch the times were taken at
    tiles: Dict[str, str] = field(default_factory=dict)        # autotuned tiles of the direct kernels


# --- the cache file -----------------------------------------------------------------------------

def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / 'lk_conv'
    base = os.environ.get('XDG_CACHE_HOME') or str(Path.home() / '.cache')
    return Path(base) / 'replk' / 'lk_conv'


def versions() -> Dict[str, str]:
    from . import lk_conv
    return dict(torch=torch.__version__, triton=getattr(lk_conv.triton, '__version__', 'none'))


def cache_file(card: str) -> Path:
    v = versions()
    slug = re.sub(r'[^A-Za-z0-9.]+', '-', card).strip('-')
    return cache_dir() / f'{slug}--torch-{v["torch"]}--triton-{v["triton"]}.json'.replace('+', '_')


def load_cache(card: str) -> Dict[str, dict]:
    """{shape key: entry} for this card and these versions; an unreadable or stale file counts as empty."""
    path = cache_file(card)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning('lk_impl: the decision cache %s is unreadable (%s); measuring again', path, exc)
        return {}
    expected = dict(format=CACHE_FORMAT, card=card, **versions())
    found = {k: data.get(k) for k in expected}
    if found != expected:
        log.warning('lk_impl: the decision cache %s was written for %s, not %s; measuring again', path, found, expected)
        return {}
    return dict(data.get('shapes', {}))


def save_entry(card: str, shape: LayerShape, times_ms: Dict[str, float], batch: int, tiles: Dict[str, str],
               replace: bool = False) -> Path:
    """Merge one shape's times (taken at ``batch``) into the card's cache file, or ``replace`` its
    entry (atomic replace; a write that fails, e.g. a read-only home, is logged and the run goes on
    with the decision in memory)."""
    path = cache_file(card)
    shapes = load_cache(card)
    entry = {} if replace else dict(shapes.get(shape.key(), {}))
    entry['times_ms'] = dict(entry.get('times_ms', {}), **times_ms)
    entry.update(batch=batch, tiles=dict(entry.get('tiles', {}), **tiles))
    shapes[shape.key()] = entry
    data = dict(format=CACHE_FORMAT, card=card, **versions(), shapes=dict(sorted(shapes.items())))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(str(path)) as f:
            f.write(json.dumps(data, indent=1).encode())
    except OSError as exc:
        log.warning('lk_impl: could not write the decision cache %s (%s); set %s to a writable folder',
                    path, exc, CACHE_ENV)
    return path


# --- the override table -------------------------------------------------------------------------

TABLE_FORMAT = 2
MEASURED_TABLE = Path(__file__).with_name(TABLE_NAME)


def shape_key(channels: int, kernel: int, height: int, width: int) -> str:
    return f'{channels},{kernel},{height},{width}'


@functools.lru_cache(maxsize=None)
def measured_faster(device_name: str, dtype: str) -> Dict[str, str]:
    """The override table's shapes ("channels,kernel,height,width") on this card -> the algorithm to run."""
    if not MEASURED_TABLE.exists():
        return {}
    table = json.loads(MEASURED_TABLE.read_text())
    if table.get('format') != TABLE_FORMAT:
        raise BadValue(f'{MEASURED_TABLE}: format {table.get("format")!r} is not {TABLE_FORMAT}; '
                         'rerun bench/lk_conv.py --write-table')
    return dict(table.get('devices', {}).get(device_name, {}).get(dtype, {}))


def table_override(card: str, shape: LayerShape) -> Optional[str]:
    """The algorithm the override table names for this card and shape, or None."""
    return measured_faster(card, shape.dtype).get(shape_key(shape.channels, shape.kernel, shape.height, shape.width))


# --- deciding -------------------------------------------------------------------------------------

def fastest(times_ms: Dict[str, float], allowed: Sequence[str]) -> str:
    return min((c for c in allowed if c in times_ms), key=lambda c: times_ms[c])


def decide(card: str, shape: LayerShape, allowed: Sequence[str], batch: int,
           measure: Optional[Measure], table: Optional[str] = None) -> Decision:
    """The decision for one shape on this card: the override table's, else the cache's, else (when
    ``measure`` is given) measured now and written to the cache; else the first allowed candidate."""
    if table is not None and table in allowed:
        return Decision(table, 'table')
    entry = load_cache(card).get(shape.key(), {})
    times = dict(entry.get('times_ms', {}))
    missing = [c for c in allowed if c not in times]
    batch = max(1, batch)
    if missing and measure is not None and entry.get('batch', batch) != batch:
        missing, times, entry = list(allowed), {}, {}   # times are compared at one batch only: measure all again
    if missing and measure is not None:
        fresh = {c: measure(c, shape, batch)['total'] for c in missing}
        from .lk_measure import autotuned_tiles
        tiles = autotuned_tiles() if 'direct' in fresh else {}   # the direct kernels' last launch: this shape
        save_entry(card, shape, fresh, batch, tiles, replace=not entry)
        times.update(fresh)
        return Decision(fastest(times, allowed), 'measured', {c: times[c] for c in allowed}, batch,
                        dict(entry.get('tiles', {}), **tiles))
    known = [c for c in allowed if c in times]
    if known:
        return Decision(fastest(times, known), 'cache', {c: times[c] for c in known}, entry.get('batch', 0),
                        entry.get('tiles', {}))
    return Decision(allowed[0], 'unmeasured')


def can_measure(device: torch.device) -> bool:
    """Timings mean something on a GPU only (the interpreter is a test tool, seconds per call)."""
    return device.type == 'cuda'


def measure_on(device: torch.device) -> Measure:
    """A measurement on this device: fresh random tensors of the layer's shape at the call's batch."""
    def measure(candidate: str, shape: LayerShape, batch: int) -> Dict[str, float]:
        from .lk_measure import layer_tensors, time_passes
        # Called from inside a training forward: no graph, no autocast (the tensors carry the dtype).
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            return time_passes(candidate, *layer_tensors(shape, batch, device), reps=MEASURE_REPS)
    return measure


def local_agreement(decide_here: Callable[[], Decision]) -> Decision:
    return decide_here()


_agreement: Agreement = local_agreement
_decided: Dict[Tuple[str, str, Tuple[str, ...]], Decision] = {}


def set_agreement(agreement: Optional[Agreement]) -> None:
    """How ranks agree on a decision (None: each process decides alone, the default)."""
    global _agreement
    _agreement = agreement or local_agreement


def decisions() -> Dict[str, str]:
    """{shape key: algorithm} of every decision this process made (for reports and tests)."""
    return {key: d.algorithm for (_, key, _), d in _decided.items()}


def forget_decisions() -> None:
    _decided.clear()
    _per_call.clear()


_per_call: Dict[tuple, object] = {}   # what a forward call needs, by what it can see cheaply


def remembered(key: tuple, compute: Callable[[], object]):
    """``compute()`` once per process for ``key`` (device, dtype, shape...): every forward of every
    large-kernel layer asks, so the answer must cost a dict lookup, not a device query."""
    if key not in _per_call:
        _per_call[key] = compute()
    return _per_call[key]


def card_identity(device: torch.device) -> Optional[str]:
    """The card a decision belongs to: the CUDA device's name, the interpreter's pseudo-card on a CPU
    where the Triton kernels are interpreted, else None (nothing to decide: nn.Conv2d runs)."""
    from . import lk_conv
    if not lk_conv.triton_supported(device):   # no Triton here (or a CPU without the interpreter)
        return None
    return torch.cuda.get_device_name(device) if device.type == 'cuda' else INTERPRETER_CARD


@torch.compiler.disable   # a decision is host code (files, timing, a collective), not part of a graph
def choose(x: torch.Tensor, kernel: int, dtype: torch.dtype, allowed: Sequence[str]) -> Decision:
    """The decision for this call's layer shape (made once per process and shape)."""
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    return remembered(('choose', x.device, dtype, tuple(x.shape[1:]), channels_last, kernel, tuple(allowed)),
                      lambda: _choose(x, kernel, dtype, allowed))


def _choose(x: torch.Tensor, kernel: int, dtype: torch.dtype, allowed: Sequence[str]) -> Decision:
    card = card_identity(x.device)
    shape = LayerShape.of(x, kernel, dtype)
    allowed = tuple(c for c in allowed if c in candidates_for(shape))
    memo = (card or str(x.device), shape.key(), allowed)
    if memo in _decided:
        return _decided[memo]
    if card is None:
        decision = Decision(allowed[0], 'unmeasured')
    else:
        measure = measure_on(x.device) if can_measure(x.device) else None
        table = table_override(card, shape)
        decision = _agreement(functools.partial(decide, card, shape, allowed, x.shape[0], measure, table))
    _decided[memo] = decision
    log_decision(card, shape, decision)
    return decision


def log_decision(card: Optional[str], shape: LayerShape, d: Decision) -> None:
    name = 'nn.Conv2d (cuDNN)' if d.algorithm == 'cudnn' else f"Triton '{d.algorithm}'"
    times = ', '.join(f'{c} {t:.3f} ms' for c, t in sorted(d.times_ms.items(), key=lambda kv: kv[1]))
    why = {'table': f'listed in {TABLE_NAME}',
           'cache': f'from the decision cache ({times}; fwd+dgrad+wgrad at batch {d.batch})',
           'measured': f'measured now ({times}; fwd+dgrad+wgrad at batch {d.batch}; cached in {cache_dir()})',
           'unmeasured': 'nothing measured here'}[d.source]
    log.info("lk_impl: %s for the %s on %s: %s", name, shape.describe(), card or 'this device', why)

