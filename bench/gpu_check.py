"""The GPU path on one NVIDIA GPU, deciding numbers first (run through bench/gpu_check.sh).

Steps, in this order, each bounded by its own limit (steps 1-6: 520 s; with the wheel install the
whole check fits 9 minutes) and by what is left of the check's deadline; a step with too little
time left is skipped, saying so (step 7 runs only on what 1-6 left unused, and needs 120 s).
Each prints a table of at most 2 KB when it ends and writes into
``--out`` (at most 8 files: what a device call brings back); ``gpu_check.json`` there is
rewritten after every step.
  1. the large-kernel layers of XL at batch 32: cuDNN, direct and Toeplitz, forward / input grad /
     weight grad ms, TMAC/s, the autotuned tiles, each checked against cuDNN; their times become
     ``lk_impl='auto'``'s decision cache (``--out``/cache, i.e. ``REPLK_CACHE_DIR`` for every step);
  2. XL's whole training step at micro-batch 32, ``native`` against ``auto`` (reading that cache):
     ms/step, images/s, peak memory (the same process as 1: cuDNN benchmarks those shapes once);
  3. our Trainer (``configs/xl_megadata.json``) against the bare loop and timm ``convnext_xlarge``;
  4. the labeling job against a bare ViT-L/16 forward;
  5. the GPU test tier (tests/gpu): every tile of every kernel on CUDA against float64, the XL
     config through the Trainer (nccl, ZeRO-2, bf16 in the engine, channels-last), ...;
  6. RepLKNet-31B's large-kernel layers, if time remains;
  7. XL's training step at micro-batch 32 with ``auto`` eager against ``auto`` compiled
     (``train.compile``'s inductor, decisions from step 1's cache), if time remains: inductor
     compiling XL's forward and backward takes minutes of CPU, so it never delays 1-5.

``--cpu-dry-run`` runs every step on tiny shapes on CPU (step 5 runs the Trainer probe of the
GPU test with the model shrunk; steps 1-2 run the kernels under Triton's interpreter, write the
decision cache and check that ``auto`` ran Triton from it), as many at once as there are cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'tests'))
TABLE_BYTES = 2000
MIN_STEP_SECONDS = {'7': 120}   # a step with less time left than this is skipped, not started (others: 15)


@dataclass(frozen=True)
class Step:
    letter: str
    name: str
    limit: float                 # seconds
    run: Callable[['Context'], dict]


@dataclass
class Context:
    dry: bool
    out: Path
    deadline: float              # time.time() by which everything must have ended
    only: str

    def timeout(self, limit: float) -> float:
        return max(0.0, min(limit, self.deadline - time.time() - 2))

    def env(self, interpret: bool = False) -> dict:
        """Every step reads and writes lk_impl='auto''s decisions in --out/cache; the dry run's kernel
        steps run Triton's interpreter."""
        extra = dict(REPLK_CACHE_DIR=str(self.out / 'cache'))
        if self.dry and interpret:
            extra['TRITON_INTERPRET'] = '1'
        return dict(os.environ, **extra)


