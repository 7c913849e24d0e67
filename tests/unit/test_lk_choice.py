"""lk_impl='auto' decides by measurement, once per card: the fastest of cuDNN and the Triton algorithms
over the three passes, cached on disk per card and torch/triton version; calls the kernels refuse
run nn.Conv2d. Measurements are injected here (a timer per candidate); the GPU check times for real."""
import json
import logging

import pytest
import torch

from pretrain.models import lk_choice, lk_conv, lk_impl
from pretrain.models.lk_measure import LayerShape

EVERY = lk_choice.EVERY_CANDIDATE
XL_STAGE3 = LayerShape('bfloat16', True, 1536, 27, 14, 14)
XL_STAGE1 = LayerShape('bfloat16', True, 384, 27, 56, 56)   # too large a map for the Toeplitz kernels


class Timer:
    """An injected measurement: fixed totals per candidate, and a record of what was timed."""

    def __init__(self, **totals):
        self.totals, self.calls = totals, []

    def __call__(self, candidate, shape, batch):
        self.calls.append((candidate, shape.key(), batch))
        return dict(fwd=0.0, dgrad=0.0, wgrad=0.0, total=self.totals[candidate])


def refuse_to_measure(candidate, shape, batch):
    raise AssertionError(f'measured {candidate} again for {shape}')


def test_the_fastest_of_the_three_passes_wins_and_only_candidates_that_fit_are_timed():
    timer = Timer(cudnn=9.0, direct=3.0, toeplitz=1.2)
    d = lk_choice.decide('Card X', XL_STAGE3, EVERY, 32, timer)
    assert (d.algorithm, d.source, d.batch) == ('toeplitz', 'measured', 32)
    assert d.times_ms == {'cudnn': 9.0, 'direct': 3.0, 'toeplitz': 1.2}
    timer = Timer(cudnn=9.0, direct=30.0)
    allowed = tuple(c for c in EVERY if c in ('cudnn', 'direct'))   # what choose() keeps at 56 px
    assert lk_choice.decide('Card X', XL_STAGE1, allowed, 32, timer).algorithm == 'cudnn'
    assert [c for c, _, _ in timer.calls] == ['cudnn', 'direct']


def test_a_shape_is_measured_once_per_card_then_read_from_the_cache():
    lk_choice.decide('Card X', XL_STAGE3, EVERY, 32, Timer(cudnn=9.0, direct=3.0, toeplitz=1.2))
    again = lk_choice.decide('Card X', XL_STAGE3, EVERY, 64, refuse_to_measure)   # a new process, say
    assert (again.algorithm, again.source, again.batch) == ('toeplitz', 'cache', 32)
    on_another_card = Timer(cudnn=1.0, direct=3.0, toeplitz=2.0)
    assert lk_choice.decide('Card Y', XL_STAGE3, EVERY, 32, on_another_card).algorithm == 'cudnn'
    assert len(on_another_card.calls) == 3
    files = sorted(p.name for p in lk_choice.cache_dir().iterdir())
    assert len(files) == 2 and files[0].startswith('Card-X--torch-') and files[1].startswith('Card-Y--torch-')


def test_the_triton_choice_times_only_its_algorithms_and_auto_then_adds_cudnn_alone():
    first = Timer(direct=3.0, toeplitz=4.0)
    assert lk_choice.decide('Card X', XL_STAGE3, lk_choice.TRITON_ALGORITHMS, 32, first).algorithm == 'direct'
    then = Timer(cudnn=2.0)
    assert lk_choice.decide('Card X', XL_STAGE3, EVERY, 32, then).algorithm == 'cudnn'
    assert [c for c, _, _ in then.calls] == ['cudnn']


def test_a_cache_written_by_another_torch_or_triton_version_is_not_read(monkeypatch, caplog):
    lk_choice.decide('Card X', XL_STAGE3, EVERY, 32, Timer(cudnn=9.0, direct=3.0, toeplitz=1.2))
    old_file = lk_choice.cache_file('Card X')
    monkeypatch.setattr(lk_choice, 'versions', lambda: dict(torch='9.9.9', triton='9.9.9'))
    timer = Timer(cudnn=1.0, direct=3.0, toeplitz=2.0)
    assert lk_choice.decide('Card X', XL_STAGE3, EVERY, 32, timer).algorithm == 'cudnn' and len(timer.calls) == 3
    # a file copied by hand under the new versions' name still says what wrote it
    lk_choice.cache_file('Card X').write_text(old_file.read_text())
    with caplog.at_level(logging.WARNING, logger='pretrain.models.lk_choice'):
        assert lk_choice.load_cache('Card X') == {}
    assert 'was written for' in caplog.text and 'measuring again' in caplog.text


def test_an_unwritable_cache_folder_is_one_warning_and_the_decision_stands(monkeypatch, tmp_path, caplog):
    blocker = tmp_path / 'a-file'
    blocker.write_text('')
    monkeypatch.setenv(lk_choice.CACHE_ENV, str(blocker))   # its lk_conv/ folder cannot be made
    with caplog.at_level(logging.WARNING, logger='pretrain.models.lk_choice'):
        d = lk_choice.decide('Card X', XL_STAGE3, EVERY, 32, Timer(cudnn=9.0, direct=3.0, toeplitz=1.2))
    assert d.algorithm == 'toeplitz'
    assert 'could not write the decision cache' in caplog.text and lk_choice.CACHE_ENV in caplog.text


