"""``python -m labeling run|import-human|commit|validate|report`` (also ``replk-label``)."""
from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from shards import storage
from shards.common.errors import ReplkError
from shards.common.helpformat import HelpFormatter, command_name
from shards.common.launcher import gpu_index, read_dist_env

from .store import LabelStore
from .tasks import TaskRegistry


def _run(args) -> int:
    from .config import load_job_config
    from .job import run_job

    cfg = load_job_config(args.config)
    slot = read_dist_env(local_rank_arg=args.local_rank)
    rank, world, local = slot.rank, slot.world_size, slot.local_rank
    # Jobs (e.g. a SLURM array) x processes per job (one per GPU): each slot labels its own shards.
    job_index, num_jobs = args.job_index * world + rank, args.num_jobs * world
    device = torch.device(args.device) if args.device else (
        torch.device('cuda', gpu_index(local, torch.cuda.device_count())) if torch.cuda.is_available() else torch.device('cpu'))
    if device.type == 'cuda':
        torch.cuda.set_device(device)  # else every process opens a context (and allocates) on GPU 0
    summary = run_job(cfg, job_index, num_jobs, device, progress=not args.no_progress, retry=storage.retry_from(args))
    print(json.dumps(summary))
    return 0


def _import_human(args) -> int:
    from .human import import_human

    store = LabelStore(args.store, TaskRegistry.from_json(args.tasks_file), storage.retry_from(args))
    written = import_human(store, args.shards, args.task)
    for task, n in written.items():
        print(f'{task}: {n} human labels imported')
    return 0


def _commit(args) -> int:
    store = LabelStore(args.store, TaskRegistry.from_json(args.tasks_file), storage.retry_from(args))
    for task in args.task:
        manifest = store.refresh_manifest(task)
        print(f'{task}: {len(manifest["parts"])} parts listed in _task.json')
    return 0


def _validate(args) -> int:
    store = LabelStore(args.store, TaskRegistry.from_json(args.tasks_file), storage.retry_from(args))
    checked = ('each part against its commit hash, class indices, probabilities, keys and teacher; commit records '
               'listed; no orphan files' + ('; every key and part against its shard\'s members and content'
                                            if args.shards else ' (--shards also checks keys against the shards)'))
    total = 0
    for task in args.task:
        faults = store.validate(task, args.shards)
        parts = store.committed_parts(task)
        for f in faults:
            print(f'FAULT {f}')
        print(f'task {task}: {len(parts)} parts, {sum(r.get("rows", 0) for r in parts.values())} labels: '
              f'{len(faults)} faults')
        total += len(faults)
    print(f'checked: {checked}')
    return 1 if total else 0


def _report(args) -> int:
    from .report import write_report

    totals = None
    if args.shards:
        from shards.index import ShardIndex
        totals = {src: t['samples'] for src, t in ShardIndex.load(args.shards).totals().items()}
    store = LabelStore(args.store, TaskRegistry.from_json(args.tasks_file), storage.retry_from(args))
    summary = write_report(store, args.task, args.out,
                           totals)
    print(json.dumps(summary, indent=1))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=command_name('labeling'), description=__doc__, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest='command', required=True)
    r = sub.add_parser('run', formatter_class=HelpFormatter, help='label image shards with the config\'s teachers')
    r.add_argument('--config', required=True, help='the label job config (JSON: task, store, sources, teachers, ...)')
    r.add_argument('--job-index', type=int, default=0, help='this job of --num-jobs (e.g. $SLURM_ARRAY_TASK_ID)')
    r.add_argument('--num-jobs', type=int, default=1, help='jobs labeling these shards together (any number of machines)')
    r.add_argument('--device', help='default: cuda:LOCAL_RANK when there is a GPU, else cpu')
    r.add_argument('--no-progress', action='store_true', help='no progress bar (logs, CI)')
    storage.add_retry_option(r)
    r.add_argument('--local_rank', '--local-rank', type=int, default=None, help=argparse.SUPPRESS)  # from launchers
    r.set_defaults(func=_run)
    for name, func, text in (('import-human', _import_human, 'human labels from the shards\' metadata'),
                             ('commit', _commit, 'list every committed part in _task.json'),
                             ('validate', _validate, 'check every part; exit 1 on a fault'),
                             ('report', _report, 'coverage, confidence, teacher agreement')):
        s = sub.add_parser(name, formatter_class=HelpFormatter, help=text)
        s.add_argument('--store', required=True, help='label store root')
        s.add_argument('--task', required=True, nargs='+', help='one or more task names')
        s.add_argument('--tasks-file', help='JSON of user tasks (class names or counts); built in: in1k, in22k, places365')
        storage.add_retry_option(s)
        if name == 'import-human':
            s.add_argument('--shards', required=True, help='shard prefix holding the shard index (_index/)')
        if name == 'validate':
            s.add_argument('--shards', help='shard prefix: also check every label key against its shard\'s members')
        if name == 'report':
            s.add_argument('--out', required=True, help='folder for report.json and PNG plots')
            s.add_argument('--shards', help='shard prefix: adds the images with no label to the coverage')
        s.set_defaults(func=func)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ReplkError as exc:   # the user's to fix: one line; anything else is a bug and shows its traceback
        print(f'error: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted (Ctrl-C): what was committed is kept; rerun the same command to continue', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
