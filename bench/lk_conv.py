"""Large-kernel depthwise convolution: cuDNN against our Triton algorithms on RepLKNet's layers, then
the whole training step with ``lk_impl='native'`` against ``'auto'``, side by side in one process
(so cuDNN's benchmarking of these slow shapes is paid once).

1. Per layer (bf16, channels-last, stride 1, padding k//2, groups = channels) and per candidate —
   ``cudnn``, ``direct`` and, on maps of at most 1024 pixels and 64 columns, ``toeplitz``: forward,
   input-gradient and weight-gradient ms (median of CUDA-event timings), TMAC/s over the three passes
   (nominal multiply-adds, padding included), the tiles Triton's autotuner chose; every Triton
   candidate checked against cuDNN first. The times go into ``lk_impl='auto'``'s decision cache
   (:mod:`pretrain.models.lk_choice`), the same file a training run on this card reads.
2. XL's (or, dry, a tiny model's) whole training step, bf16 autocast, channels-last, AdamW:
   ``native`` against ``auto`` (which now reads the cache): ms per step, images/s, peak memory, and
   the algorithm ``auto`` ran per layer. ``--step-impls auto auto+inductor`` times ``auto`` eager
   against ``auto`` under ``torch.compile`` (inductor; large-kernel decisions made eagerly first,
   as ``train.compile`` does); the compile itself falls in the warm-up steps.

    python bench/lk_conv.py --layers XL --batches 32 --step-batch 32 --out runs/lk_conv
    python bench/lk_conv.py --layers --step-impls auto auto+inductor   # the step only, compiled vs eager
    python bench/lk_conv.py --write-table      # ... and record the winners in the shipped override table
    python bench/lk_conv.py --cpu-dry-run      # tiny shapes on CPU, Triton interpreted (`make test`)

The dry run's card is the interpreter's pseudo-card: its speed means nothing, so only the Triton
algorithms' times are recorded there and ``auto`` runs Triton from the cache (the plumbing a GPU
run uses, exercised). Each part prints a table of at most 2 KB and writes its JSON into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (model, stage, channels of the depthwise conv, kernel, map size at 224): RepLKNet-31B has
# dw_ratio 1, XL dw_ratio 1.5 on channels (256, 512, 1024, 2048).
LAYERS = {'31B': [('31B', 1, 128, 31, 56), ('31B', 2, 256, 29, 28), ('31B', 3, 512, 27, 14), ('31B', 4, 1024, 13, 7)],
          'XL': [('XL', 1, 384, 27, 56), ('XL', 2, 768, 27, 28), ('XL', 3, 1536, 27, 14), ('XL', 4, 3072, 13, 7)],
          'tiny': [('tiny', 1, 8, 7, 8), ('tiny', 2, 16, 5, 4)]}   # the dry run's model at 32 px, interpreted
MAX_REL_ERROR = {'float32': 1e-4, 'bfloat16': 3e-2}
TABLE_BYTES = 2000


def max_rel_error(ours: dict, ref: dict) -> float:
    """Largest relative difference of the three passes' results between two candidates."""
    worst = 0.0
    for name in ('fwd', 'dgrad', 'wgrad'):
        a, b = ours[name]().float(), ref[name]().float()
        worst = max(worst, ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item())
    return worst


def tile_brief(config: str) -> str:
    """'BLOCK_H: 4, BLOCK_W: 16, BLOCK_C: 64, SPREAD_TAPS: True, num_warps: 4, ...' -> 'H4 W16 C64 spread w4'."""
    found = dict(re.findall(r'(\w+): (\w+)', config))
    parts = [f'{k[-1]}{found[k]}' for k in ('BLOCK_H', 'BLOCK_W', 'BLOCK_C') if k in found]
    if found.get('SPREAD_TAPS') == 'True':
        parts.append('spread')
    return ' '.join(parts + [f'w{found.get("num_warps", "?")}'])


def bench_layer(layer, batch: int, device, dtype, reps: int) -> dict:
    from pretrain.models import lk_measure
    model, stage, c, k, hw = layer
    shape = lk_measure.LayerShape(str(dtype).replace('torch.', ''), True, c, k, hw, hw)
    x, w, dy = lk_measure.layer_tensors(shape, batch, device)
    candidates = lk_measure.candidates_for(shape) if triton_here(device) else ('cudnn',)
    row = dict(model=model, stage=stage, channels=c, kernel=k, size=hw, batch=batch, shape=shape.key())
    fns = {cand: lk_measure.passes(cand, x, w, dy) for cand in candidates}
    for cand in candidates[1:]:
        row[f'{cand}_rel_error'] = err = max_rel_error(fns[cand], fns['cudnn'])
        if err > MAX_REL_ERROR[shape.dtype]:
            raise SystemExit(f'lk_conv: {cand} disagrees with cuDNN on {layer} at batch {batch}: relative error {err:.2e}')
    macs = 3 * batch * c * hw * hw * k * k
    for cand in candidates:
        row[cand] = lk_measure.time_passes(cand, x, w, dy, reps=reps)
        row[cand]['tmac_s'] = round(macs / (row[cand]['total'] * 1e-3) / 1e12, 3)
        if cand == 'direct':
            row['tiles'] = lk_measure.autotuned_tiles()
    row['best'] = min(candidates, key=lambda cand: row[cand]['total'])
    row['speedup_over_cudnn'] = round(row['cudnn']['total'] / row[row['best']]['total'], 2)
    return row


