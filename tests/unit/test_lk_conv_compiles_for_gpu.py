"""The Triton kernels compile for an H100 (sm_90) on this CPU machine, ahead of time, with every tile
the GPU autotuner may pick, specialized as Triton's launcher would for RepLKNet layers: what the
interpreter cannot check (types, layouts, register tiles that do not lower, spills, a hot loop that
got slow) fails here instead of on a cluster. bench/lk_conv_sass.py compiles them (Triton's bundled
ptxas) and reads the machine code; it runs in a subprocess because the compiler cannot run where
Triton's interpreter is on (tests/conftest.py turns it on)."""
import json
import os
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

pytestmark = pytest.mark.slow  # compiles ~24 kernels; the same torch and triton pins in `make lower-bounds`

# XL's stage-3 and stage-4 layers in bf16: 27x27 at 14 px and 13x13 at 7 px (both also run the
# Toeplitz kernels); the second in fp32 too, where the Toeplitz kernels multiply at full precision.
LAYERS = ['1536,27,14', '3072,13,7', '3072,13,7,fp32']


@pytest.fixture(scope='module')
def reports() -> dict:
    """Rows of bench/lk_conv_sass.py by (map size, dtype): bf16, the training dtype, and fp32, where
    the Toeplitz kernels multiply at full precision."""
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    args = [arg for spec in LAYERS for arg in ('--layer', spec)]
    proc = subprocess.run([sys.executable, 'bench/lk_conv_sass.py', *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])['rows']
    return {(size, dtype): [row for row in rows if row['size'] == size and row['dtype'] == dtype]
            for size, dtype in ((14, 'bf16'), (7, 'bf16'), (7, 'fp32'))}


def test_every_kernel_and_autotune_tile_builds_for_sm90_without_spilling(reports):
    from pretrain.models import lk_conv
    for rows in reports.values():
        kinds = [row['kernel'] for row in rows]
        assert kinds.count('forward') == len(lk_conv.FWD_TILES)
        assert kinds.count('weight_grad') == len(lk_conv.WGRAD_TILES)
        assert kinds.count('toeplitz_forward') == kinds.count('toeplitz_weight_grad') == 1
        spilled = [(row['kernel'], row['tile'], row['spill_bytes']) for row in rows if row['spill_bytes']]
        assert not spilled, f'these tiles spill registers on sm_90: {spilled}'


def test_each_kernel_has_a_tile_whose_hot_loop_issues_few_instructions_per_multiply_add(reports):
    # Instructions issued per multiply-add bound a kernel's time from below at the card's issue rate.
    # Before the row-blocked forward, fp32 taps, the once-per-program column sum and whole-row
    # Toeplitz steps (commit cf32ef3), the best tiles took 4.85 (forward), 10.4 at 14 px and 12.9 at
    # 7 px (weight gradient, two of its tiles spilling there) and 1.27 (Toeplitz); there was no
    # tensor-core weight gradient.
    bounds = {'forward': 3.0, 'weight_grad': 5.5, 'toeplitz_forward': 1.0, 'toeplitz_weight_grad': 2.0}
    for (size, dtype), rows in reports.items():
        if dtype != 'bf16':
            continue
        for kernel, bound in bounds.items():
            best = min(row['hot_loop']['per_multiply_add'] for row in rows if row['kernel'] == kernel)
            assert best <= bound, f'{kernel} at {size} px: {best} instructions per multiply-add (bound {bound})'
