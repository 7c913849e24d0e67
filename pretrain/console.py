"""What the trainer tells its user (rank 0): a start-up summary, a line per logging step,
evaluation and checkpoint lines. Pure formatting; ``pretrain/run.py`` decides when."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Dict, Optional

log = logging.getLogger('pretrain')
FORMAT = '%(asctime)s %(levelname)s %(message)s'


def setup_logging(rank: int) -> None:
    """Rank 0 talks (INFO from this project's modules); the other ranks and the libraries only warn,
    so every line appears once."""
    logging.basicConfig(level=logging.WARNING, format=FORMAT, stream=sys.stdout, force=True)
    for ours in ('pretrain', 'labeling', 'shards'):
        logging.getLogger(ours).setLevel(logging.INFO if rank == 0 else logging.WARNING)


def log_to_file(run_dir: str) -> None:
    """The console's lines also go to ``{run_dir}/train.log`` (with tracebacks of errors)."""
    handler = logging.FileHandler(Path(run_dir) / 'train.log')
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.getLogger().addHandler(handler)


def save_traceback() -> None:
    """The current exception's traceback, into the log files only (the console gets one line)."""
    import traceback
    text = traceback.format_exc()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.stream.write(text)
            handler.flush()


def startup_summary(cfg, world_size: int, params: int, steps_per_epoch: int, total_steps: int,
                    sources: Dict[str, tuple], resume: Optional[str], device: str = 'cpu') -> str:
    """``sources``: name -> (samples, labeled samples, mixing weight or None); ``device``: in words."""
    t = cfg.train
    lines = [f'model {cfg.model.name}: {params:,} parameters, heads '
             + ', '.join(f'{name} ({task.num_classes})' for name, task in cfg.tasks.items()),
             f'world size {world_size} on {device}; batch {t.micro_batch} per rank x {t.grad_accum} accumulation x {world_size} '
             f'ranks = {t.micro_batch * t.grad_accum * world_size} images per step; precision {t.precision}, '
             f'channels_last {cfg.model.channels_last}, sync_bn {cfg.model.sync_bn}',
             f'{steps_per_epoch} steps per epoch, {total_steps} steps in all']
    for name, (samples, labeled, weight) in sources.items():
        share = f'{100 * labeled / samples:.0f}%' if samples else '-'
        lines.append(f'source {name}: {samples} samples, {share} with a label, weight '
                     f'{"by size" if weight is None else weight}')
    lines.append(f'resuming from {resume}' if resume else 'starting fresh (no committed checkpoint)')
    return '\n'.join(lines)


def step_line(step: int, total: int, epoch: int, metrics: dict, images_per_s: float, data_wait: float,
              eta_s: float) -> str:
    losses = ' '.join(f'{k[5:]} {v:.4f}' for k, v in metrics.items() if k.startswith('loss/'))
    return (f'step {step}/{total} epoch {epoch} loss {metrics["loss"]:.4f} ({losses}) lr {metrics["lr"]:.3g} '
            f'{images_per_s:.1f} img/s data-wait {100 * data_wait:.0f}% eta {_duration(eta_s)} '
            f'skipped {metrics.get("skipped_steps", 0)}+{metrics.get("nonfinite_total", 0)}')


def eval_line(step: int, results: dict) -> str:
    parts = []
    for key, value in sorted(results.items()):
        if key.endswith('/top1'):
            prefix = key[:-len('/top1')]
            top5 = f' top-5 {results[prefix + "/top5"]:.4f}' if prefix + '/top5' in results else ''
            parts.append(f'{prefix} top-1 {value:.4f}{top5} ({results.get(prefix + "/images", 0)} images)')
    return f'eval at step {step}: ' + ('; '.join(parts) if parts else 'no labeled validation images')


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else f'{seconds // 60}m{seconds % 60:02d}s'
