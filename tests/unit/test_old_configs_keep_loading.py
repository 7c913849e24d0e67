"""Configs written for version 1 (the ``data`` section flat) load as version 2: user files, ``--set``
overrides, run folders' config.json and checkpoints' saved configs. The fixtures are the shipped
configs and a run's saved config as the code before the move wrote them."""
import json

import pytest
from helpers import REPO_ROOT

from pretrain.config import ConfigError, load_config, saved_run_config, to_dict
from pretrain.config_migration import upgrade
from pretrain.resume_changes import check_resume_changes

FIXTURES = REPO_ROOT / 'tests' / 'fixtures'


@pytest.mark.parametrize('old, new', [('tiny_cpu_config_v1.json', 'tiny_cpu.json'),
                                      ('xl_finetune_config_v1.json', 'xl_finetune_in1k_320.json')])
def test_a_version_1_config_file_loads_as_the_same_run_as_its_version_2_form(old, new):
    then, now = load_config(str(FIXTURES / old)), load_config(str(REPO_ROOT / 'configs' / new))
    assert to_dict(then) == to_dict(now)
    assert json.loads((FIXTURES / old).read_text())['data'].get('image_size') is not None   # truly the old layout


def test_the_old_names_of_moved_settings_keep_working_as_overrides():
    cfg = load_config('configs/tiny_cpu.json', ['data.image_size=48', 'data.crop_scale=[0.5, 1.0]',
                                                'data.val_crop_pct=0.9', 'data.few_shards="share"'])
    assert cfg.data.transform.image_size == 48 and cfg.data.transform.scale == (0.5, 1.0)
    assert cfg.data.transform.crop_pct == 0.9 and cfg.data.stream.few_shards == 'share'


def test_a_run_folders_saved_version_1_config_is_read_by_export_and_evaluate(tmp_path):
    (tmp_path / 'config.json').write_text((FIXTURES / 'tiny_cpu_saved_config_v1.json').read_text())
    cfg = saved_run_config(tmp_path / 'config.json')
    assert cfg.data.transform.image_size == 32 and cfg.data.transform.crop_pct == 1.0
    assert cfg.data.stream.shuffle_buffer == 16 and cfg.version == 2


def test_resuming_a_run_whose_checkpoint_saved_a_version_1_config_compares_like_with_like():
    saved = upgrade(json.loads((FIXTURES / 'tiny_cpu_saved_config_v1.json').read_text()), 'step-4')
    now = to_dict(load_config('configs/tiny_cpu.json'))
    changes = check_resume_changes(saved, now, 'step-4')   # settings added since are reported, not refused
    assert all('(absent) ->' in line for line in changes), changes
    bigger = to_dict(load_config('configs/tiny_cpu.json', ['data.transform.image_size=64']))
    with pytest.raises(ValueError, match=r'data\.transform\.image_size: 32 -> 64'):
        check_resume_changes(saved, bigger, 'step-4')


def test_an_old_and_a_new_spelling_of_one_setting_together_are_refused(tmp_path):
    doc = json.loads((FIXTURES / 'tiny_cpu_config_v1.json').read_text())
    doc['data']['transform'] = {'image_size': 64}
    (tmp_path / 'c.json').write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r'data\.image_size \(version 1\) and data\.transform\.image_size both '
                                          r'given: keep data\.transform\.image_size'):
        load_config(str(tmp_path / 'c.json'))


def test_a_config_from_a_newer_version_is_refused_naming_the_upgrade(tmp_path):
    doc = json.loads((REPO_ROOT / 'configs' / 'tiny_cpu.json').read_text())
    (tmp_path / 'c.json').write_text(json.dumps(dict(doc, version=3)))
    with pytest.raises(ConfigError, match='config version 3 was written by a newer replk-pretrain'):
        load_config(str(tmp_path / 'c.json'))