def test_without_a_measurement_or_a_cache_entry_the_first_allowed_candidate_runs():
    d = lk_choice.decide(lk_choice.INTERPRETER_CARD, XL_STAGE3, EVERY, 32, measure=None)
    assert (d.algorithm, d.source) == ('cudnn', 'unmeasured')


def write_interpreter_cache(conv, x, totals):
    shape = LayerShape.of(x, conv.kernel_size[0], x.dtype)
    lk_choice.save_entry(lk_choice.INTERPRETER_CARD, shape, totals, x.shape[0], {})


@pytest.mark.slow  # interpreted kernels
def test_auto_runs_triton_where_the_cache_says_it_is_fastest_and_logs_both_times(caplog):
    conv = lk_impl.AutoDepthwiseConv2d(6, 5, False)
    x = torch.randn(2, 6, 7, 7).contiguous(memory_format=torch.channels_last)
    write_interpreter_cache(conv, x, dict(cudnn=5.0, direct=1.0, toeplitz=2.0))
    with caplog.at_level(logging.INFO, logger='pretrain.models.lk_choice'):
        out = conv(x)
        conv(x)
    torch.testing.assert_close(out, torch.nn.Conv2d.forward(conv, x), rtol=1e-5, atol=1e-5)
    assert lk_choice.decisions() == {'float32,channels_last,6,5,7,7': 'direct'}
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "Triton 'direct'" in said[0] and 'direct 1.000 ms, toeplitz 2.000 ms, cudnn 5.000 ms' in said[0]


def test_auto_runs_nn_conv2d_for_a_call_the_kernels_refuse(monkeypatch, caplog):
    conv = lk_impl.AutoDepthwiseConv2d(6, 5, False)
    x = torch.randn(2, 6, 7, 7)
    write_interpreter_cache(conv, x, dict(cudnn=5.0, direct=1.0, toeplitz=2.0))
    monkeypatch.setattr(lk_conv, 'depthwise_conv', refuse_to_measure)   # Triton must not run
    monkeypatch.setattr(lk_conv, 'MAX_ELEMENTS', x.numel())            # past the 32-bit guard
    lk_impl.log_fallback_once.cache_clear()
    with caplog.at_level(logging.INFO, logger='pretrain.models.lk_impl'):
        torch.testing.assert_close(conv(x), torch.nn.Conv2d.forward(conv, x))
        empty = torch.randn(0, 6, 7, 7)
        assert conv(empty).shape == empty.shape
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and all('nn.Conv2d' in s and 'the Triton kernels refuse a batch' in s for s in said)


def test_the_cache_file_says_which_card_and_versions_wrote_it():
    lk_choice.decide('NVIDIA H100 80GB HBM3', XL_STAGE3, EVERY, 32, Timer(cudnn=9.0, direct=3.0, toeplitz=1.2))
    data = json.loads(lk_choice.cache_file('NVIDIA H100 80GB HBM3').read_text())
    assert data['card'] == 'NVIDIA H100 80GB HBM3' and data['torch'] == torch.__version__
    assert data['shapes'][XL_STAGE3.key()]['times_ms'] == {'cudnn': 9.0, 'direct': 3.0, 'toeplitz': 1.2}


def test_auto_runs_nn_conv2d_where_triton_is_not_installed_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(lk_conv, 'triton', None)                  # a CUDA machine without Triton, say
    monkeypatch.setattr(lk_conv, 'triton_supported', lambda device: False)
    monkeypatch.setattr(lk_conv, 'depthwise_conv', refuse_to_measure)
    conv = lk_impl.AutoDepthwiseConv2d(6, 5, False)
    x = torch.randn(2, 6, 7, 7)
    lk_impl.log_fallback_once.cache_clear()
    with caplog.at_level(logging.INFO, logger='pretrain.models.lk_impl'):
        torch.testing.assert_close(conv(x), torch.nn.Conv2d.forward(conv, x))
    assert 'triton is not installed' in caplog.text
    assert lk_choice.card_identity(torch.device('cpu')) is None


def test_times_from_another_batch_are_not_compared_with_new_ones_all_are_measured_again():
    lk_choice.decide('Card X', XL_STAGE3, lk_choice.TRITON_ALGORITHMS, 64, Timer(direct=3.0, toeplitz=4.0))
    at_8 = Timer(cudnn=2.0, direct=0.5, toeplitz=0.6)   # at batch 8 every candidate is ~8x faster
    d = lk_choice.decide('Card X', XL_STAGE3, EVERY, 8, at_8)
    assert sorted(c for c, _, _ in at_8.calls) == ['cudnn', 'direct', 'toeplitz'] and d.algorithm == 'direct'
    entry = lk_choice.load_cache('Card X')[XL_STAGE3.key()]
    assert entry['batch'] == 8 and entry['times_ms'] == {'cudnn': 2.0, 'direct': 0.5, 'toeplitz': 0.6}
