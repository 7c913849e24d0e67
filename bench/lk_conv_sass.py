"""What ptxas makes of the large-kernel convolution's Triton kernels for an H100, on any machine.

No GPU needed: each kernel is compiled for sm_90 the way Triton's launcher would specialize it for
a RepLKNet layer in channels-last bf16 (an integer argument equal to 1 becomes a constant, one
divisible by 16 gets that hint, pointers are 16-byte aligned), with every tile the GPU autotuner may
pick, and Triton's bundled ``ptxas`` and ``cuobjdump`` report on the machine code:

- registers per thread and spill bytes (a spill in the hot loop is a slow kernel on any card);
- the hot loop: the innermost loop doing the multiply-adds (FFMA; HMMA/HGMMA on tensor cores, for
  the Toeplitz kernel), its instructions per multiply-add of a thread, its global and shared loads
  and its barriers. Instructions issued per multiply-add bound a kernel's time from below at the card's issue
  rate; fewer is faster when nothing else (memory, latency) binds.

This is static evidence about the code, not a timing: `bench/lk_conv.py` times the kernels on a GPU.

    python bench/lk_conv_sass.py                                    # XL's stage 3; a table, then one JSON line
    python bench/lk_conv_sass.py --layer 1536,27,14 --layer 3072,13,7,fp32  # channels,kernel,size[,dtype]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The compiler cannot run where Triton's interpreter is on (tests/conftest.py turns it on): this
# tool compiles, so it runs without it, in its own process.
os.environ.pop('TRITON_INTERPRET', None)
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Multiply-adds per thread of one instruction: FFMA one; a warp's HMMA.MNK (m16n8k16 is written
# 16816) M*N*K over 32 threads; a warpgroup's HGMMA.MxNxK over 128.
FFMA = re.compile(r'\bFFMA\b')
HMMA = re.compile(r'\bHMMA\.(16)(8)(16|8)\b')
HGMMA = re.compile(r'\bHGMMA\.(\d+)x(\d+)x(\d+)\b')


def multiply_adds(op: str) -> float:
    """Multiply-adds per thread done by one instruction (0 for anything else)."""
    if FFMA.search(op):
        return 1
    for pattern, threads in ((HMMA, 32), (HGMMA, 128)):
        shape = pattern.search(op)
        if shape:
            m, n, k = map(int, shape.groups())
            return m * n * k / threads
    return 0


def compile_as_launched(fn, args: dict, constexprs: dict, num_warps: int, capability: int = 90):
    """Compile ``fn`` for ``sm_<capability>``; ``args`` maps each runtime argument to a pointer type
    ('*bf16') or the integer a launch would pass, specialized as Triton's launcher does."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    signature, attrs, constants = {}, {}, dict(constexprs)
    for index, name in enumerate(fn.arg_names):
        if name in constants:
            signature[name] = 'constexpr'
        elif isinstance(args[name], str):
            signature[name] = args[name]
            attrs[(index,)] = [['tt.divisibility', 16]]
        elif args[name] == 1:
            signature[name], constants[name] = 'constexpr', 1
        else:
            signature[name] = 'i32'
            if args[name] % 16 == 0:
                attrs[(index,)] = [['tt.divisibility', 16]]
    source = ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=GPUTarget('cuda', capability, 32), options=dict(num_warps=num_warps))


def nvidia_tool(name: str) -> str:
    import triton
    return str(Path(triton.__file__).parent / 'backends' / 'nvidia' / 'bin' / name)


def ptxas_usage(kernel, capability: int = 90) -> dict:
    """Registers per thread and spill bytes, from ``ptxas -v`` on the kernel's PTX."""
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / 'kernel.ptx'
        ptx.write_text(kernel.asm['ptx'])
        out = subprocess.run([nvidia_tool('ptxas'), f'-arch=sm_{capability}a', '-v', str(ptx),
                              '-o', str(Path(tmp) / 'kernel.cubin')], capture_output=True, text=True, check=True)
    text = out.stderr
    return dict(registers=int(re.search(r'Used (\d+) registers', text).group(1)),
                spill_bytes=sum(int(b) for b in re.findall(r'(\d+) bytes spill (?:stores|loads)', text)))


