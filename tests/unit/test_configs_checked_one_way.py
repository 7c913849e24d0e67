"""A setting is checked the same way whether a library user constructs its owner's config in
Python or a run config (or labeling job config) holds it: one declaration, one validator."""
import json

import pytest
from pydantic import ValidationError

from labeling.config import load_job_config
from labeling.teachers import TeacherSpec
from pretrain.config import ConfigError, load_config
from shards.storage import RetryPolicy
from shards.stream import SourceSpec, StreamConfig
from shards.transforms import TransformConfig

TINY = 'configs/tiny_cpu.json'


@pytest.mark.parametrize('make, override, message', [
    (lambda: TransformConfig(hflip=2), 'data.transform.hflip=2', 'less than or equal to 1'),
    (lambda: TransformConfig(scale=(0.5, 0.2)), 'data.transform.scale=[0.5, 0.2]', 'need min <= max'),
    (lambda: TransformConfig(image_size=4), 'data.transform.image_size=4', 'greater than or equal to 8'),
    (lambda: StreamConfig(few_shards='sometimes'), 'data.stream.few_shards="sometimes"', "'error' or 'share'"),
    (lambda: StreamConfig(shuffle_buffer=0), 'data.stream.shuffle_buffer=0', 'greater than or equal to 1'),
    (lambda: RetryPolicy(budget_s=-1), 'data.stream.retry={"budget_s": -1}', 'greater than or equal to 0'),
    (lambda: RetryPolicy(initial_backoff_s=5, max_backoff_s=1), 'data.stream.retry={"initial_backoff_s": 5, '
     '"max_backoff_s": 1}', 'max_backoff_s 1.0 is below initial_backoff_s 5.0'),
    (lambda: SourceSpec('a', 'b', weight=-1), 'data.sources=[{"name": "a", "url": "b", "weight": -1}]',
     'greater than or equal to 0'),
])
def test_the_library_api_refuses_what_a_run_config_refuses(make, override, message):
    with pytest.raises(ValidationError, match=message):
        make()
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [override])


@pytest.mark.parametrize('override, message', [
    ('train.micro_batch="8"', r"train\.micro_batch='8': input should be a valid integer"),
    ('train.micro_batch=8.0', r'train\.micro_batch=8\.0: input should be a valid integer'),
    ('model.channels_last=1', r'model\.channels_last=1: input should be a valid boolean'),
    ('data.transform.mean=[0.5, 0.5]', r'data\.transform\.mean: too few values \(expected one at 2\)'),
])
def test_values_are_not_coerced(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [override])


def test_a_typo_in_a_nested_section_suggests_the_field_it_meant():
    with pytest.raises(ConfigError, match=r"data\.transform: unknown key\(s\) \['hfilp'\]; did you mean 'hflip'"):
        load_config(TINY, ['data.transform.hfilp=0.2'])
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]: unknown key\(s\) \['wieght'\]; did you mean 'weight'"):
        load_config(TINY, ['data.sources=[{"name": "lab", "url": "x", "wieght": 2}]'])


def test_a_run_config_and_the_library_build_the_same_shards_objects():
    cfg = load_config(TINY)
    assert type(cfg.data.transform) is TransformConfig and type(cfg.data.stream) is StreamConfig
    assert all(type(s) is SourceSpec for s in cfg.data.sources)
    assert cfg.data.transform == TransformConfig(image_size=32, auto_augment=None, crop_pct=1.0)


def test_a_labeling_job_config_checks_its_teachers_like_the_library(tmp_path):
    with pytest.raises(ValidationError, match='temperature'):
        TeacherSpec(kind='timm', model='m', weights='w', temperature=0)
    doc = dict(task='t', store='s', sources=[dict(name='a', url='u')],
               teachers=[dict(kind='timm', model='m', weights='w', temperature=0)])
    (tmp_path / 'job.json').write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r'job\.json: teachers\[0\]\.temperature=0: input should be greater than 0'):
        load_job_config(str(tmp_path / 'job.json'))


def test_a_key_of_the_old_layout_in_a_new_config_says_where_it_went():
    with pytest.raises(ConfigError, match=r"data: unknown key\(s\) \['image_size'\]; data\.image_size is now "
                                          r'data\.transform\.image_size'):
        load_config(TINY, ['data={"image_size": 64}'])
    with pytest.raises(ConfigError, match=r'data\.stream\.seed is now train\.seed'):
        load_config(TINY, ['data.stream.seed=3'])


def test_an_evaluation_crop_above_one_pads_as_timms_does_and_is_allowed():
    assert TransformConfig(crop_pct=1.15).crop_pct == 1.15   # timm's VOLO 448/512 ship 1.15
    assert load_config(TINY, ['data.transform.crop_pct=1.15']).data.transform.crop_pct == 1.15
