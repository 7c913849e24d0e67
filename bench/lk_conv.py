"""Large-kernel depthwise convolution: every large-kernel layer of RepLKNet-31B and XL, timed.

For each layer shape (bf16, channels-last, stride 1, padding k//2, groups = channels) and each
implementation present, in one run: forward, input-gradient and weight-gradient times (median of
CUDA-event timings), and the layer's floor — the larger of its bytes moved at the card's measured
copy bandwidth and its nominal multiply-adds at the card's measured bf16 matmul rate. The
implementations: ``cudnn`` (``F.conv2d`` / ``aten.convolution_backward`` with
``cudnn.benchmark=True``), ``triton`` (our direct kernels, ``pretrain.models.lk_conv``) and, on maps
of at most 1024 pixels and 64 columns, ``toeplitz`` (our banded-matrix kernels on tensor cores for
all three passes), all checked against cuDNN before timing. ratio = cudnn time / the
faster Triton algorithm's time (above 1: Triton is faster). It then times XL's
whole training step (bf16 autocast, channels-last, AdamW) with ``lk_impl='native'`` and ``'auto'``.

    python bench/lk_conv.py                      # on a GPU; one JSON line at the end
    python bench/lk_conv.py --write-table        # ... and record where Triton won, for lk_impl='auto'
    python bench/lk_conv.py --cpu-dry-run        # tiny shapes on CPU, Triton interpreted (`make test`)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (model, stage, channels of the depthwise conv, kernel, map size at 224): RepLKNet-31B has
# dw_ratio 1, XL dw_ratio 1.5 on channels (256, 512, 1024, 2048).
LAYERS = [('31B', 1, 128, 31, 56), ('31B', 2, 256, 29, 28), ('31B', 3, 512, 27, 14), ('31B', 4, 1024, 13, 7),
          ('XL', 1, 384, 27, 56), ('XL', 2, 768, 27, 28), ('XL', 3, 1536, 27, 14), ('XL', 4, 3072, 13, 7)]
DRY_LAYERS = [('tiny', 1, 8, 7, 5)]  # under Triton's interpreter: seconds per call
MAX_REL_ERROR = {'float32': 1e-4, 'bfloat16': 3e-2}


def timed(fn, device, reps: int) -> float:
    """Median milliseconds of ``fn`` over ``reps`` runs after warm-up."""
    import torch
    for _ in range(3 if device.type == 'cuda' else 1):
        fn()
    if device.type != 'cuda':
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def card_rates(device) -> dict:
    """Copy bandwidth (bytes read + written per second) and bf16 matmul FLOP/s, measured."""
    import torch
    if device.type != 'cuda':
        return dict(copy_bytes_per_s=1e10, matmul_flops_per_s=1e11, measured=False)
    src = torch.empty(2 ** 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_ms = timed(lambda: dst.copy_(src), device, 20)
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    mm_ms = timed(lambda: a @ b, device, 10)
    return dict(copy_bytes_per_s=2 * src.numel() / (copy_ms / 1e3),
                matmul_flops_per_s=2 * 8192 ** 3 / (mm_ms / 1e3), measured=True)


def floors_ms(n: int, c: int, k: int, hw: int, rates: dict) -> dict:
    """Per pass: max(bytes moved / copy rate, nominal 2*MACs / matmul rate), in ms (bf16 = 2 bytes)."""
    act = n * c * hw * hw * 2
    flops = 2 * n * c * hw * hw * k * k
    compute = flops / rates['matmul_flops_per_s'] * 1e3
    bw = rates['copy_bytes_per_s']
    # forward: read x, write y; input grad: read dy, write dx; weight grad: read x and dy.
    return {p: round(max(2 * act / bw * 1e3, compute), 4) for p in ('fwd', 'dgrad', 'wgrad')}


def passes(impl: str, x, w, dy):
    """The three passes of one implementation as zero-argument callables."""
    import torch
    import torch.nn.functional as F
    k, c = w.shape[-1], w.shape[0]
    if impl == 'cudnn':
        def backward(mask):
            return lambda: torch.ops.aten.convolution_backward(
                dy, x, w, None, [1, 1], [k // 2, k // 2], [1, 1], False, [0, 0], c, mask)
        return dict(fwd=lambda: F.conv2d(x, w, None, 1, k // 2, 1, c),
                    dgrad=backward([True, False, False]), wgrad=backward([False, True, False]))
    from pretrain.models import lk_conv
    algorithm = 'toeplitz' if impl == 'toeplitz' else 'direct'
    return dict(fwd=lambda: lk_conv.depthwise_forward(x, w, None, algorithm),
                dgrad=lambda: lk_conv.depthwise_input_grad(dy, w, algorithm),
                wgrad=lambda: lk_conv.depthwise_weight_grad(x, dy, k, algorithm))


def autotuned_tiles() -> dict:
    """The tiles the GPU autotuner picked at the last launch of each kernel (none when interpreted):
    the next round of tuning starts from them."""
    from pretrain.models import lk_conv
    picked = {name: getattr(launcher, 'best_config', None)
              for name, launcher in (('forward', lk_conv.forward_launcher), ('weight_grad', lk_conv.wgrad_launcher))}
    return {name: None if config is None else str(config) for name, config in picked.items()}


def available_impls(device, size: int) -> list:
    from pretrain.models import lk_conv
    if not lk_conv.triton_supported(device):
        return ['cudnn']
    return ['cudnn', 'triton'] + (['toeplitz'] if lk_conv.toeplitz_fits(size, size) else [])


def max_rel_error(impl_passes: dict, ref_passes: dict) -> float:
    """Largest relative difference of the three passes' results between two implementations."""
    worst = 0.0
    for name in ('fwd', 'dgrad', 'wgrad'):
        a, b = impl_passes[name](), ref_passes[name]()
        a = a[0] if isinstance(a, (tuple, list)) else a
        b = [t for t in b if t is not None][0] if isinstance(b, (tuple, list)) else b
        worst = max(worst, ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item())
    return worst