def sass(kernel) -> list:
    """[(address, instruction)] of the kernel's machine code."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / 'kernel.cubin'
        cubin.write_bytes(kernel.asm['cubin'])
        text = subprocess.run([nvidia_tool('cuobjdump'), '-sass', str(cubin)],
                              capture_output=True, text=True, check=True).stdout
    return [(int(a, 16), op.strip()) for a, op in re.findall(r'/\*([0-9a-f]{4,})\*/\s+([^;]*);', text)]


LOAD_WIDTHS = {'128': 16, '64': 8, 'U16': 2, 'S16': 2, 'U8': 1, 'S8': 1}   # suffix -> bytes; none: 4


def global_load_bytes(op: str) -> int:
    """Bytes one lane reads with a global load (LDG, or LDGSTS: global to shared); 0 for anything else."""
    words = [w for w in op.split() if not w.startswith('@')]   # '@P0 LDG.E.U16 ...': a predicated load
    name = words[0] if words else ''
    kind, *suffixes = name.split('.')
    if kind not in ('LDG', 'LDGSTS'):
        return 0
    return next((LOAD_WIDTHS[s] for s in suffixes if s in LOAD_WIDTHS), 4)


def hot_loop(code: list) -> dict:
    """The shortest loop (a backward branch and its target) that does multiply-adds: its instructions
    per multiply-add of a thread, its loads and barriers."""
    index = {address: i for i, (address, _) in enumerate(code)}
    best = None
    for i, (address, op) in enumerate(code):
        target = re.search(r'\bBRA (0x[0-9a-f]+)', op)
        if not target or int(target.group(1), 16) >= address or int(target.group(1), 16) not in index:
            continue
        body = [o for _, o in code[index[int(target.group(1), 16)]:i + 1]]
        macs = sum(multiply_adds(o) for o in body)
        if macs and (best is None or len(body) < best['instructions']):
            best = dict(instructions=len(body), multiply_adds=macs, per_multiply_add=round(len(body) / macs, 2),
                        global_loads=sum('LDG' in o for o in body), shared_loads=sum('LDS' in o for o in body),
                        global_load_bytes=sorted(b for b in map(global_load_bytes, body) if b),
                        barriers=sum(bool(re.search(r'\bBAR\b', o)) for o in body))
    return best or {}


def layer_args(kernel_name: str, c: int, kernel: int, hw: int, dtype: str = 'bf16', n: int = 64) -> dict:
    """A launch's runtime arguments for a channels-last layer [n, c, hw, hw] (batch 64) in ``dtype``."""
    strides = dict(n=hw * hw * c, c=1, h=hw * c, w=c)
    x = {f'sx{k}': v for k, v in strides.items()}
    if kernel_name.startswith('toeplitz'):   # planar copies: [n, c, hw, pitch]
        from pretrain.models.lk_conv import toeplitz_pitch
        plane = -(-hw * toeplitz_pitch(hw) // 16) * 16       # lk_conv.planar_buffer's plane
        planar = dict(sxn=c * plane, sxc=plane, sdn=c * plane, sdc=plane)   # y: channels-last
        return dict(x_ptr=f'*{dtype}', band_ptr=f'*{dtype}', b_ptr=f'*{dtype}', y_ptr=f'*{dtype}', dy_ptr=f'*{dtype}',
                    part_ptr='*fp32', N=n, C=c, H=hw, W=hw, **planar, **{f'sy{k}': v for k, v in strides.items()})
    if kernel_name.endswith('weight_grad'):
        from pretrain.models.lk_conv import weight_grad_split
        return dict(x_ptr=f'*{dtype}', dy_ptr=f'*{dtype}', part_ptr='*fp32', N=n, C=c, H=hw, W=hw,
                    IMAGES_PER_PROGRAM=weight_grad_split(n, c, kernel)[2], **x,
                    **{f'sd{k}': v for k, v in strides.items()})
    return dict(x_ptr=f'*{dtype}', w_ptr='*fp32', b_ptr=f'*{dtype}', y_ptr=f'*{dtype}', N=n, C=c, H=hw, W=hw,
                **x, **{f'sy{k}': v for k, v in strides.items()})


def report(c: int, k: int, hw: int, dtype: str = 'bf16') -> list:
    """One row per kernel and autotune tile at one layer shape and dtype ('bf16' or 'fp32': the
    Toeplitz kernels then multiply at full fp32 precision, not TF32)."""
    import triton

    from pretrain.models import lk_conv, lk_conv_kernels
    ieee = dtype == 'fp32'
    builds = [('forward', lk_conv_kernels.depthwise_fwd_kernel, dict(K=k, HAS_BIAS=True, **meta), warps)
              for meta, warps in lk_conv.forward_tiles()]
    builds += [('weight_grad', lk_conv_kernels.depthwise_wgrad_kernel,
                dict(K=k, KPAD=triton.next_power_of_2(k), BLOCK_C=lk_conv.WGRAD_BLOCK_C, **meta), warps)
               for meta, warps in lk_conv.weight_grad_tiles()]
    if lk_conv.toeplitz_fits(hw, hw):
        builds.append(('toeplitz_forward', lk_conv_kernels.depthwise_toeplitz_fwd_kernel,
                       dict(K=k, HAS_BIAS=True, UPCAST=False, IEEE=ieee, **lk_conv.toeplitz_tile(hw)),
                       lk_conv.toeplitz_warps(hw)))
        builds.append(('toeplitz_weight_grad', lk_conv_kernels.depthwise_toeplitz_wgrad_kernel,
                       dict(K=k, UPCAST=False, IEEE=ieee, **lk_conv.toeplitz_wgrad_tile(hw)),
                       lk_conv.toeplitz_warps(hw)))
    kernels = [compile_as_launched(fn, {a: v for a, v in layer_args(name, c, k, hw, dtype).items() if a in fn.arg_names},
                                   constexprs, warps) for name, fn, constexprs, warps in builds]
    # ptxas and cuobjdump are separate processes (~0.4 s each): read the kernels side by side.
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        readings = list(pool.map(lambda kernel: (ptxas_usage(kernel), hot_loop(sass(kernel))), kernels))
    rows = []
    for (name, _, constexprs, warps), (usage, loop) in zip(builds, readings):
        tile = {key: v for key, v in constexprs.items() if key.startswith('BLOCK') or key in ('SPREAD_TAPS', 'WPAD')}
        rows.append(dict(kernel=name, channels=c, k=k, size=hw, dtype=dtype, tile=tile, num_warps=warps, **usage,
                         hot_loop=loop))
    return rows


def layer(text: str) -> tuple:
    """'C,k,px' or 'C,k,px,dtype' -> (channels, kernel, map size, dtype: bf16 unless given)."""
    parts = text.split(',')
    try:
        c, k, hw = (int(v) for v in parts[:3])
    except ValueError:
        c = None
    if c is None or len(parts) not in (3, 4) or parts[3:] not in ([], ['bf16'], ['fp32']):
        raise argparse.ArgumentTypeError(f'a layer is channels,kernel,size[,bf16|fp32] (e.g. 1536,27,14); got {text!r}')
    if k % 2 == 0 or min(c, k, hw) < 1:
        raise argparse.ArgumentTypeError(f'a layer needs positive sizes and an odd kernel; got {text!r}')
    return c, k, hw, (parts[3:] or ['bf16'])[0]


def lane_widths(loop: dict) -> str:
    """'[2 B x 8, 4 B x 16]': the hot loop's global loads by bytes per lane."""
    widths = loop.get('global_load_bytes', [])
    return '[' + ', '.join(f'{b} B x {widths.count(b)}' for b in sorted(set(widths))) + ']'


def main(argv=None) -> list:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--layer', type=layer, action='append',
                    help="channels,kernel,map size[,bf16|fp32]; repeatable (default 1536,27,14: XL's stage 3 "
                         "in bf16; maps the Toeplitz kernels take, up to 32x32, build them too)")
    args = ap.parse_args(argv)
    rows = [row for spec in args.layer or [(1536, 27, 14, 'bf16')] for row in report(*spec)]
    for row in rows:
        loop = row['hot_loop']
        print(f"{row['channels']:>4} ch {row['k']:>2}x{row['k']:<2} {row['size']:>2} px {row['dtype']}  "
              f"{row['kernel']:<20} {json.dumps(row['tile']):<69} warps {row['num_warps']}  "
              f"{row['registers']:>3} registers  spills {row['spill_bytes']:>4} B  hot loop: "
              f"{loop.get('per_multiply_add', float('nan')):5.2f} instructions per multiply-add "
              f"({loop.get('global_loads', 0)} global {lane_widths(loop)}, {loop.get('shared_loads', 0)} shared loads, "
              f"{loop.get('barriers', 0)} barriers)", flush=True)
    print(json.dumps(dict(bench='lk_conv_sass', target='sm_90', rows=rows)), flush=True)
    return rows


if __name__ == '__main__':
    main()