def run(cmd, timeout: float, env: dict) -> dict:
    """A step as a subprocess: its exit status, wall time, last JSON line and output tail."""
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        said = ''.join(x.decode(errors='replace') if isinstance(x, bytes) else (x or '')
                       for x in (exc.stdout, exc.stderr))
        return dict(ok=False, seconds=round(time.monotonic() - start, 1),
                    error=f'timed out after {timeout:.0f} s; its output so far:\n{said[-1500:]}')
    out = dict(ok=proc.returncode == 0, seconds=round(time.monotonic() - start, 1))
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{')]
    if lines:
        out['result'] = json.loads(lines[-1])
    if proc.returncode != 0:
        out['error'] = proc.stdout[-700:] + proc.stderr[-1300:]
    else:
        out['table'] = '\n'.join(line for line in proc.stdout.splitlines() if not line.startswith('{'))[-TABLE_BYTES:]
    return out


def read_part(folder: Path, name: str) -> dict:
    """A part the kernels bench wrote (it writes each as soon as it is measured)."""
    path = folder / name
    if not path.exists():
        return dict(ok=False, error=f'{path.name} was not written (the bench stopped before it)')
    data = json.loads(path.read_text())
    return dict(ok=True, seconds=data.get('seconds'), table=data.get('table', ''))


def kernels(ctx: Context, layers: str, folder: Path, step_batch: int, limit: float) -> dict:
    args = ['--cpu-dry-run'] if ctx.dry else ['--layers', layers, '--batches', '32', '--reps', '5']
    return run([sys.executable, 'bench/lk_conv.py', *args, '--step-batch', str(step_batch), '--out', str(folder)],
               ctx.timeout(limit), ctx.env(interpret=True))


def step_1_2(ctx: Context) -> dict:
    want_step = '2' in ctx.only
    proc = kernels(ctx, 'XL', ctx.out, 32 if want_step else 0, STEP_LIMITS['1'] + (STEP_LIMITS['2'] if want_step else 0))
    results = {'1': read_part(ctx.out, 'lk_conv_layers.json')}
    if want_step:
        results['2'] = read_part(ctx.out, 'lk_conv_step.json')
        if ctx.dry and results['2']['ok']:
            ran = json.loads((ctx.out / 'lk_conv_step.json').read_text())['auto_ran']
            results['2']['auto_ran'] = ran   # the dry run's proof that auto read Triton from the cache
            results['2']['ok'] = bool(ran) and set(ran.values()) <= {'direct', 'toeplitz'}
    for r in results.values():
        if not r['ok']:
            r['error'] = r.get('error', '') + '\n' + proc.get('error', '')
    return results


def step_3(ctx: Context) -> dict:
    if ctx.dry:
        args = ['--cpu-dry-run', '--timeout', '300']
    else:  # each measurement is its own process (a fresh engine and memory statistics)
        args = ['--micro-batches', '32', '--steps', '5', '--timeout', str(round(STEP_LIMITS['3'] / 3 - 1))]
    return run([sys.executable, 'bench/gpu_train.py', *args, '--out', str(ctx.out)], ctx.timeout(STEP_LIMITS['3']),
               ctx.env())


def step_4(ctx: Context) -> dict:
    if ctx.dry:
        args = ['--images', '32', '--batch-size', '16']
    else:
        args = ['--model', 'vit_large_patch16_224', '--device', 'cuda', '--precision', 'bf16', '--images', '768',
                '--batch-size', '256', '--workers', '12', '--threads', '4']
    return run([sys.executable, 'bench/label_job.py'] + args, ctx.timeout(STEP_LIMITS['4']), ctx.env())


def step_5(ctx: Context) -> dict:
    if not ctx.dry:
        return run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', 'tests/gpu'],
                   ctx.timeout(STEP_LIMITS['5']), ctx.env())
    from trainer_probe import run_probe

    from pretrain.apps.tiny_data import make_megadata, megadata_overrides
    tmp = Path(tempfile.mkdtemp(prefix='replk-gpucheck-'))
    start = time.monotonic()
    sets = dict(megadata_overrides(make_megadata(str(tmp / 'data'))),
                **{'model.kwargs': {'depths': [1, 1], 'channels': [16, 32], 'kernel_sizes': [7, 5]},
                   'data.transform.image_size': 32, 'train.micro_batch': 4, 'deepspeed.train_batch_size': 4,
                   'data.workers': 1, 'checkpoint.dir': str(tmp / 'run'), 'log.tensorboard': False})
    report = run_probe('configs/xl_megadata.json', sets, '--cuda-autocast-query')
    ok = (report['optimizer_steps'] >= 1 and set(report['conv_out_dtype']) == {'torch.bfloat16'}
          and report['conv_inputs_channels_last'].get('False', 0) == 0)
    return dict(ok=ok, seconds=round(time.monotonic() - start, 1), table=json.dumps(report)[:TABLE_BYTES])


def step_7(ctx: Context) -> dict:
    folder = ctx.out / 'compiled'
    args = ['--cpu-dry-run'] if ctx.dry else ['--step-batch', '32']
    proc = run([sys.executable, 'bench/lk_conv.py', *args, '--layers', '--step-impls', 'auto', 'auto+inductor',
                '--out', str(folder)], ctx.timeout(STEP_LIMITS['7']), ctx.env(interpret=True))
    part = read_part(folder, 'lk_conv_step.json')
    return part if part['ok'] else dict(part, error=part['error'] + '\n' + proc.get('error', ''))


def step_6(ctx: Context) -> dict:
    if ctx.dry:
        return dict(ok=True, seconds=0.0, table='31B: the dry run times the tiny layers once (step 1)')
    folder = ctx.out / '31b'
    proc = kernels(ctx, '31B', folder, 0, STEP_LIMITS['6'])
    part = read_part(folder, 'lk_conv_layers.json')
    return part if part['ok'] else dict(part, error=part['error'] + '\n' + proc.get('error', ''))