def bench_layer(layer, batch: int, device, dtype, rates: dict, reps: int) -> dict:
    import torch
    model, stage, c, k, hw = layer
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, c, hw, hw, device=device, dtype=dtype, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(x).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, 1, k, k, device=device, dtype=dtype, generator=gen) / k
    row = dict(model=model, stage=stage, channels=c, kernel=k, size=hw, batch=batch,
               floor_ms=floors_ms(batch, c, k, hw, rates))
    impls = {impl: passes(impl, x, w, dy) for impl in available_impls(device, hw)}
    for impl in impls:
        if impl != 'cudnn':
            row[f'{impl}_vs_cudnn_rel_error'] = err = max_rel_error(impls[impl], impls['cudnn'])
            if err > MAX_REL_ERROR[str(dtype).replace('torch.', '')]:
                raise SystemExit(f'lk_conv: {impl} disagrees with cuDNN on {layer} at batch {batch}: '
                                 f'relative error {err:.2e}')
    for impl, fns in impls.items():
        row[impl] = {p: round(timed(fn, device, reps), 4) for p, fn in fns.items()}
        row[impl]['total'] = round(sum(row[impl].values()), 4)
        if impl == 'triton':
            row['autotuned'] = autotuned_tiles()
    ours = [i for i in ('triton', 'toeplitz') if i in row]
    if ours:
        best = min(ours, key=lambda i: row[i]['total'])
        row['best_triton'] = 'direct' if best == 'triton' else 'toeplitz'
        row['ratio'] = {p: round(row['cudnn'][p] / row[best][p], 2) for p in row['cudnn']}
    floor_total = sum(row['floor_ms'].values())
    row['cudnn_over_floor'] = round(row['cudnn']['total'] / floor_total, 2)
    return row


def whole_step(lk_impl: str, batch: int, size: int, steps: int, device, tiny: bool) -> dict:
    """XL's (or, dry, a tiny model's) training step in ms: bf16 autocast, channels-last, AdamW."""
    import timm
    import torch
    import torch.nn.functional as F

    import pretrain.models  # noqa: F401  (registers RepLKNet)
    kwargs = dict(depths=(1, 1), channels=(8, 16), kernel_sizes=(7, 5)) if tiny else {}
    model = timm.create_model('replknet_3' if tiny else 'replknet_xl', num_classes=1000, lk_impl=lk_impl,
                              **kwargs).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    ms = timed(step, device, steps)
    return dict(ms_per_step=round(ms, 2), images_per_s=round(batch / (ms / 1e3), 1))


