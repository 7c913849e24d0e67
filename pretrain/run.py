"""Semi-supervised multi-task pretraining with DeepSpeed ZeRO.

    deepspeed pretrain/run.py --config configs/xl_megadata.json
    torchrun --nproc_per_node 8 pretrain/run.py --config configs/xl_megadata.json
    python pretrain/run.py --config configs/tiny_cpu.json --set optim.lr=1e-3
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ''):  # run as a script by a launcher: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain import checkpoint  # noqa: E402
from pretrain.config import RunConfig, check_launch, load_config, to_dict  # noqa: E402
from pretrain.distributed import init_distributed  # noqa: E402
from pretrain.labels import check_store_tasks, label_coverage, warn_unlabeled_sources  # noqa: E402
from shards.stream import SourceSpec  # noqa: E402
from pretrain.metrics import MetricsWriter, materialize  # noqa: E402

log = logging.getLogger('pretrain')


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', required=True)
    p.add_argument('--set', action='append', default=[], metavar='SECTION.FIELD=VALUE',
                   help='override a config value (JSON value; repeatable)')
    p.add_argument('--local_rank', '--local-rank', type=int, default=None, help='set by the deepspeed launcher')
    return p.parse_args(argv)


def fit(trainer, cfg: RunConfig, run_dir: str, metrics: MetricsWriter) -> dict:
    """The loop: steps until the schedule ends, checkpoints and evaluation on the way."""
    env = trainer.env
    tag = checkpoint.resume_tag(run_dir, cfg.checkpoint.resume)
    if tag:
        client, data_state = checkpoint.load(trainer.engine, run_dir, tag, env.rank, env.world_size,
                                             cfg.checkpoint.universal)
        if trainer.ema is not None:
            ema = checkpoint.load_rank0_tensors(run_dir, tag, 'ema')
            if ema is None:
                raise FileNotFoundError(f'{run_dir}/ckpt/{tag} has no EMA weights but train.ema_decay is set')
            trainer.ema.module.load_state_dict(ema)
        if data_state is not None:
            trainer.loader.load_state_dict(data_state)
        else:  # re-partitioned: continue from the next epoch boundary
            trainer.loader.dataset.epoch = client['epoch'] + 1
        log.info('resumed from %s at step %d', tag, trainer.step)
    last = {}
    start = time.monotonic()
    while trainer.step < trainer.total_steps:
        for batch in trainer.loader:
            before = trainer.step
            out = trainer.micro_step(batch)
            if out is None or trainer.step == before:
                continue  # skipped (non-finite), or inside gradient accumulation
            step = trainer.step
            last = out
            if step % cfg.log.every_steps == 0 or step == trainer.total_steps:
                last = materialize(out)  # the host sync of a logging step
                metrics.write(step, dict(last, epoch=trainer.loader.epoch,
                                         images_per_s=_rate(step, cfg, env, start)))
            if cfg.eval.every_steps and step % cfg.eval.every_steps == 0:
                metrics.write(step, trainer.evaluate_all(cfg.eval.max_batches))
            if step % cfg.checkpoint.every_steps == 0 or step == trainer.total_steps:
                _save(trainer, cfg, run_dir)
            if step >= trainer.total_steps:
                break
    trainer.check_last_step()
    final = trainer.evaluate_all(cfg.eval.max_batches)
    metrics.write(trainer.step, final)
    return dict(materialize(last), **final, step=trainer.step)


def _rate(step: int, cfg: RunConfig, env, start: float) -> float:
    return step * cfg.train.micro_batch * cfg.train.grad_accum * env.world_size / max(time.monotonic() - start, 1e-9)


def _save(trainer, cfg: RunConfig, run_dir: str) -> None:
    loader = trainer.loader
    trainer.sync_running_stats()  # one set of BN statistics in every rank's copy
    checkpoint.save(trainer.engine, run_dir, trainer.step, trainer.env.rank, trainer.env.world_size,
                    loader.state_dict(), cfg.checkpoint.keep,
                    client_state=dict(epoch=loader.epoch, config=to_dict(cfg)),
                    rank0_tensors={'ema': trainer.ema.module.state_dict()} if trainer.ema is not None else None)


def main(argv=None, check=None) -> dict:
    """``check``: an extra config check of the entry point (fine-tuning requires ``init``)."""
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(levelname)s: %(message)s')
    args = parse_args(argv)
    cfg = load_config(args.config, args.set)
    if check is not None:
        check(cfg)
    env, device = init_distributed(args.local_rank)
    check_launch(cfg, env.world_size)
    check_store_tasks(cfg.data.label_store, cfg.tasks, cfg.data.tasks_file)
    if env.is_main:
        warn_unlabeled_sources(label_coverage([SourceSpec(s.name, s.url) for s in cfg.data.sources], list(cfg.tasks),
                                              cfg.data.label_store, cfg.data.tasks_file), log)
    run_dir = cfg.checkpoint.dir
    if env.is_main:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / 'config.json').write_text(json.dumps(to_dict(cfg), indent=2))
    from pretrain.engine import Trainer
    trainer = Trainer(cfg, env, device)
    metrics = MetricsWriter(run_dir, enabled=env.is_main, tensorboard=cfg.log.tensorboard)
    try:
        result = fit(trainer, cfg, run_dir, metrics)
    finally:
        metrics.close()
    if env.is_main:
        (Path(run_dir) / 'result.json').write_text(json.dumps(result, indent=2))
        print(json.dumps(result), flush=True)
    return result


if __name__ == '__main__':
    main()
