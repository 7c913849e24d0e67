"""GPU tier: configs/xl_megadata.json through our Trainer on one GPU (nccl, world size 1), as the
main command runs it: ZeRO-2, bf16 autocast inside the engine, channels-last inputs."""
import pytest
from trainer_probe import run_probe

from pretrain.apps.tiny_data import make_megadata, megadata_overrides

pytestmark = pytest.mark.gpu


def test_xl_megadata_trains_in_bf16_with_channels_last_inputs_through_deepspeed(tmp_path):
    data = make_megadata(str(tmp_path / 'data'), per_source=64, samples_per_shard=8)
    sets = dict(megadata_overrides(data), **{'data.transform.image_size': 224, 'train.micro_batch': 32,
                                             'deepspeed.train_batch_size': 32, 'data.workers': 4,
                                             'checkpoint.dir': str(tmp_path / 'run'), 'log.tensorboard': False})
    report = run_probe('configs/xl_megadata.json', sets, timeout=600)
    assert report['optimizer_steps'] >= 1 and report['params_contiguous']
    assert set(report['conv_out_dtype']) == {'torch.bfloat16'}
    assert report['conv_inputs_channels_last'].get('False', 0) == 0
    assert sum(report['host_syncs'].values()) <= report['micro_steps'], report['host_syncs']