def write_table(rows: list, device_name: str, dtype: str) -> dict:
    """Record, for lk_impl='auto', the shapes where Triton's three passes beat cuDNN's at every batch,
    with the algorithm that was faster at the largest batch."""
    from pretrain.models.lk_impl import MEASURED_TABLE, TABLE_FORMAT, shape_key
    wins, algorithm = {}, {}
    for row in sorted(rows, key=lambda r: r['batch']):
        if 'best_triton' in row:
            key = shape_key(row['channels'], row['kernel'], row['size'], row['size'])
            best = row['triton' if row['best_triton'] == 'direct' else 'toeplitz']['total']
            wins.setdefault(key, []).append(best < row['cudnn']['total'])
            algorithm[key] = row['best_triton']
    faster = {key: algorithm[key] for key in sorted(wins) if all(wins[key])}
    table = json.loads(MEASURED_TABLE.read_text())
    if table.get('format') != TABLE_FORMAT:
        table = dict(format=TABLE_FORMAT, about=table.get('about', ''), devices={})
    table.setdefault('devices', {}).setdefault(device_name, {})[dtype] = faster
    MEASURED_TABLE.write_text(json.dumps(table, indent=2) + '\n')
    return dict(table=str(MEASURED_TABLE), device=device_name, dtype=dtype, faster=faster)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--cpu-dry-run', action='store_true', help='tiny shapes in fp32 on CPU')
    ap.add_argument('--batches', type=int, nargs='+', default=[32, 64])
    ap.add_argument('--reps', type=int, default=20)
    ap.add_argument('--step-batch', type=int, default=32, help="batch of XL's whole training step (0: skip it)")
    ap.add_argument('--write-table', action='store_true',
                    help="record where Triton won in pretrain/models/lk_conv_measured.json (lk_impl='auto')")
    args = ap.parse_args(argv)
    import torch
    if args.cpu_dry_run:
        # Triton's interpreter runs the kernels on CPU when TRITON_INTERPRET=1 is set (before import).
        device, dtype, layers, batches, reps = torch.device('cpu'), torch.float32, DRY_LAYERS, [2], 1
    else:
        if not torch.cuda.is_available():
            raise SystemExit('lk_conv: no CUDA device here; use --cpu-dry-run to check the script on CPU')
        torch.backends.cudnn.benchmark = True
        device, dtype, layers, batches, reps = torch.device('cuda'), torch.bfloat16, LAYERS, args.batches, args.reps
    rates = card_rates(device)
    rows = []
    for batch in batches:
        for layer in layers:
            row = bench_layer(layer, batch, device, dtype, rates, reps)
            rows.append(row)
            print(f"{row['model']:>4} s{row['stage']} C={row['channels']:<5} k={row['kernel']:<3} "
                  f"{row['size']:>2}px N={batch:<3} floor={sum(row['floor_ms'].values()):8.3f} ms  "
                  + '  '.join(f"{i} {row[i]['fwd']:.3f}/{row[i]['dgrad']:.3f}/{row[i]['wgrad']:.3f}"
                              for i in ('cudnn', 'triton', 'toeplitz') if i in row)
                  + (f"  ratio {row['ratio']}" if 'ratio' in row else ''), flush=True)
    device_name = 'cpu (dry run)' if args.cpu_dry_run else torch.cuda.get_device_name()
    summary = dict(bench='lk_conv', device=device_name, torch=torch.__version__,
                   rates={k: (round(v / 1e12, 3) if isinstance(v, float) else v) for k, v in rates.items()},
                   rate_units='TB/s copy (read+write), TFLOP/s bf16 matmul', rows=rows)
    if args.write_table and not args.cpu_dry_run:
        summary['table'] = write_table(rows, device_name, str(dtype).replace('torch.', ''))
        print(f"lk_impl='auto' table: {summary['table']}", flush=True)
    if args.step_batch:
        # 'auto' after the table (if written): the step shows what a config with lk_impl='auto' gets.
        from pretrain.models.lk_impl import measured_faster
        measured_faster.cache_clear()
        batch, size, steps = (2, 32, 2) if args.cpu_dry_run else (args.step_batch, 224, 5)
        step = {impl: whole_step(impl, batch, size, steps, device, args.cpu_dry_run) for impl in ('native', 'auto')}
        step['speedup_auto_over_native'] = round(step['native']['ms_per_step'] / step['auto']['ms_per_step'], 3)
        summary['xl_step' if not args.cpu_dry_run else 'tiny_step'] = step
        print(f'whole training step, batch {batch} at {size}px: {step}', flush=True)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == '__main__':
    main()