def triton_here(device) -> bool:
    from pretrain.models import lk_conv
    return lk_conv.triton_supported(device)


def record_decisions(rows: list, card: str, dry: bool) -> str:
    """Every row's times into the decision cache lk_impl='auto' reads (Triton's only, on the dry run's pseudo-card)."""
    from pretrain.models import lk_choice
    from pretrain.models.lk_measure import LayerShape
    path = None
    for row in rows:
        shape = LayerShape('float32' if dry else 'bfloat16', True, row['channels'], row['kernel'], row['size'], row['size'])
        times = {c: row[c]['total'] for c in lk_choice.EVERY_CANDIDATE if c in row and not (dry and c == 'cudnn')}
        path = lk_choice.save_entry(card, shape, times, row['batch'], row.get('tiles', {}))
    return str(path)


def layers_table(rows: list) -> str:
    lines = ['layer           batch  ms fwd/dgrad/wgrad (TMAC/s over 3 passes) per candidate          best  x cuDNN']
    for r in rows:
        cells = [f"{c} {r[c]['fwd']:.2f}/{r[c]['dgrad']:.2f}/{r[c]['wgrad']:.2f} ({r[c]['tmac_s']:.1f})"
                 for c in ('cudnn', 'direct', 'toeplitz') if c in r]
        tiles = ' '.join(f'{k[0]}:{tile_brief(v)}' for k, v in r.get('tiles', {}).items())
        lines.append(f"{r['model']} s{r['stage']} {r['channels']}c k{r['kernel']} {r['size']}px  {r['batch']:>4}  "
                     + '  '.join(cells) + f"  {r['best']} {r['speedup_over_cudnn']}" + (f'  [{tiles}]' if tiles else ''))
    return '\n'.join(lines)[:TABLE_BYTES]


STEP_IMPLS = ('native', 'auto', 'auto+inductor')


