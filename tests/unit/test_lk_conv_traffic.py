"""bench/lk_conv_traffic.py: what it measures, and the Toeplitz kernels' goal held by it (loads of
at least 8 bytes a lane using at least half of what they fetch; they used 6-9 % before)."""
import sys

import numpy as np
import pytest
from helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / 'bench'))
import lk_conv_traffic  # noqa: E402

from pretrain.models import lk_conv  # noqa: E402


def test_a_load_of_scattered_elements_uses_one_element_of_each_sector():
    loads = lk_conv_traffic.Loads()
    loads.record(10, np.arange(16) * 64, itemsize=2)           # 2-byte elements 64 bytes apart
    loads.record(11, np.arange(64) * 2, itemsize=2)            # 128 contiguous bytes
    summary = loads.summary()['loads']
    assert summary[10] == dict(requests=1, used_share=round(2 / 32, 3), bytes_per_lane=2.0)
    assert summary[11] == dict(requests=1, used_share=1.0, bytes_per_lane=16.0)


@pytest.mark.skipif(not lk_conv.interpreting(), reason='traces loads under the interpreter')
def test_toeplitz_loads_are_vector_wide_and_use_what_they_fetch():
    rows = {row['kernel']: row for row in lk_conv_traffic.report(5, 6)}
    for kernel in ('toeplitz_forward', 'toeplitz_input_grad', 'toeplitz_weight_grad'):
        assert rows[kernel]['used_share'] >= 0.5, rows[kernel]
        assert all(load['bytes_per_lane'] >= 8 for load in rows[kernel]['loads'].values()), rows[kernel]
