"""The GPU run's code paths that have a CPU meaning, run on CPU: channels-last, bf16 autocast inside
the DeepSpeed engine, the DeepSpeed config a GPU run gets, host syncs per step, BN modes."""
import pytest
from trainer_probe import run_probe

from pretrain.apps.tiny_data import make, make_megadata, megadata_overrides
from pretrain.batchnorm import node_rank_lists
from pretrain.config import ConfigError, load_config
from pretrain.ds_config import deepspeed_config

TINY = 'configs/tiny_cpu.json'
XL = 'configs/xl_megadata.json'


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return make(str(tmp_path_factory.mktemp('tiny_data')), per_source=16)


def tiny_sets(tiny, run_dir, **extra):
    return dict({'data.sources': [{'name': 'lab', 'url': tiny['shards']}, {'name': 'unl', 'url': tiny['shards']}],
                 'data.val_sources': [{'name': 'val', 'url': tiny['shards']}],
                 'data.label_store': tiny['labels'], 'data.tasks_file': tiny['tasks_file'],
                 'checkpoint.dir': str(run_dir), 'log.tensorboard': False}, **extra)


@pytest.fixture(scope='module')
def bf16_channels_last(tiny, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp('run')
    return run_probe(TINY, tiny_sets(tiny, run_dir, **{'train.precision': 'bf16', 'model.channels_last': True}),
                     '--cuda-autocast-query')


def test_channels_last_run_keeps_parameters_contiguous_and_feeds_channels_last_inputs(bf16_channels_last):
    assert bf16_channels_last['params_contiguous'] and bf16_channels_last['params_viewable_as_bytes']
    assert bf16_channels_last['conv_inputs_channels_last'].get('False', 0) == 0
    assert bf16_channels_last['conv_inputs_channels_last'].get('True', 0) > 0


def test_bf16_run_computes_convolutions_in_bf16_inside_the_engine(bf16_channels_last):
    # With the CUDA decision of DeepSpeed's autocast_if_enabled reproduced (see trainer_probe.py).
    assert set(bf16_channels_last['conv_out_dtype']) == {'torch.bfloat16'}


def test_fp32_run_stays_fp32_in_contiguous_layout(tiny, tmp_path):
    report = run_probe(TINY, tiny_sets(tiny, tmp_path, **{'train.precision': 'fp32', 'model.channels_last': False}),
                       '--cuda-autocast-query')
    assert set(report['conv_out_dtype']) == {'torch.float32'}
    assert report['conv_inputs_channels_last'].get('True', 0) == 0


def test_at_most_one_host_sync_per_micro_step_outside_logging_steps(bf16_channels_last):
    syncs = bf16_channels_last['host_syncs']
    assert sum(syncs.values()) <= bf16_channels_last['micro_steps'], syncs


def test_bf16_deepspeed_config_has_autocast_section_fp32_reduction_and_model_sized_buckets():
    cfg = load_config(XL)
    ds = deepspeed_config(cfg, world_size=64)
    assert ds['torch_autocast'] == dict(enabled=True, dtype='bfloat16', lower_precision_safe_modules=[])
    assert 'bf16' not in ds and 'fp16' not in ds
    assert ds['zero_optimization']['reduce_bucket_size'] <= 5e7
    assert ds['train_batch_size'] == 2048


def test_fp32_deepspeed_config_has_no_autocast():
    assert 'torch_autocast' not in deepspeed_config(load_config(TINY), world_size=2)


@pytest.mark.parametrize('override, field', [
    ('deepspeed.bf16={"enabled": true}', 'deepspeed.bf16'),
    ('deepspeed.torch_autocast={"enabled": true, "dtype": "bfloat16"}', 'deepspeed.torch_autocast'),
    ('model.sync_bn=nodes', 'model.sync_bn'),
])
def test_precision_and_bn_mode_mistakes_are_config_errors(override, field):
    with pytest.raises(ConfigError, match=field):
        load_config(TINY, [override])  # tiny_cpu trains in fp32


def test_node_groups_cover_contiguous_ranks_and_refuse_uneven_nodes():
    assert node_rank_lists(16, 8) == [list(range(8)), list(range(8, 16))]
    with pytest.raises(ValueError, match='not a multiple'):
        node_rank_lists(12, 8)


# --- configs/xl_megadata.json on CPU, with only sizes and locations overridden --------------------

def test_xl_megadata_config_reaches_its_first_optimizer_step_on_cpu(tmp_path):
    sets = dict(megadata_overrides(make_megadata(str(tmp_path / 'data'))),
                **{'model.kwargs': {'depths': [1, 1], 'channels': [16, 32], 'kernel_sizes': [7, 5]},
                   'data.transform.image_size': 32, 'train.micro_batch': 4, 'deepspeed.train_batch_size': 4,
                   'data.workers': 1, 'checkpoint.dir': str(tmp_path / 'run')})
    report = run_probe(XL, sets, '--cuda-autocast-query')
    assert report['optimizer_steps'] >= 1
    assert set(report['conv_out_dtype']) == {'torch.bfloat16'}
    assert report['conv_inputs_channels_last'].get('False', 0) == 0
