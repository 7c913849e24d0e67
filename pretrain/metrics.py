"""Rank-0 metrics: a JSONL file always, TensorBoard when asked, and the trackers ``log`` names
(``pretrain/tracking.py``: W&B, MLflow)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Optional

import torch

log = logging.getLogger('pretrain')


class MetricsWriter:
    def __init__(self, run_dir: str, enabled: bool, tensorboard: bool, resume_step: Optional[int] = None,
                 log_cfg=None):
        """``resume_step``: the run resumes after this step; rows of later (replayed) steps are dropped.
        ``log_cfg``: the run's ``log`` section, whose ``wandb`` / ``mlflow`` open trackers."""
        self.enabled = enabled
        self._jsonl = self._tb = None
        self.trackers, self._tracking = [], None
        if not enabled:
            return
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        path = Path(run_dir) / 'metrics.jsonl'
        if path.is_file():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and resume_step is not None and json.loads(line)['step'] <= resume_step]
            path.write_text(''.join(line + '\n' for line in kept))
        self._jsonl = open(path, 'a')
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(Path(run_dir) / 'tb'), purge_step=purge)
        if log_cfg is not None:
            from .tracking import TrackingState, open_trackers
            self._tracking = TrackingState(run_dir)
            self.trackers = open_trackers(log_cfg, run_dir, self._tracking)
            self._warn_of_replay(resume_step)

    def describe_run(self, params: Dict[str, str], tags: Dict[str, str]) -> None:
        """The resolved config (parameters) and what the run trains on (tags) for every tracker."""
        for tracker in self.trackers:
            tracker.params(params)
            tracker.tags(tags)

    def write(self, step: int, values: Dict[str, float]) -> None:
        if not self.enabled or not values:
            return
        self._jsonl.write(json.dumps(dict(step=step, **values)) + '\n')
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
        if self.trackers:
            self._report(step, values)

    def _warn_of_replay(self, resume_step: Optional[int]) -> None:
        sent = {t.name: self._tracking.get(t.name).get('last_step', 0) for t in self.trackers}
        replayed = {name: last for name, last in sent.items() if resume_step is not None and last > resume_step}
        if replayed:
            log.warning('steps %d..%d were reported to %s before this resume; they are not reported again (a resume '
                        'repeats the run exactly; after a changed lr or schedule their new values are in '
                        'metrics.jsonl and TensorBoard only)', resume_step + 1, max(replayed.values()),
                        ', '.join(sorted(replayed)))

    def _report(self, step: int, values: Dict[str, float]) -> None:
        """Each tracker gets each (step, name) once: what it was sent before a crash is not sent again
        when the resume replays those steps (a step's evaluation row, if the crash came between the
        two rows, still is)."""
        from .tracking import scalars
        numbers = scalars(values)
        for tracker in self.trackers:
            entry = self._tracking.get(tracker.name)
            last, sent = entry.get('last_step', 0), set(entry.get('sent_at_last_step', []))
            new = numbers if step > last else {k: v for k, v in numbers.items() if k not in sent} if step == last else {}
            if new:
                tracker.log(step, new)
                entry['sent_at_last_step'] = sorted(new) if step > last else sorted(sent | set(new))
                entry['last_step'] = step
        self._tracking.save()

    def close(self, status: str = 'FINISHED') -> None:
        """``status``: FINISHED, FAILED or KILLED (preempted, interrupted): how the trackers' run ends."""
        if self._jsonl:
            self._jsonl.close()
        if self._tb:
            self._tb.close()
        for tracker in self.trackers:
            tracker.close(status)


def materialize(metrics: Dict[str, object]) -> Dict[str, object]:
    """Device tensors -> numbers, with one host sync for all of them (logging steps only)."""
    keys = [k for k, v in metrics.items() if torch.is_tensor(v)]
    values = torch.stack([metrics[k].detach().float() for k in keys]).tolist() if keys else []
    return dict(metrics, **dict(zip(keys, values)))
