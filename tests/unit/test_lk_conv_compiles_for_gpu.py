"""The Triton kernels compile for an H100 (sm_90) on this CPU machine, ahead of time, with every tile
the GPU autotuner may pick: what the interpreter cannot check (types, layouts, register tiles that
do not lower) fails here instead of on a cluster. Triton's bundled ptxas builds the cubin.

The compiler runs in a subprocess without TRITON_INTERPRET: the interpreter, once active in a
process (tests/conftest.py turns it on), patches triton.language and the compiler cannot run there."""
import json
import os
import subprocess
import sys

import pytest

from helpers import REPO_ROOT

pytestmark = pytest.mark.slow  # 14 compilations; the same torch and triton pins in `make lower-bounds`


def compile_every_tile() -> list:
    """(kernel, k, tile, cubin bytes): every autotune tile at k = 27 in bf16, the Toeplitz kernel in
    bf16 and fp32 (the kernel size only changes an unrolled loop's length)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from pretrain.models import lk_conv, lk_conv_kernels
    h100 = GPUTarget('cuda', 90, 32)

    def build(fn, pointer_types, constexprs, num_warps):
        signature = {name: pointer_types.get(name, 'i32') for name in fn.arg_names}
        signature.update({name: 'constexpr' for name in constexprs})
        return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                              target=h100, options=dict(num_warps=num_warps))

    built = []
    for k, count in ((27, None),):
        for block_w, block_c, warps in lk_conv.FWD_TILES[:count]:
            kernel = build(lk_conv_kernels.depthwise_fwd_kernel,
                           {name: '*bf16' for name in ('x_ptr', 'w_ptr', 'b_ptr', 'y_ptr')},
                           dict(K=k, HAS_BIAS=True, BLOCK_W=block_w, BLOCK_C=block_c), warps)
            built.append(('forward', k, [block_w, block_c, warps], len(kernel.asm['cubin'])))
        for block_w, warps in lk_conv.WGRAD_TILES[:count]:
            kernel = build(lk_conv_kernels.depthwise_wgrad_kernel,
                           {'x_ptr': '*bf16', 'dy_ptr': '*bf16', 'part_ptr': '*fp32'},
                           dict(K=k, KPAD=triton.next_power_of_2(k), BLOCK_W=block_w,
                                BLOCK_C=lk_conv.WGRAD_BLOCK_C), warps)
            built.append(('weight_grad', k, [block_w, warps], len(kernel.asm['cubin'])))
    for dtype, ieee in (('bf16', False), ('fp32', True)):
        kernel = build(lk_conv_kernels.depthwise_toeplitz_fwd_kernel,
                       {name: f'*{dtype}' for name in ('x_ptr', 'w_ptr', 'b_ptr', 'y_ptr')},
                       dict(K=27, HAS_BIAS=True, UPCAST=False, IEEE=ieee, **lk_conv.TOEPLITZ_TILE), 4)
        built.append(('toeplitz_forward', 27, [dtype], len(kernel.asm['cubin'])))
    return built


def test_every_kernel_and_autotune_tile_builds_for_sm90():
    from pretrain.models import lk_conv
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / 'tests')])
    proc = subprocess.run([sys.executable, __file__], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    built = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(built) == len(lk_conv.FWD_TILES) + len(lk_conv.WGRAD_TILES) + 2
    assert all(size > 0 for *_, size in built)


if __name__ == '__main__':
    print(json.dumps(compile_every_tile()))
