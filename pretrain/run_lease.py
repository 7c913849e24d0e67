"""One trainer per run folder: a lease that a second trainer is refused by, and that a dead one loses.

A Slurm requeue can start a job while its previous incarnation still runs (or still writes its
last checkpoint): two trainers on one ``checkpoint.dir`` would resume from each other's half-done
state and interleave ``metrics.jsonl``. Rank 0 takes ``{run}/LEASE`` by exclusive create
(first writer wins on local and shared disks, and on S3: ``storage.create_exclusive``), naming its
host and pid, and renews a heartbeat in it; a lease whose owner on this host is no longer running,
or whose heartbeat is older than ``checkpoint.lease_timeout_s`` (an owner on another host: a lost
node), belonged to a trainer that was killed and is taken over. Before each checkpoint the owner checks
that the lease is still its own.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Optional

from shards import storage
from shards.common.errors import ReplkError

log = logging.getLogger('pretrain')
LEASE_NAME = 'LEASE'


class LeaseHeld(ReplkError, ValueError):
    """Another live trainer owns the run folder."""


class RunLease:
    def __init__(self, run_dir: str, timeout_s: float):
        self.url = storage.join(run_dir, LEASE_NAME)
        self.timeout_s = timeout_s
        self.owner = dict(host=socket.gethostname(), pid=os.getpid(), started=time.time())
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _record(self) -> bytes:
        return json.dumps(dict(self.owner, heartbeat=time.time())).encode()

    def current(self) -> Optional[dict]:
        try:
            return json.loads(storage.read_bytes(self.url))
        except FileNotFoundError:
            return None
        except ValueError:   # a lease cut short by a full disk or a kill mid-write: no owner can be named
            return dict(host='?', pid='?', heartbeat=0.0)

    def take(self) -> 'RunLease':
        """Own the run folder, or raise ``LeaseHeld`` naming the live owner."""
        for _ in range(3):
            if storage.create_exclusive(self.url, self._record()):
                self._thread = threading.Thread(target=self._beat, name='run-lease', daemon=True)
                self._thread.start()
                return self
            held = self.current()
            if held is None:
                continue   # released between our create and our read
            age = time.time() - float(held.get('heartbeat', 0))
            if self._dead_here(held):
                log.warning('%s: taking over the lease of host %s pid %s, which is no longer running', self.url,
                            held.get('host'), held.get('pid'))
                storage.remove(self.url)
                continue
            if age < self.timeout_s:
                raise LeaseHeld(f'{self.url}: another trainer runs on this folder (host {held.get("host")}, pid '
                                f'{held.get("pid")}, heartbeat {age:.0f} s ago); stop it or use another '
                                f'checkpoint.dir (a dead one\'s lease is taken over after checkpoint.lease_timeout_s='
                                f'{self.timeout_s:g} s)')
            log.warning('%s: taking over the lease of host %s pid %s, silent for %.0f s (killed?)', self.url,
                        held.get('host'), held.get('pid'), age)
            storage.remove(self.url)
        raise LeaseHeld(f'{self.url}: could not take the lease (other trainers keep taking it)')

    def _dead_here(self, held: dict) -> bool:
        """An owner on this very host whose process is gone (kill -9, a crash): no need to wait for
        its heartbeat to go stale. Owners on other hosts can only be judged by their heartbeat."""
        if held.get('host') != self.owner['host'] or not isinstance(held.get('pid'), int):
            return False
        try:
            os.kill(held['pid'], 0)
        except ProcessLookupError:
            return True
        except PermissionError:   # alive, another user's
            return False
        return False

    def still_ours(self) -> bool:
        held = self.current()
        return held is not None and (held.get('host'), held.get('pid'), held.get('started')) == \
            (self.owner['host'], self.owner['pid'], self.owner['started'])

    def _beat(self) -> None:
        while not self._stop.wait(self.timeout_s / 5):
            try:
                if self.still_ours():
                    storage.write_bytes_atomic(self.url, self._record())
            except Exception as exc:  # noqa: BLE001  a full disk, a storage hiccup: the next beat tries again
                log.warning('%s: could not renew the lease (%s: %s)', self.url, type(exc).__name__, exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if self.still_ours():
                storage.remove(self.url)
        except (OSError, storage.StorageError) as exc:
            log.warning('%s: could not release the lease (%s); the next trainer takes it over after %g s',
                        self.url, exc, self.timeout_s)


def own_run_folder(run_dir: str, timeout_s: float) -> Optional[RunLease]:
    """Collective: rank 0 takes the lease (returned there; None elsewhere); every rank raises
    ``LeaseHeld`` when it is refused."""
    from .distributed import main_rank_decides
    taken = {}

    def take() -> Optional[str]:
        try:
            taken['lease'] = RunLease(run_dir, timeout_s).take()
            return None
        except LeaseHeld as exc:
            return str(exc)
    refused = main_rank_decides(take)
    if refused:
        raise LeaseHeld(refused)
    return taken.get('lease')


def check_still_owned(lease: Optional[RunLease]) -> None:
    """Collective, before a checkpoint: every rank stops if rank 0 lost the run folder."""
    from .distributed import main_rank_decides
    lost = main_rank_decides(lambda: None if lease is None or lease.still_ours()
                             else f'{lease.url}: held by {lease.current()}')
    if lost:
        raise LeaseHeld(f'this trainer lost the run folder ({lost}): its heartbeat stalled past '
                        'checkpoint.lease_timeout_s and another trainer took over; stopping without writing')