def whole_step(impl: str, batch: int, size: int, steps: int, device, tiny: bool) -> dict:
    """XL's (or a tiny model's) training step: bf16 autocast, channels-last, AdamW; ``impl`` is an
    ``lk_impl``, or ``auto+inductor``: ``auto`` and the model compiled (decisions made eagerly first)."""
    import timm
    import torch
    import torch.nn.functional as F

    import pretrain.models  # noqa: F401  (registers RepLKNet)
    from pretrain.models import decide_before_compiling, lk_choice
    from pretrain.models.lk_measure import median_ms
    lk_choice.forget_decisions()
    lk_impl, compiled = impl.split('+')[0], impl.endswith('+inductor')
    kwargs = dict(depths=(1, 1), channels=(8, 16), kernel_sizes=(7, 5)) if tiny else {}
    model = timm.create_model('replknet_3' if tiny else 'replknet_xl', num_classes=1000, lk_impl=lk_impl,
                              **kwargs).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    forward = model
    if compiled:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not tiny):
            decide_before_compiling(model, x)
        forward = torch.compile(model, backend='inductor')

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not tiny):
            loss = F.cross_entropy(forward(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    ms = median_ms(step, device, steps, warmup=2)
    peak = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2) if device.type == 'cuda' else 0.0
    out = dict(ms_per_step=round(ms, 2), images_per_s=round(batch / (ms / 1e3), 1), peak_gb=peak)
    if lk_impl == 'auto':
        out['auto_ran'] = lk_choice.decisions()
    model = opt = forward = None   # frees them for the next implementation (step() closes over the names)
    return out


def step_table(step: dict, impls: list, batch: int, size: int) -> str:
    lines = [f'whole training step, batch {batch} at {size}px     ms/step   img/s  peak GB']
    for impl in impls:
        s = step[impl]
        lines.append(f"{impl:<16}{'':25}{s['ms_per_step']:>8.1f} {s['images_per_s']:>7.1f} {s['peak_gb']:>7.2f}")
    lines += [f"{impl} over {impls[0]}: x{step[f'speedup_{impl}_over_{impls[0]}']}" for impl in impls[1:]]
    if step.get('auto_ran'):
        lines.append('auto ran ' + ', '.join(f'{k.split(",", 2)[2]}: {v}' for k, v in step['auto_ran'].items()))
    return '\n'.join(lines)[:TABLE_BYTES]


def write_table(rows: list, device_name: str, dtype: str) -> dict:
    """Record in the shipped override table the shapes where a Triton algorithm beat cuDNN at every
    batch measured, with the algorithm that won at the largest batch."""
    from pretrain.models.lk_choice import MEASURED_TABLE, TABLE_FORMAT, shape_key
    wins, algorithm = {}, {}
    for row in sorted(rows, key=lambda r: r['batch']):
        ours = [c for c in ('direct', 'toeplitz') if c in row]
        if ours:
            key = shape_key(row['channels'], row['kernel'], row['size'], row['size'])
            best = min(ours, key=lambda c: row[c]['total'])
            wins.setdefault(key, []).append(row[best]['total'] < row['cudnn']['total'])
            algorithm[key] = best
    faster = {key: algorithm[key] for key in sorted(wins) if all(wins[key])}
    table = json.loads(MEASURED_TABLE.read_text())
    if table.get('format') != TABLE_FORMAT:
        table = dict(format=TABLE_FORMAT, about=table.get('about', ''), devices={})
    table.setdefault('devices', {}).setdefault(device_name, {})[dtype] = faster
    MEASURED_TABLE.write_text(json.dumps(table, indent=2) + '\n')
    return dict(table=str(MEASURED_TABLE), device=device_name, dtype=dtype, faster=faster)


def save(out: Path, name: str, data: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(data, indent=1))


def run_layers(args, device, dtype, card: str) -> dict:
    started = time.monotonic()
    layers = LAYERS['tiny'] if args.cpu_dry_run else sum((LAYERS[m] for m in args.layers), [])
    batches, reps = ([2], 1) if args.cpu_dry_run else (args.batches, args.reps)
    rows = [bench_layer(layer, batch, device, dtype, reps) for batch in batches for layer in layers]
    result = dict(part='layers', card=card, rows=rows, table=layers_table(rows),
                  cache=record_decisions(rows, card, args.cpu_dry_run) if triton_here(device) else None)
    if args.write_table and not args.cpu_dry_run:
        result['override_table'] = write_table(rows, card, 'bfloat16')
    result['seconds'] = round(time.monotonic() - started, 1)
    print(result['table'], flush=True)
    return result


def run_step(args, device, card: str) -> dict:
    started = time.monotonic()
    batch, size, steps = (2, 32, 2) if args.cpu_dry_run else (args.step_batch, 224, 5)
    impls = args.step_impls
    step = {impl: whole_step(impl, batch, size, steps, device, args.cpu_dry_run) for impl in impls}
    for impl in impls[1:]:
        step[f'speedup_{impl}_over_{impls[0]}'] = round(step[impls[0]]['ms_per_step'] / step[impl]['ms_per_step'], 3)
    ran = [step[impl].pop('auto_ran') for impl in impls if 'auto_ran' in step[impl]]
    step['auto_ran'] = ran[0] if ran else {}   # the decisions are the card's: the same for every auto run
    result = dict(part='whole_step', card=card, batch=batch, size=size, **step,
                  table=step_table(step, impls, batch, size), seconds=round(time.monotonic() - started, 1))
    print(result['table'], flush=True)
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--cpu-dry-run', action='store_true', help='tiny shapes in fp32 on CPU, Triton interpreted')
    ap.add_argument('--layers', nargs='*', choices=('XL', '31B'), default=['XL', '31B'],
                    help='the layers to time (none: the whole step only)')
    ap.add_argument('--batches', type=int, nargs='+', default=[32])
    ap.add_argument('--reps', type=int, default=10)
    ap.add_argument('--step-batch', type=int, default=32, help="batch of XL's whole training step (0: skip it)")
    ap.add_argument('--step-impls', nargs='+', choices=STEP_IMPLS, default=['native', 'auto'],
                    help='the whole step under each of these, ratios to the first')
    ap.add_argument('--out', default='runs/lk_conv', help='folder for lk_conv_layers.json and lk_conv_step.json')
    ap.add_argument('--write-table', action='store_true',
                    help='also record the winners in pretrain/models/lk_conv_measured.json (the override table)')
    args = ap.parse_args(argv)
    import torch

    from pretrain.models.lk_choice import card_identity
    if args.cpu_dry_run:
        device, dtype = torch.device('cpu'), torch.float32
    else:
        if not torch.cuda.is_available():
            raise SystemExit('lk_conv: no CUDA device here; use --cpu-dry-run to check the script on CPU')
        torch.backends.cudnn.benchmark = True   # what a training run sets
        device, dtype = torch.device('cuda'), torch.bfloat16
    card = card_identity(device) or str(device)
    out = Path(args.out)
    summary = dict(bench='lk_conv', card=card, torch=torch.__version__)
    if args.layers:
        summary['layers'] = run_layers(args, device, dtype, card)
        save(out, 'lk_conv_layers.json', summary['layers'])    # before the step: a timeout there keeps these
    if args.step_batch:
        summary['whole_step'] = run_step(args, device, card)
        save(out, 'lk_conv_step.json', summary['whole_step'])
    print(json.dumps(dict(bench='lk_conv', card=card, out=str(out))), flush=True)
    return summary


if __name__ == '__main__':
    main()
