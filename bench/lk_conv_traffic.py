"""How much of what the large-kernel convolution's Triton kernels fetch they use, on any machine.

Each kernel runs, through the operator's own wrappers (``pretrain.models.lk_conv``, so whatever
layout they hand the kernels is what is measured), under Triton's interpreter on one small layer
in the training layout (channels-last, bf16 unless asked), and every load is recorded: the bytes
its unmasked lanes ask for, and the 32-byte sectors those bytes lie in (the unit a GPU's memory
system fetches). Per kernel and per load (by source line of ``lk_conv_kernels.py``):

- ``used_share``: bytes asked for / bytes of the sectors fetched. 2 of 32 means each sector
  fetched serves one 2-byte element and the rest is read for nothing (unless a cache keeps it);
- ``bytes_per_lane``: the contiguous bytes one lane could load with a single instruction (the run
  of consecutive addresses, up to 16 bytes): what vector loads can reach. ``bench/lk_conv_sass.py``
  reports the widths ptxas actually emitted.

A load is counted as one request of the whole program (all its warps): sectors two warps share
count once, which flatters a little; the caches' reuse across requests is not counted at all.
The channel count is cut to 16 (Toeplitz: one channel per program) or two blocks of channels and
the batch to 8 images or 1, which changes neither strides' effect on sectors nor the per-request figures. This is static
evidence about access patterns, not a timing.

    python bench/lk_conv_traffic.py                       # XL stage 3's layer shape: 27x27 on 14 px
    python bench/lk_conv_traffic.py --layer 13,7 --dtype fp32
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SECTOR_BYTES = 32
MAX_VECTOR_BYTES = 16
KERNELS_FILE = 'lk_conv_kernels.py'


class Loads:
    """Per source line of the kernels: requests, bytes asked for, bytes of sectors fetched, and the
    mean contiguous run per lane (capped at a 16-byte vector)."""

    def __init__(self):
        self.lines = defaultdict(lambda: dict(requests=0, used=0, fetched=0, lane_bytes=0.0))

    def record(self, line: int, addresses, itemsize: int) -> None:
        import numpy as np
        wanted = np.unique(addresses.astype(np.int64))
        if wanted.size == 0:
            return
        row = self.lines[line]
        row['requests'] += 1
        row['used'] += int(wanted.size) * itemsize
        row['fetched'] += int(np.unique(wanted // SECTOR_BYTES).size) * SECTOR_BYTES
        row['lane_bytes'] += contiguous_run_bytes(wanted, itemsize)

    def summary(self) -> dict:
        per_line = {line: dict(requests=r['requests'], used_share=round(r['used'] / r['fetched'], 3),
                               bytes_per_lane=round(r['lane_bytes'] / r['requests'], 1))
                    for line, r in sorted(self.lines.items())}
        used = sum(r['used'] for r in self.lines.values())
        fetched = sum(r['fetched'] for r in self.lines.values())
        return dict(used_share=round(used / fetched, 3) if fetched else None, loads=per_line)


def contiguous_run_bytes(sorted_addresses, itemsize: int) -> float:
    """Mean bytes of the runs of consecutive elements the addresses form, capped at one vector."""
    import numpy as np
    breaks = np.flatnonzero(np.diff(sorted_addresses) != itemsize)
    runs = np.diff(np.concatenate(([0], breaks + 1, [sorted_addresses.size])))
    return float(np.minimum(runs * itemsize, MAX_VECTOR_BYTES).mean())


def kernel_line() -> int:
    """The line of lk_conv_kernels.py whose load the interpreter is executing."""
    frame = sys._getframe(2)
    while frame is not None and not frame.f_code.co_filename.endswith(KERNELS_FILE):
        frame = frame.f_back
    return frame.f_lineno if frame is not None else -1


@contextmanager
def traced(loads: Loads):
    """Every interpreted ``tl.load`` recorded into ``loads``."""
    from triton.runtime import interpreter
    original = interpreter.InterpreterBuilder.create_masked_load

    def create_masked_load(self, ptrs, mask, other, *rest):
        itemsize = interpreter._get_np_dtype(ptrs.get_element_ty()).itemsize
        loads.record(kernel_line(), ptrs.data[mask.data.astype(bool)], itemsize)
        return original(self, ptrs, mask, other, *rest)
    interpreter.InterpreterBuilder.create_masked_load = create_masked_load
    try:
        yield loads
    finally:
        interpreter.InterpreterBuilder.create_masked_load = original


def layer_tensors(channels: int, k: int, hw: int, dtype, n: int):
    import torch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, channels, hw, hw, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(n, channels, hw, hw, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels, 1, k, k, generator=g).to(dtype)
    return x, dy, weight


def passes(algorithm: str):
    """(pass name, function of (x, dy, weight)) for one algorithm, through the operator's wrappers."""
    from pretrain.models import lk_conv
    prefix = '' if algorithm == 'direct' else f'{algorithm}_'
    return [(f'{prefix}forward', lambda x, dy, w: lk_conv.depthwise_forward(x, w, None, algorithm)),
            (f'{prefix}input_grad', lambda x, dy, w: lk_conv.depthwise_input_grad(dy, w, algorithm)),
            (f'{prefix}weight_grad', lambda x, dy, w: lk_conv.depthwise_weight_grad(x, dy, w.shape[-1], algorithm))]


