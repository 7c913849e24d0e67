"""The GPU path, proven on one NVIDIA GPU (run through bench/gpu_check.sh).

Steps, each timed and bounded (a 4, b 6, c 7, d 2.5 minutes at most), each reported with its error
as soon as it ends and written to gpu_check.json after every step; the final JSON line holds all.
The whole check can outlast one 10-minute device call: split it, e.g. ``--only=ac`` then ``--only=bd``.
  a. the GPU test tier (tests/gpu): among others configs/xl_megadata.json at 224 through our
     Trainer (deepspeed.initialize, nccl, world size 1, ZeRO-2, bf16 inside the engine,
     channels-last inputs, a few real steps on synthetic shards);
  b. bench/gpu_train.py: XL training img/s and peak memory at micro-batch 32 and 64, through our
     Trainer, a bare timm loop, and timm convnext_xlarge in the same bare loop;
  c. bench/lk_conv.py: the large-kernel depthwise convolution, cuDNN vs our Triton kernel, per layer;
  d. bench/label_job.py: the labeling job vs a bare ViT-L/16 forward, synthetic 500x375 JPEGs.

``--cpu-dry-run`` runs every step on tiny shapes on CPU (step a runs the same Trainer probe the
GPU test runs, with the model shrunk), as many steps at once as there are cores, so the script
cannot rot: ``make test`` runs it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'tests'))


def run(cmd, timeout: float, env: dict = None) -> dict:
    """A step as a subprocess: its exit status, wall time, last JSON line and output tail."""
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        said = ''.join(x.decode(errors='replace') if isinstance(x, bytes) else (x or '')
                       for x in (exc.stdout, exc.stderr))
        return dict(ok=False, seconds=round(time.monotonic() - start, 1),
                    error=f'timed out after {timeout} s; its output so far:\n{said[-3000:]}')
    out = dict(ok=proc.returncode == 0, seconds=round(time.monotonic() - start, 1))
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{')]
    if lines:
        out['result'] = json.loads(lines[-1])
    if proc.returncode != 0:
        out['error'] = (proc.stdout[-1500:] + proc.stderr[-2500:])
    else:
        out['tail'] = proc.stdout.strip().splitlines()[-6:]
    return out


def step_a(dry: bool) -> dict:
    if not dry:
        return run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', 'tests/gpu'], timeout=240)
    from pretrain.apps.tiny_data import make_megadata, megadata_overrides
    from trainer_probe import run_probe
    tmp = Path(tempfile.mkdtemp(prefix='replk-gpucheck-'))
    start = time.monotonic()
    sets = dict(megadata_overrides(make_megadata(str(tmp / 'data'))),
                **{'model.kwargs': {'depths': [1, 1], 'channels': [16, 32], 'kernel_sizes': [7, 5]},
                   'data.image_size': 32, 'train.micro_batch': 4, 'deepspeed.train_batch_size': 4,
                   'data.workers': 1, 'checkpoint.dir': str(tmp / 'run'), 'log.tensorboard': False})
    report = run_probe('configs/xl_megadata.json', sets, '--cuda-autocast-query')
    ok = (report['optimizer_steps'] >= 1 and set(report['conv_out_dtype']) == {'torch.bfloat16'}
          and report['conv_inputs_channels_last'].get('False', 0) == 0)
    return dict(ok=ok, seconds=round(time.monotonic() - start, 1), result=report)


def step_b(dry: bool) -> dict:
    # One micro-batch: the first H100 run of both (32 and 64, 10 steps) outlasted 300 s.
    args = ['--cpu-dry-run'] if dry else ['--micro-batches', '32', '--steps', '5']
    return run([sys.executable, 'bench/gpu_train.py'] + args, timeout=360)


def step_c(dry: bool) -> dict:
    bench = REPO / 'bench' / 'lk_conv.py'
    if not bench.exists():
        return dict(ok=True, skipped='the large-kernel convolution (issue 15) has not landed: nothing to time')
    # cudnn.benchmark tries every algorithm on each of the 8 shapes, slowly at these kernel sizes
    # (4 shapes at batch 64 took 90 s on an H100), and Triton autotunes at each shape's first call:
    # one batch size here, both in a dedicated `bench/lk_conv.py --write-table` run.
    return run([sys.executable, str(bench)] + (['--cpu-dry-run'] if dry else ['--batches', '32', '--reps', '5']),
               timeout=420, env=dict(os.environ, TRITON_INTERPRET='1') if dry else None)


def step_d(dry: bool) -> dict:
    if dry:
        args = ['--images', '32', '--batch-size', '16']
    else:
        args = ['--model', 'vit_large_patch16_224', '--device', 'cuda', '--precision', 'bf16', '--images', '1024',
                '--batch-size', '256', '--workers', '12', '--threads', '4']
    return run([sys.executable, 'bench/label_job.py'] + args, timeout=150)


STEPS = {'a': ('a_gpu_tests', step_a), 'b': ('b_train_throughput', step_b), 'c': ('c_lk_conv', step_c),
         'd': ('d_label_job', step_d)}


def start_step(name: str, fn, dry: bool) -> dict:
    print(f'gpu_check: {name} ...', flush=True)  # when it starts, not when it is queued
    return fn(dry)


def report_step(name: str, result: dict) -> None:
    """One step's outcome as soon as it is known, with its error: a run killed later still told it."""
    print(f'gpu_check: {name} {"ok" if result["ok"] else "FAILED"} ({result.get("seconds", 0)} s)', flush=True)
    if not result['ok']:
        print(f'gpu_check: {name} error:\n{result.get("error", "")}', flush=True)
    elif 'result' in result:
        print(f'gpu_check: {name} result: {json.dumps(result["result"])[:4000]}', flush=True)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--cpu-dry-run', action='store_true')
    ap.add_argument('--only', default='abcd', help='the steps to run, e.g. "ac" (default: all, abcd)')
    ap.add_argument('--out', default='runs/gpu_check', help='folder for gpu_check.json')
    args = ap.parse_args(argv)
    unknown = set(args.only) - set(STEPS)
    if unknown or not args.only:
        ap.error(f'--only takes letters among {"".join(STEPS)}, got {args.only!r}')
    import torch
    if not args.cpu_dry_run and not torch.cuda.is_available():
        raise SystemExit('gpu_check: no CUDA device here; use --cpu-dry-run to check the script on CPU')
    device = 'cpu (dry run)' if args.cpu_dry_run else torch.cuda.get_device_name()
    started = time.monotonic()
    steps = {}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    letters = sorted(set(args.only))
    # On the GPU each step times things and must have the card to itself: one at a time. The dry run
    # only proves the script, so its steps (each a process, one thread) share the CPU's cores.
    at_once = min(len(letters), os.cpu_count() or 1) if args.cpu_dry_run else 1
    with ThreadPoolExecutor(at_once) as pool:
        pending = {}
        for letter in letters:
            name, fn = STEPS[letter]
            pending[pool.submit(start_step, name, fn, args.cpu_dry_run)] = name
        for done in as_completed(pending):
            name = pending[done]
            steps[name] = done.result()
            report_step(name, steps[name])
            summary = dict(check='gpu_check', device=device, torch=torch.__version__,
                           ok=all(s['ok'] for s in steps.values()), seconds=round(time.monotonic() - started, 1),
                           steps=dict(sorted(steps.items())))
            (Path(args.out) / 'gpu_check.json').write_text(json.dumps(summary, indent=2))  # after every step
    print(json.dumps(summary), flush=True)
    if not summary['ok']:
        raise SystemExit(1)
    return summary


if __name__ == '__main__':
    main()
