"""Rank-0 metrics: a JSONL file always, TensorBoard when asked."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import torch


class MetricsWriter:
    def __init__(self, run_dir: str, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self._jsonl = self._tb = None
        if not enabled:
            return
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self._jsonl = open(Path(run_dir) / 'metrics.jsonl', 'a')
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(Path(run_dir) / 'tb'))

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
