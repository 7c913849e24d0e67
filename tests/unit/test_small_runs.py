"""A dataset too small for the run's batch gets one line in the run config's own names, and under
torchrun that line is the failure summary's root cause, not a pointer to the elastic docs."""
import json

import pytest

from pretrain.apps.tiny_data import make
from pretrain.config import load_config
from pretrain.distributed import DistEnv, tell_launcher
from pretrain.engine import build_loader


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return make(str(tmp_path_factory.mktemp('tiny')), per_source=16)


def test_an_epoch_shorter_than_one_batch_names_micro_batch_and_the_largest_that_fits(tiny):
    cfg = load_config('configs/tiny_cpu.json', [
        f'data.sources=[{{"name": "lab", "url": "{tiny["shards"]}"}}]', f'data.label_store="{tiny["labels"]}"',
        f'data.tasks_file="{tiny["tasks_file"]}"', 'train.micro_batch=32'])
    with pytest.raises(ValueError, match=r'^data\.sources: an epoch gives each of the 2 slots \(2 ranks x 1 '
                                         r'data\.workers\) 8 samples, fewer than one batch \(train\.micro_batch 32\): '
                                         r'set train\.micro_batch to 8 or less'):
        build_loader(cfg, DistEnv(rank=0, world_size=2, local_rank=0))


def test_a_failing_ranks_reason_is_what_torchrun_reports_as_the_root_cause(tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure
    error_file = tmp_path / 'error.json'
    tell_launcher('error: data.sources: too few samples', {'TORCHELASTIC_ERROR_FILE': str(error_file)})
    failure = ProcessFailure(local_rank=0, pid=1, exitcode=2, error_file=str(error_file))
    assert failure.message == 'error: data.sources: too few samples' and failure.timestamp > 0
    assert json.loads(error_file.read_text())['message'] == 'error: data.sources: too few samples'
    tell_launcher('no launcher', {})   # outside torchrun: nothing to write, no error