STEP_LIMITS = {'1': 110, '2': 80, '3': 150, '4': 55, '5': 90, '6': 35, '7': 240}
NAMES = {'1': '1_lk_layers_xl', '2': '2_xl_step_native_vs_auto', '3': '3_trainer_vs_bare_vs_convnext',
         '4': '4_label_job', '5': '5_gpu_tests', '6': '6_lk_layers_31b', '7': '7_xl_step_compiled_vs_eager'}
IF_TIME_REMAINS = '67'   # skipped for time, these steps still pass: 1-5 fit the check's limit on their own
# Steps 1 and 2 are one process; the runner for '1' reports both.
RUNNERS = [('12', step_1_2), ('3', step_3), ('4', step_4), ('5', step_5), ('6', step_6), ('7', step_7)]


PRINTING = threading.Lock()   # dry-run steps end side by side: one step's lines stay together


def say(text: str) -> None:
    with PRINTING:
        print(text, flush=True)


def report(name: str, result: dict) -> None:
    """One step's outcome as soon as it is known: ok or its error, then its table (at most 2 KB)."""
    lines = [f'gpu_check: {name} {"ok" if result["ok"] else "FAILED"} ({result.get("seconds", 0)} s)'
             + (f' skipped: {result["skipped"]}' if result.get('skipped') else '')]
    if not result['ok'] and result.get('error'):
        lines.append(f'gpu_check: {name} error:\n{result["error"][-TABLE_BYTES:]}')
    if result.get('table'):
        lines.append(result['table'][:TABLE_BYTES])
    say('\n'.join(lines))


def run_group(letters: str, fn, ctx: Context) -> dict:
    """Run one runner (or skip it when the deadline is too close); {step letter: result}."""
    wanted = [x for x in letters if x in ctx.only]
    if ctx.deadline - time.time() < MIN_STEP_SECONDS.get(letters, 15):
        return {x: dict(ok=x in IF_TIME_REMAINS, skipped='no time left in the check', seconds=0.0) for x in wanted}
    say(f'gpu_check: {"+".join(NAMES[x] for x in wanted)} ...')
    got = fn(ctx)
    return got if letters == '12' else {letters: got}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--cpu-dry-run', action='store_true')
    ap.add_argument('--only', default='1234567', help='the steps to run, e.g. "125" (default: all, 1234567)')
    ap.add_argument('--out', default='runs/gpu_check', help='folder for every file the check writes')
    ap.add_argument('--deadline', type=float, default=None,
                    help='epoch seconds by which the check must end (gpu_check.sh: its start + 540)')
    args = ap.parse_args(argv)
    if set(args.only) - set(NAMES) or not args.only:
        ap.error(f'--only takes digits among {"".join(NAMES)}, got {args.only!r}')
    import torch
    if not args.cpu_dry_run and not torch.cuda.is_available():
        raise SystemExit('gpu_check: no CUDA device here; use --cpu-dry-run to check the script on CPU')
    device = 'cpu (dry run)' if args.cpu_dry_run else torch.cuda.get_device_name()
    started = time.monotonic()
    deadline = args.deadline or time.time() + sum(v for k, v in STEP_LIMITS.items() if k not in '7') + 20
    ctx = Context(args.cpu_dry_run, Path(args.out).resolve(), deadline, args.only)
    ctx.out.mkdir(parents=True, exist_ok=True)
    runners = [(letters, fn) for letters, fn in RUNNERS if set(letters) & set(args.only)]
    steps = {}
    # On the GPU each step times things and must have the card to itself: one at a time, in order.
    # The dry run only proves the script, so its steps (each a process, one thread) share the cores.
    at_once = min(len(runners), os.cpu_count() or 1) if args.cpu_dry_run else 1
    with ThreadPoolExecutor(at_once) as pool:
        pending = {pool.submit(run_group, letters, fn, ctx): letters for letters, fn in runners}
        for done in as_completed(pending):
            for letter, result in done.result().items():
                steps[NAMES[letter]] = result
                report(NAMES[letter], result)
            summary = dict(check='gpu_check', device=device, torch=torch.__version__,
                           ok=all(s['ok'] for s in steps.values()), seconds=round(time.monotonic() - started, 1),
                           steps=dict(sorted(steps.items())))
            (ctx.out / 'gpu_check.json').write_text(json.dumps(summary, indent=1))   # after every step
    print(json.dumps(dict(summary, steps={k: dict(ok=v['ok'], seconds=v.get('seconds'), skipped=v.get('skipped'))
                                          for k, v in summary['steps'].items()})), flush=True)
    if not summary['ok']:
        raise SystemExit(1)
    return summary


if __name__ == '__main__':
    main()
