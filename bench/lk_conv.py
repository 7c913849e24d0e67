"""Large-kernel depthwise convolution: every large-kernel layer of RepLKNet-31B and XL, timed.

For each layer shape (bf16, channels-last, stride 1, padding k//2, groups = channels) and each
implementation present, in one run: forward, input-gradient and weight-gradient times (median of
CUDA-event timings), and the layer's floor — the larger of its bytes moved at the card's measured
copy bandwidth and its nominal multiply-adds at the card's measured bf16 matmul rate. The
implementations: ``cudnn`` (``F.conv2d`` / ``aten.convolution_backward`` with
``cudnn.benchmark=True``) and, once it exists, ``triton`` (``pretrain.models.lk_conv``).
ratio = cudnn time / triton time (above 1: Triton is faster).

    python bench/lk_conv.py                      # on a GPU; one JSON line at the end
    python bench/lk_conv.py --cpu-dry-run        # tiny shapes on CPU (part of `make test`)
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
DRY_LAYERS = [('tiny', 1, 8, 7, 9), ('tiny', 2, 12, 5, 4)]


def timed(fn, device, reps: int) -> float:
    """Median milliseconds of ``fn`` over ``reps`` runs after warm-up."""
    import torch
    for _ in range(3):
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
    return dict(fwd=lambda: lk_conv.depthwise_forward(x, w),
                dgrad=lambda: lk_conv.depthwise_input_grad(dy, w),
                wgrad=lambda: lk_conv.depthwise_weight_grad(x, dy, k))


def available_impls(device) -> list:
    impls = ['cudnn']
    try:
        from pretrain.models import lk_conv
    except ImportError:
        return impls
    if lk_conv.triton_supported(device):
        impls.append('triton')
    return impls


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
    for impl in available_impls(device):
        row[impl] = {p: round(timed(fn, device, reps), 4) for p, fn in passes(impl, x, w, dy).items()}
        row[impl]['total'] = round(sum(row[impl].values()), 4)
    if 'triton' in row:
        row['ratio'] = {p: round(row['cudnn'][p] / row['triton'][p], 2) for p in row['cudnn']}
    floor_total = sum(row['floor_ms'].values())
    row['cudnn_over_floor'] = round(row['cudnn']['total'] / floor_total, 2)
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--cpu-dry-run', action='store_true', help='tiny shapes in fp32 on CPU')
    ap.add_argument('--batches', type=int, nargs='+', default=[32, 64])
    ap.add_argument('--reps', type=int, default=20)
    args = ap.parse_args(argv)
    import torch
    if args.cpu_dry_run:
        device, dtype, layers, batches, reps = torch.device('cpu'), torch.float32, DRY_LAYERS, [2], 2
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
                              for i in ('cudnn', 'triton') if i in row)
                  + (f"  ratio {row['ratio']}" if 'ratio' in row else ''), flush=True)
    device_name = 'cpu (dry run)' if args.cpu_dry_run else torch.cuda.get_device_name()
    summary = dict(bench='lk_conv', device=device_name, torch=torch.__version__,
                   rates={k: (round(v / 1e12, 3) if isinstance(v, float) else v) for k, v in rates.items()},
                   rate_units='TB/s copy (read+write), TFLOP/s bf16 matmul', rows=rows)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == '__main__':
    main()
