"""Experiment trackers a run reports to, beside ``metrics.jsonl``: Weights & Biases and MLflow
(TensorBoard is ``metrics.MetricsWriter``'s own). Rank 0 only.

Each tracker gets every row the run writes to ``metrics.jsonl`` (what the console prints: loss
per task, lr, img/s, data-wait share, skipped steps, corrupt samples summed over ranks, evaluation
per task and source), the resolved config as the run's parameters, and tags naming what it trained
on (each source's shard index and each task's pinned label manifest, as digests). A resumed run
continues the same tracked run: its id is kept in ``{run dir}/tracking.json`` with the last step
reported, and the steps a resume replays (it repeats the uninterrupted run exactly) are not
reported twice. ``pretrain.export`` logs an export of the run as an artifact of that tracked run.
"""
from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Dict, List, Literal, Optional

from shards.common.config import section
from shards.common.errors import BadValue
from shards.common.local_files import replacing

log = logging.getLogger('pretrain')
STATE_FILE = 'tracking.json'
MLFLOW_PARAM_CHARS = 6000   # MLflow refuses longer parameter values


@section
class WandbConfig:
    project: str = 'replk-pretrain'
    """the W&B project the run reports to"""
    entity: Optional[str] = None
    """the W&B team or user (default: the API key's)"""
    mode: Literal['online', 'offline'] = 'online'
    """offline: files under {dir}/wandb only, uploaded later with `wandb sync` (clusters without internet)"""


@section
class MlflowConfig:
    tracking_uri: str = ''
    """the MLflow tracking server (http://host:5000) or a local store (sqlite:///file.db); required"""
    experiment: str = 'replk-pretrain'
    """the MLflow experiment the run is filed under (created when absent)"""


def _needs(package: str):
    try:
        return __import__(package)
    except ImportError:
        raise BadValue(f'log.{package} is set but {package} is not installed: pip install "replk-pretrain[tracking]" '
                       f'(or remove log.{package})') from None


def flat_params(config: dict, prefix: str = '') -> Dict[str, str]:
    """A nested config as ``section.field -> value`` strings (what trackers show as parameters)."""
    out = {}
    for key, value in config.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f'{name}.'))
        else:
            out[name] = json.dumps(value) if not isinstance(value, str) else value
    return out


class TrackingState:
    """``tracking.json``: per backend its run id and the last step reported to it."""

    def __init__(self, run_dir: str):
        self.path = Path(run_dir) / STATE_FILE
        self.doc: Dict[str, dict] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def get(self, backend: str) -> dict:
        return self.doc.setdefault(backend, {})

    def save(self) -> None:
        with replacing(str(self.path)) as f:
            f.write(json.dumps(self.doc, indent=1).encode())


class WandbTracker:
    name = 'wandb'

    def __init__(self, cfg: WandbConfig, run_dir: str, run_name: str, state: dict):
        wandb = _needs('wandb')
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, mode=cfg.mode, id=state.get('run_id'),
                              resume='allow', dir=run_dir, name=run_name, settings=wandb.Settings(console='off'))
        state['run_id'] = self.run.id
        self.wandb = wandb

    def params(self, params: Dict[str, str]) -> None:
        self.run.config.update(params, allow_val_change=True)   # a resume may change the lr: the newest wins

    def tags(self, tags: Dict[str, str]) -> None:
        self.run.summary.update({f'tag/{k}': v for k, v in tags.items()})
        self.run.tags = tuple(sorted(set(self.run.tags or ()) | {f'{k}={v}' for k, v in tags.items()}))

    def log(self, step: int, values: Dict[str, float]) -> None:
        self.run.log(values, step=step)

    def artifact(self, folder: str, name: str) -> None:
        art = self.wandb.Artifact(re.sub(r'[^A-Za-z0-9_.-]', '_', name), type='model')
        art.add_dir(folder)
        self.run.log_artifact(art)

    def close(self, status: str = 'FINISHED') -> None:
        self.run.finish(exit_code=0 if status == 'FINISHED' else 1)


class MlflowTracker:
    name = 'mlflow'

    def __init__(self, cfg: MlflowConfig, run_dir: str, run_name: str, state: dict):
        if not cfg.tracking_uri:
            raise BadValue('log.mlflow.tracking_uri is required (http://host:5000 or sqlite:///file.db)')
        _needs('mlflow')
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        try:
            self.client = MlflowClient(tracking_uri=cfg.tracking_uri)
        except MlflowException as exc:   # a store MLflow refuses (its plain-folder store is retired)
            raise BadValue(f'log.mlflow.tracking_uri={cfg.tracking_uri}: {exc.message}') from None
        if 'run_id' not in state:
            exp = self.client.get_experiment_by_name(cfg.experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(cfg.experiment)
            state['run_id'] = self.client.create_run(exp_id, run_name=run_name).info.run_id
        self.run_id = state['run_id']

    def params(self, params: Dict[str, str]) -> None:
        from mlflow.entities import Param
        logged = self.client.get_run(self.run_id).data.params   # MLflow refuses changing a parameter
        new = [Param(k, v[:MLFLOW_PARAM_CHARS]) for k, v in params.items() if k not in logged]
        changed = {k: v for k, v in params.items() if k in logged and logged[k] != v[:MLFLOW_PARAM_CHARS]}
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i:i + 100])
        for k, v in changed.items():   # a resume with a new lr: kept as a tag, the first value stays the param
            self.client.set_tag(self.run_id, f'resumed.{k}', v[:MLFLOW_PARAM_CHARS])

    def tags(self, tags: Dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)

    def log(self, step: int, values: Dict[str, float]) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def artifact(self, folder: str, name: str) -> None:
        self.client.log_artifacts(self.run_id, folder, artifact_path=name)

    def close(self, status: str = 'FINISHED') -> None:
        self.client.set_terminated(self.run_id, status=status)


def open_trackers(log_cfg, run_dir: str, state: TrackingState, only: Optional[List[str]] = None) -> List[object]:
    """The trackers ``log`` configures (or those of them in ``only``), each resuming the tracked run
    ``state`` names, if any."""
    name = Path(run_dir).name
    trackers = []
    for backend, cls in (('wandb', WandbTracker), ('mlflow', MlflowTracker)):
        cfg = getattr(log_cfg, backend, None)
        if cfg is not None and (only is None or backend in only):
            trackers.append(cls(cfg, run_dir, name, state.get(backend)))
    state.save()
    return trackers


def log_export(log_cfg, run_dir: str, folder: str) -> List[str]:
    """An export of the run as an artifact of each tracked run it reported to (``tracking.json``);
    returns the backends it went to. A backend the run never reported to is left alone."""
    state = TrackingState(run_dir)
    reported = [b for b in ('wandb', 'mlflow') if getattr(log_cfg, b, None) is not None and state.get(b).get('run_id')]
    if not reported:
        return []
    for tracker in open_trackers(log_cfg, run_dir, state, only=reported):
        tracker.artifact(folder, f'export-{Path(folder).name}')
        tracker.close()
    return reported


def scalars(values: Dict[str, object]) -> Dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