def report(k: int, hw: int, dtype: str = 'bf16') -> list:
    """One row per algorithm and pass at one layer shape (kernel ``k`` on ``hw`` x ``hw`` maps)."""
    import torch

    from pretrain.models import lk_conv
    torch_dtype = dict(bf16=torch.bfloat16, fp32=torch.float32)[dtype]
    algorithms = ['direct'] + (['toeplitz'] if lk_conv.toeplitz_fits(hw, hw) else [])
    rows = []
    for algorithm in algorithms:
        # Channels-last puts a pixel's channels side by side: with at least 32 bytes of them, a
        # program of the direct kernels (a block of channels) or of Toeplitz (one channel) touches
        # the same sectors per request as at XL's width; interpreting every channel would take hours.
        channels = 16 if algorithm == 'toeplitz' else 2 * max(tile['BLOCK_C'] for tile, _ in lk_conv.forward_tiles())
        x, dy, weight = layer_tensors(channels, k, hw, torch_dtype, n=8 if algorithm == 'toeplitz' else 1)
        for name, run in passes(algorithm):
            loads = Loads()
            with traced(loads):
                run(x, dy, weight)
            rows.append(dict(kernel=name, k=k, size=hw, dtype=dtype, **loads.summary()))
    return rows


def layer(text: str) -> tuple:
    try:
        k, hw = (int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'a layer is kernel,size (e.g. 27,14); got {text!r}') from None
    if k % 2 == 0 or min(k, hw) < 1:
        raise argparse.ArgumentTypeError(f'a layer needs positive sizes and an odd kernel; got {text!r}')
    return k, hw


def main(argv=None) -> list:
    os.environ['TRITON_INTERPRET'] = '1'   # before triton is imported: the kernels run in numpy
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--layer', type=layer, default=(27, 14), help='kernel,map size (default 27,14: XL stage 3)')
    ap.add_argument('--dtype', choices=('bf16', 'fp32'), default='bf16')
    args = ap.parse_args(argv)
    rows = report(*args.layer, args.dtype)
    for row in rows:
        per_load = ', '.join(f"line {line}: {r['used_share']:.0%} used, {r['bytes_per_lane']:g} B/lane"
                             for line, r in row['loads'].items())
        print(f"{row['k']:>2}x{row['k']:<2} {row['size']:>2} px {row['dtype']}  {row['kernel']:<22} "
              f"{row['used_share']:6.1%} of fetched bytes used  ({per_load})", flush=True)
    print(json.dumps(dict(bench='lk_conv_traffic', sector_bytes=SECTOR_BYTES, rows=rows)), flush=True)
    return rows


if __name__ == '__main__':
    main()
