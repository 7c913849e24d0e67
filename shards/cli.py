"""``python -m shards build|adopt|verify|stat|migrate-index|hash|decontaminate`` (also the ``replk-shards`` command)."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from . import storage
from .adopt import AdoptOptions, adopt
from .build import BuildOptions, build
from .common.errors import BadValue, ReplkError
from .common.helpformat import HelpFormatter, command_name
from .common.tasks_file import class_names
from .decontaminate import MAX_JOINT, MAX_PHASH, decontaminate, report_url
from .hashes import hash_source
from .index import ShardIndex, list_sources, load_source, migrate_legacy
from .inputs import filelist_items, imagefolder_items, unlabeled_items
from .parquet_inputs import parquet_items
from .verify import orphans, verify


def _build(args) -> int:
    classes = None
    if args.imagefolder:
        items, names = imagefolder_items(args.imagefolder, args.task)
        classes = {args.task: names}
    elif args.filelist:
        items = filelist_items(args.filelist, [args.task] if args.task else None)
    elif args.parquet:
        items, names = parquet_items(args.parquet, args.task, args.image_column, args.label_column)
        classes = {args.task: names} if names else None
        labeled = sum(bool(it.labels) for it in items)
        print(f'{args.parquet}: {len(items)} rows, {labeled} labeled for task {args.task!r}'
              + (f' ({len(names)} ClassLabel names)' if names else ' (no ClassLabel names: indices unchecked)'
                 if labeled else ' (no label column: an unlabeled source)'))
    else:
        items = unlabeled_items(args.unlabeled)
    opts = BuildOptions(prefix=args.output, source=args.source, samples_per_shard=args.samples_per_shard,
                        max_shard_bytes=args.max_shard_bytes, max_side=args.max_side, quality=args.quality,
                        workers=args.workers, progress=not args.no_progress,
                        retry=storage.retry_from(args),
                        job_index=args.job_index, num_jobs=args.num_jobs, index_save_s=args.index_save_interval)
    report = build(items, opts, classes)
    print(f'{args.source} job {args.job_index} of {args.num_jobs}: {report.shards_written} shards written, '
          f'{report.shards_skipped_as_done} already complete, {len(report.skipped)} images skipped; '
          f'{report.samples} samples in the source so far')
    for s in report.skipped:
        print(f'  skipped {s["path"]}: {s["reason"]}')
    return 0


def _adopt(args) -> int:
    labels = dict(_task_field(text) for text in args.label or [])
    known = class_names(args.tasks_file) if args.tasks_file else {}
    opts = AdoptOptions(prefix=args.prefix, source=args.source, labels=labels,
                        num_classes={t: len(known[t]) for t in labels if t in known},
                        class_names={t: known[t] for t in labels if t in known},
                        job_index=args.job_index, num_jobs=args.num_jobs, workers=args.workers,
                        index_save_s=args.index_save_interval, retry=storage.retry_from(args), index_to=args.index_to,
                        progress=not args.no_progress)
    summary = adopt(opts)
    unchecked = sorted(t for t in labels if t not in known)
    print(json.dumps(summary))
    if unchecked:
        print(f'note: class indices of {unchecked} were not checked (no --tasks-file naming them); '
              '`replk-label import-human` checks them against the label store', file=sys.stderr)
    return 0


def _task_field(text: str) -> tuple:
    task, sep, where = text.partition('=')
    if not sep or not task or not where:
        raise BadValue(f'--label {text!r}: expected TASK=cls, TASK=json:FIELD or TASK=name:json:FIELD (e.g. in1k=cls)')
    return task, where


def _verify(args) -> int:
    retry = storage.retry_from(args)
    faults = verify(args.prefix, decode=not args.no_decode, retry=retry, progress=not args.no_progress)
    for name in orphans(args.prefix, retry):
        print(f'note: {name} is not in the index (left by an interrupted build; it does not count; '
              'a rerun of the build removes it)')
    for fault in faults:
        print(f'FAULT {fault}')
    index = ShardIndex.load(args.prefix, policy=retry)
    print(f'{len(index.shards)} shards checked, {len(faults)} faults')
    return 1 if faults else 0


def _stat(args) -> int:
    index = ShardIndex.load(args.prefix, policy=storage.retry_from(args))
    totals = index.totals()
    for src, missing in index.missing.items():
        if missing and src in totals:
            jobs = index.builds[src].get('num_jobs')
            owners = sorted({job for _, job in missing if job is not None})
            totals[src]['incomplete'] = (f'{len(missing)} of {index.builds[src]["shards"]} planned shards missing'
                                         + (f' (rerun job {", ".join(map(str, owners))} of {jobs})' if owners else ''))
    whole = not any('incomplete' in t for t in totals.values())
    if args.json:
        print(json.dumps(totals, indent=1))
        return 0 if whole else 1
    print(f'{"source":12} {"shards":>7} {"samples":>10} {"GB":>8} {"skipped":>8}  human labels per task')
    for src, t in totals.items():
        tasks = ', '.join(f'{k}: {v}' for k, v in t['tasks'].items()) or '-'
        print(f'{src:12} {t["shards"]:>7} {t["samples"]:>10} {t["bytes"] / 1e9:>8.3f} {t["skipped"]:>8}  {tasks}'
              + (f'  INCOMPLETE: {t["incomplete"]}' if 'incomplete' in t else ''))
    return 0 if whole else 1


def _migrate_index(args) -> int:
    moved = migrate_legacy(args.prefix, storage.retry_from(args))
    for source, shards in moved.items():
        print(f'{source}: {shards} shards moved to _index/{source}/')
    print(f'{args.prefix}/_index.json removed')
    return 0


def _hash(args) -> int:
    retry = storage.retry_from(args)
    sources = args.source or list_sources(args.prefix, retry)
    if not sources:
        raise BadValue(f'no shard index under {args.prefix}: nothing to hash')
    for source in sources:
        if not load_source(args.prefix, source, retry):
            raise BadValue(f'source {source!r}: no shards indexed under {args.prefix}')
        done = hash_source(args.prefix, source, args.job_index, args.num_jobs, policy=retry, progress=not args.no_progress)
        print(f'{source}: {done} shards hashed by job {args.job_index} of {args.num_jobs}')
    return 0


def _decontaminate(args) -> int:
    retry = storage.retry_from(args)
    sources = args.source or list_sources(args.prefix, retry)
    against = args.against_source or list_sources(args.against, retry)
    png = args.pairs_png or report_url(args.out).replace('.report.json', '.pairs.png')
    info = decontaminate(args.prefix, sources, args.against, against, args.out, args.max_phash, args.max_joint,
                         png, retry, progress=not args.no_progress)
    print(f'{info["against"]["images"]} evaluation images ({", ".join(against)}) under {args.against}; '
          f'{info["against"]["too_plain"]} too plain to match (no structure to hash)')
    for source, r in info['sources'].items():
        print(f'{source:12} {r["excluded"]:>8} of {r["samples"]:>10} samples excluded')
    print(f'exclusion list {args.out} (id {info["id"]}); report {report_url(args.out)}; closest pairs {png}')
    return 0


def _add_progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument('--no-progress', action='store_true', help='no progress bar (logs, CI)')


def _add_index_save_option(p: argparse.ArgumentParser, what_is_redone: str) -> None:
    p.add_argument('--index-save-interval', type=float, default=30.0,
                   help=f"seconds between saves of this job's index part: a killed job {what_is_redone} of the "
                        'last interval (0: save after every one)')


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=command_name('shards'), description=__doc__, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest='command', required=True)
    b = sub.add_parser('build', formatter_class=HelpFormatter, help='pack images into tar shards (resumes an interrupted build)')
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument('--imagefolder', help='classes become labels of --task: class subfolders, a folder of {class}.tar '
                                           'archives, or one tar of class folders (or of class tars); read in place')
    src.add_argument('--filelist', help='CSV/TSV (path, [id], one column per task) or JSONL')
    src.add_argument('--unlabeled', help='a folder of images, an uncompressed tar of images, or a text file of paths')
    src.add_argument('--parquet', help='a Hugging Face dataset in Parquet: a file, a folder or a glob such as '
                                       "'data/train-*.parquet' (one split); labels from --label-column")
    b.add_argument('--output', required=True, help='local folder or s3://bucket/prefix')
    b.add_argument('--source', required=True, help='source name, e.g. in1k, yfcc')
    b.add_argument('--task', help='task name for --imagefolder or --parquet labels (default: the source name)')
    b.add_argument('--image-column', default='image', help="--parquet: the image column (datasets' Image struct or binary)")
    b.add_argument('--label-column', help="--parquet: the integer label column (default: 'label' when there is one); "
                                          '-1 is no label')
    b.add_argument('--samples-per-shard', type=int, default=1000,
                   help='images per shard; each source needs at least ranks x data.workers shards to train on')
    b.add_argument('--max-shard-bytes', type=int, help='cut shards at this many input bytes too')
    b.add_argument('--max-side', type=int, help='re-encode larger images to JPEG with this max side')
    b.add_argument('--quality', type=int, default=90, help='JPEG quality when re-encoding')
    b.add_argument('--workers', type=int, default=1, help='worker processes')
    storage.add_retry_option(b)
    _add_progress_option(b)
    b.add_argument('--job-index', type=int, default=0,
                   help='this job of --num-jobs building one source together (e.g. $SLURM_ARRAY_TASK_ID): '
                        'it writes shards i with i %% num-jobs == job-index and its own index part')
    b.add_argument('--num-jobs', type=int, default=1, help='jobs building this source (any number of machines)')
    _add_index_save_option(b, 'rewrites at most the shards')
    b.set_defaults(func=_build)
    a = sub.add_parser('adopt', formatter_class=HelpFormatter,
                       help="make tar shards another tool wrote (img2dataset, timm's wds, ShardWriter) a source, "
                            'without rewriting them: one counting pass writes the index beside them (resumable)')
    a.add_argument('prefix', help='the folder or s3://bucket/prefix holding the .tar files (the index is written there), '
                                  "or a brace pattern naming them: 's3://bucket/laion/{00000..00999}.tar'")
    a.add_argument('--index-to', help='write the index under this folder or s3:// prefix instead of beside the tars '
                                      '(a folder you cannot write to); train and label by this prefix then')
    a.add_argument('--source', required=True, help='the source name to train and label them by, e.g. laion')
    a.add_argument('--label', action='append', metavar='TASK=WHERE',
                   help='a human label to read: TASK=cls (the .cls member, timm style), TASK=json:FIELD '
                        '(an integer field of the .json member; dotted for nesting) or TASK=name:json:FIELD (a class '
                        "name there, looked up in --tasks-file's names of TASK); repeatable")
    a.add_argument('--tasks-file', help="the tasks file: each --label's class indices are checked against its classes")
    a.add_argument('--workers', type=int, default=4, help='tars read at once')
    a.add_argument('--job-index', type=int, default=0, help='this job of --num-jobs sharing the pass (tar i: job i %% n)')
    a.add_argument('--num-jobs', type=int, default=1, help='jobs sharing the pass (any number of machines)')
    _add_index_save_option(a, 'counts again at most the tars')
    _add_progress_option(a)
    storage.add_retry_option(a)
    a.set_defaults(func=_adopt)
    v = sub.add_parser('verify', formatter_class=HelpFormatter, help='check tars, hashes, keys and that every image decodes')
    v.add_argument('prefix', help='the shard folder (local folder or s3://bucket/prefix)')
    v.add_argument('--no-decode', action='store_true', help='skip decoding images (faster)')
    _add_progress_option(v)
    storage.add_retry_option(v)
    v.set_defaults(func=_verify)
    s = sub.add_parser('stat', formatter_class=HelpFormatter, help='samples per source and task')
    s.add_argument('prefix', help='the shard folder (local folder or s3://bucket/prefix)')
    s.add_argument('--json', action='store_true', help='print JSON instead of a table')
    storage.add_retry_option(s)
    s.set_defaults(func=_stat)
    m = sub.add_parser('migrate-index', formatter_class=HelpFormatter,
                       help="move an older build's single _index.json to the per-source layout (no build running)")
    m.add_argument('prefix', help='the shard folder (local folder or s3://bucket/prefix)')
    storage.add_retry_option(m)
    m.set_defaults(func=_migrate_index)
    h = sub.add_parser('hash', formatter_class=HelpFormatter,
                       help='compute the perceptual hashes of shards built without them (builds hash as they go)')
    h.add_argument('prefix', help='the shard folder (local folder or s3://bucket/prefix)')
    h.add_argument('--source', action='append', help='a source to hash (repeatable; default: every source)')
    h.add_argument('--job-index', type=int, default=0, help='this job of --num-jobs sharing the pass')
    h.add_argument('--num-jobs', type=int, default=1, help='jobs sharing the pass (any number of machines)')
    _add_progress_option(h)
    storage.add_retry_option(h)
    h.set_defaults(func=_hash)
    d = sub.add_parser('decontaminate', formatter_class=HelpFormatter,
                       help='list training samples that are near-duplicates of evaluation images')
    d.add_argument('prefix', help='the training shards (local folder or s3://bucket/prefix)')
    d.add_argument('--against', required=True, help='the evaluation shards, e.g. s3://data/in1k-val')
    d.add_argument('--source', action='append', help='a training source to check (repeatable; default: every source)')
    d.add_argument('--against-source', action='append', help='an evaluation source (repeatable; default: every source)')
    d.add_argument('--out', required=True, help='the exclusion list to write (.parquet; one file per version, '
                                                'e.g. exclusions/in1k-val.v1.parquet); the report goes beside it')
    d.add_argument('--pairs-png', help='picture of the least certain matches; without it, beside --out as .pairs.png')
    d.add_argument('--max-phash', type=int, default=MAX_PHASH, help='pHash bits a copy may differ in (of 64)')
    d.add_argument('--max-joint', type=int, default=MAX_JOINT,
                   help='pHash + dHash bits a copy may differ in (of 128), checked on the pHash candidates')
    storage.add_retry_option(d)
    _add_progress_option(d)
    d.set_defaults(func=_decontaminate)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    args = parser().parse_args(argv)
    if (getattr(args, 'imagefolder', None) or getattr(args, 'parquet', None)) and not args.task:
        args.task = args.source
    try:
        return args.func(args)
    except ReplkError as exc:   # the user's to fix: one line; anything else is a bug and shows its traceback
        print(f'error: {exc}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
