"""Preemption: a signal asks every rank to checkpoint at the next step and stop.

A cluster scheduler warns a job before it kills it (Slurm: SIGTERM, or the signal ``--signal``
names, 30-120 s ahead). The handler only records the request; the trainer hands it to the other
ranks inside the all-reduce every micro-step already makes, so all ranks agree on the same step
without any extra synchronization, write one checkpoint there, and the run exits with
``PREEMPTED_EXIT`` and one line saying how to resume.
"""
from __future__ import annotations

import logging
import signal
from typing import Optional, Sequence

from shards.common.errors import BadValue

log = logging.getLogger('pretrain')
PREEMPTED_EXIT = 75   # EX_TEMPFAIL: stopped on purpose, rerun the same command to continue


class Preempted(Exception):
    """Raised after the preemption checkpoint is written, to leave the training loop."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(f'preempted at step {step} ({signal_name}); checkpoint step-{step} written; '
                         'rerun the same command to resume')
        self.step = step


def signal_number(name: str) -> signal.Signals:
    """A preemption signal by name; only those DataLoader workers ignore (they leave stopping to
    their parent: ``shards.loader.STOP_SIGNALS``), else a signal to the whole job kills the workers."""
    from shards.loader import STOP_SIGNALS
    full = name if name.startswith('SIG') else f'SIG{name}'
    if full not in STOP_SIGNALS or full == 'SIGINT':
        raise BadValue(f'checkpoint.preempt_signals: {name!r} is not one of '
                         f'{[s for s in STOP_SIGNALS if s != "SIGINT"]} (SIGINT is Ctrl-C: it stops at once)')
    return signal.Signals[full]


class StopRequest:
    """Set by a signal handler in this process; read by the trainer once per micro-step."""

    def __init__(self):
        self.signal_name: Optional[str] = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def install(self, names: Sequence[str]) -> 'StopRequest':
        for name in names:
            signal.signal(signal_number(name), self._handle)
        return self

    def _handle(self, signum, frame) -> None:   # a handler only records: the loop acts at a step boundary
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            log.warning('%s received: writing a checkpoint at the next step, then stopping', self.signal_name)
