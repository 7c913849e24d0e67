"""Semi-supervised multi-task pretraining with DeepSpeed ZeRO.

    deepspeed pretrain/run.py --config configs/xl_megadata.json
    torchrun --nproc_per_node 8 pretrain/run.py --config configs/xl_megadata.json
    python pretrain/run.py --config configs/tiny_cpu.json --set optim.lr=1e-3
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional

import torch

if __package__ in (None, ''):  # run as a script by a launcher: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labeling.tasks import TaskRegistry  # noqa: E402
from pretrain import checkpoint  # noqa: E402
from pretrain.config import RunConfig, check_launch, load_config, to_dict  # noqa: E402
from pretrain.config_migration import upgrade  # noqa: E402
from pretrain.console import eval_line, log_to_file, save_traceback, setup_logging, startup_summary, step_line  # noqa: E402
from pretrain.distributed import init_distributed, main_rank_decides, read_dist_env, tell_launcher  # noqa: E402
from pretrain.ds_config import check_deepspeed_keys  # noqa: E402
from pretrain.labels import check_labels_match_shards, check_store_tasks, human_label_maps, label_coverage, warn_unlabeled_sources  # noqa: E402
from pretrain.metrics import MetricsWriter, materialize  # noqa: E402
from pretrain.preemption import PREEMPTED_EXIT, Preempted, StopRequest, signal_number  # noqa: E402
from pretrain.resume_changes import check_resume_changes  # noqa: E402
from pretrain.run_lease import check_still_owned, own_run_folder  # noqa: E402
from pretrain.tracking import flat_params  # noqa: E402
from pretrain.weight_decay import check_groups_fit  # noqa: E402
from pretrain.weights import check_run_folder  # noqa: E402
from shards.common.errors import ReplkError  # noqa: E402
from shards.common.helpformat import HelpFormatter, command_name  # noqa: E402
from shards.stream import resolve_source  # noqa: E402

log = logging.getLogger('pretrain')




def parse_args(argv=None, doc: str = __doc__, module: str = 'pretrain.run') -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=command_name(module), description=doc, formatter_class=HelpFormatter)
    p.add_argument('--config', required=True, help='a run config (configs/*.json)')
    p.add_argument('--set', action='append', default=[], metavar='SECTION.FIELD=VALUE',
                   help='override a config value (JSON value; repeatable)')
    p.add_argument('--debug', action='store_true', help='show full tracebacks of user errors')
    # set by the deepspeed launcher
    p.add_argument('--local_rank', '--local-rank', type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


class Pace:
    """Images per second, the share of time spent waiting for data, and the time left."""

    def __init__(self, first_step: int, images_per_step: int):
        self.first_step, self.images_per_step = first_step, images_per_step
        self.start = self.mark = time.monotonic()
        self.waiting = 0.0

    def waited(self) -> None:
        now = time.monotonic()
        self.waiting += now - self.mark
        self.mark = now

    def computed(self) -> None:
        self.mark = time.monotonic()

    def report(self, step: int, total: int) -> dict:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        done = max(step - self.first_step, 1)
        return dict(images_per_s=done * self.images_per_step / elapsed, data_wait=self.waiting / elapsed,
                    eta_s=(total - step) * elapsed / done)


def resume(trainer, run_dir: str, tag: str) -> None:
    env = trainer.env
    marker = checkpoint.saved_marker(run_dir, tag)
    check_groups_fit(marker.get('param_group_sizes'), trainer.group_sizes, trainer.legacy_group_sizes,
                     marker.get('time', 0.0), tag)
    checkpoint.load(trainer.engine, run_dir, tag, env.rank, env.world_size, trainer.parts)
    trainer.apply_configured_optim()   # the checkpoint restored the lr and weight decay it was written with
    log.info('resumed from %s at step %d', tag, trainer.step)


def check_resume(cfg: RunConfig, run_dir: str, tag: Optional[str]) -> None:
    """A resume may change how the run is steered, never what it is (``resume_changes.py``)."""
    if tag is None:
        return
    saved = checkpoint.saved_config(run_dir, tag)
    if saved is None:
        log.warning('%s was written before checkpoints recorded their config: changed settings cannot be checked', tag)
        return
    for line in check_resume_changes(upgrade(saved, f'the config of {tag}'), to_dict(cfg), tag):
        log.info('resume: %s (takes effect from %s on)', line, tag)


def already_complete(trainer, run_dir: str, tag: Optional[str]) -> Optional[dict]:
    """The result of a run that already ran to its end: rerunning it changes nothing."""
    if tag is None or checkpoint.step_of(tag) < trainer.total_steps:
        return None
    result = Path(run_dir) / 'result.json'
    log.info('%s is already complete at %s (of %d steps); nothing to do (raise schedule.max_steps or schedule.epochs '
             'to train longer)', run_dir, tag, trainer.total_steps)
    return json.loads(result.read_text()) if result.is_file() else dict(step=checkpoint.step_of(tag))


def fit(trainer, cfg: RunConfig, run_dir: str, metrics: MetricsWriter, tag=None) -> dict:
    """The loop: steps until the schedule ends, checkpoints and evaluation on the way."""
    env = trainer.env
    if tag:
        resume(trainer, run_dir, tag)
    metrics.describe_run(flat_params(to_dict(cfg)), trained_on(trainer))   # after a resume: its label pin
    last, evaluated = {}, (None, None)
    pace = Pace(trainer.step, cfg.train.micro_batch * cfg.train.grad_accum * env.world_size)
    while trainer.step < trainer.total_steps:
        for batch in trainer.loader:
            pace.waited()
            before = trainer.step
            out = trainer.micro_step(batch)
            pace.computed()
            if out is None or trainer.step == before:
                continue  # skipped (non-finite), or inside gradient accumulation
            step = trainer.step
            last = out
            if step % cfg.log.every_steps == 0 or step == trainer.total_steps:
                last = materialize(out)  # the host sync of a logging step
                last['corrupt_samples'] = trainer.corrupt_samples_all_ranks()
                rates = pace.report(step, trainer.total_steps)
                log.info(step_line(step, trainer.total_steps, trainer.loader.epoch, last, **rates))
                metrics.write(step, dict(last, epoch=trainer.loader.epoch, **rates))
            if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and not trainer.stop_agreed:
                evaluated = (step, _evaluate(trainer, cfg, metrics, step))
            saved = step % cfg.checkpoint.every_steps == 0 or step == trainer.total_steps
            if saved:
                _save(trainer, cfg, run_dir)
            if trainer.stop_agreed and step < trainer.total_steps:   # every rank saw a preemption signal
                if not saved:
                    _save(trainer, cfg, run_dir)
                raise Preempted(step, trainer.stop_request.signal_name or 'a signal to another rank')
            pace.computed()  # evaluation and checkpoints are not data wait
            if step >= trainer.total_steps:
                break
    trainer.check_last_step()
    trainer.check_ranks_agree()
    final = evaluated[1] if evaluated[0] == trainer.step else _evaluate(trainer, cfg, metrics, trainer.step)
    return dict(materialize(last), **final, step=trainer.step)


def trained_on(trainer) -> dict:
    """Tags for the trackers: a digest of each source's shards (their index hashes) and of each task's
    pinned label manifest, so two runs on the same data show the same values."""
    tags = {f'shards/{src.name}': hashlib.sha256(''.join(src.sha256).encode()).hexdigest()[:16]
            for src in trainer.loader.dataset.sources}
    pinned = trainer.label_pin.pinned if trainer.label_pin is not None else {}
    tags.update({f'labels/{task}': str(p['digest']) for task, p in pinned.items()})
    return tags


def _evaluate(trainer, cfg: RunConfig, metrics: MetricsWriter, step: int) -> dict:
    results = trainer.evaluate_all(cfg.eval.max_batches)
    if cfg.data.val_sources:
        log.info(eval_line(step, results))
    metrics.write(step, results)
    return results


def _save(trainer, cfg: RunConfig, run_dir: str) -> None:
    check_still_owned(trainer.lease)  # never two writers, even when this trainer was thought dead
    trainer.sync_running_stats()  # one set of BN statistics in every rank's copy
    checkpoint.save(trainer.engine, run_dir, trainer.step, trainer.env.rank, trainer.env.world_size,
                    trainer.parts, cfg.checkpoint.keep, client_state=dict(config=to_dict(cfg)), config=to_dict(cfg),
                    group_sizes=trainer.group_sizes)
    log.info('checkpoint step-%d written to %s', trainer.step, checkpoint.ckpt_root(run_dir))


def main(argv=None, check=None, doc: str = __doc__, module: str = 'pretrain.run') -> dict:
    """``check``: an extra config check of the entry point (fine-tuning requires ``init``);
    ``doc`` and ``module``: the entry point's own help text and name."""
    args = parse_args(argv, doc, module)
    rank = read_dist_env(local_rank_arg=args.local_rank).rank
    setup_logging(rank)
    try:
        return train(args, check)
    except Preempted as stop:
        if rank == 0:
            print(str(stop), file=sys.stderr, flush=True)
        raise SystemExit(PREEMPTED_EXIT) from None
    except KeyboardInterrupt:
        if rank == 0:
            print('interrupted (Ctrl-C): stopped without a new checkpoint; rerun the same command to resume from '
                  'the last one (SIGTERM or SIGUSR1 checkpoints first)', file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except ReplkError as exc:   # the user's to fix: one line; the traceback in train.log only
        if args.debug:
            raise
        save_traceback()  # into train.log when the run folder exists
        tell_launcher(f'error: {exc}')
        if rank == 0:
            print(f'error: {exc}', file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except Exception:   # a bug: its traceback on the console (Python prints it) and in train.log
        save_traceback()
        raise


def train(args, check=None) -> dict:
    cfg = load_config(args.config, args.set)
    check_deepspeed_keys(cfg.deepspeed)
    if check is not None:
        check(cfg)
    for name in cfg.checkpoint.preempt_signals:   # a typo is an error before anything starts
        signal_number(name)
    env, device = init_distributed(args.local_rank)
    check_launch(cfg, env.world_size)
    # rank 0 reads the store and the index and says; a failure stops every rank with its own error
    coverage = main_rank_decides(lambda: startup_checks(cfg))
    lease = own_run_folder(cfg.checkpoint.dir, cfg.checkpoint.lease_timeout_s)   # one trainer per run folder
    try:
        return run_in_folder(cfg, env, device, coverage, lease)
    finally:
        if lease is not None:
            lease.release()


def startup_checks(cfg: RunConfig) -> dict:
    """The starting weights, the label store and the sources before the first step; returns the
    label coverage per source."""
    log.info('checking the run before its first step: starting weights, label store, %d sources',
             len(cfg.data.sources))
    if cfg.init is not None:
        check_run_folder(cfg.init.checkpoint, 'init.checkpoint', 'init.tag')
    check_store_tasks(cfg.data.label_store, cfg.tasks, cfg.data.tasks_file)
    resolved = [resolve_source(s, cfg.data.stream.retry) for s in cfg.data.sources]
    check_labels_match_shards(cfg.data.label_store, cfg.tasks, resolved, cfg.data.tasks_file)
    human_label_maps(cfg.tasks, resolved, TaskRegistry.from_json(cfg.data.tasks_file))   # class names agree
    return label_coverage(cfg.data.sources, list(cfg.tasks), cfg.data.label_store, cfg.data.tasks_file)


def run_in_folder(cfg: RunConfig, env, device, coverage: dict, lease) -> dict:
    run_dir = cfg.checkpoint.dir
    if env.is_main:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        log_to_file(run_dir)
    tag = checkpoint.resume_tag(run_dir, cfg.checkpoint.resume)
    check_resume(cfg, run_dir, tag)
    from pretrain.engine import Trainer
    trainer = Trainer(cfg, env, device)
    trainer.lease = lease
    done = already_complete(trainer, run_dir, tag)
    if done is not None:
        return done
    if env.is_main:   # what runs: written once the resume's changes are accepted
        (Path(run_dir) / 'config.json').write_text(json.dumps(to_dict(cfg), indent=2))
    trainer.stop_request = StopRequest().install(cfg.checkpoint.preempt_signals)
    if env.is_main:
        _announce(trainer, cfg, tag, coverage)
    metrics = MetricsWriter(run_dir, enabled=env.is_main, tensorboard=cfg.log.tensorboard,
                            resume_step=checkpoint.step_of(tag) if tag else None, log_cfg=cfg.log)
    try:
        result = fit(trainer, cfg, run_dir, metrics, tag)
    except BaseException as exc:   # the tracked run ends as the process does: stopped to resume, or failed
        metrics.close('KILLED' if isinstance(exc, (Preempted, KeyboardInterrupt)) else 'FAILED')
        raise
    metrics.close()
    if env.is_main:
        (Path(run_dir) / 'result.json').write_text(json.dumps(result, indent=2))
        print(json.dumps(result), flush=True)
    return result


def _announce(trainer, cfg: RunConfig, tag, coverage: dict) -> None:
    warn_unlabeled_sources(coverage, log)
    sources = {s.name: (coverage[s.name][1], coverage[s.name][0], s.weight) for s in cfg.data.sources}
    params = sum(p.numel() for p in trainer.engine.module.parameters())
    device = trainer.device
    described = f'{device.type} ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else device.type
    log.info(startup_summary(cfg, trainer.env.world_size, params, trainer.steps_per_epoch, trainer.total_steps,
                             sources, tag, described))


if __name__ == '__main__':
    main()
