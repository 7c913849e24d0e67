"""Rank-0 metrics: a JSONL file always, TensorBoard when asked."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

import torch


class MetricsWriter:
    def __init__(self, run_dir: str, enabled: bool, tensorboard: bool, resume_step: Optional[int] = None):
        """``resume_step``: the run resumes after this step; rows of later (replayed) steps are dropped."""
        self.enabled = enabled
        self._jsonl = self._tb = None
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

    def write(self, step: int, values: Dict[str, float]) -> None:
        if not self.enabled or not values:
            return
        self._jsonl.write(json.dumps(dict(step=step, **values)) + '\n')
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._tb:
            self._tb.close()


def materialize(metrics: Dict[str, object]) -> Dict[str, object]:
    """Device tensors -> numbers, with one host sync for all of them (logging steps only)."""
    keys = [k for k, v in metrics.items() if torch.is_tensor(v)]
    values = torch.stack([metrics[k].detach().float() for k in keys]).tolist() if keys else []
    return dict(metrics, **dict(zip(keys, values)))
