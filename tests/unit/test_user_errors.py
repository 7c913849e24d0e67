"""One exception base for what a user can fix (shards/common/errors.py): the command lines print a
ReplkError as one line and exit 2; a bug — even one that raises a ValueError or a KeyError — shows
its traceback instead of passing for a typo in the user's config."""
import json

import pytest

from labeling import cli as label_cli
from pretrain import run
from shards import cli as shards_cli
from shards import storage
from shards.common.errors import BadValue, NotFound, ReplkError, UnknownName


def test_a_bug_raising_value_error_in_replk_shards_shows_its_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(shards_cli, 'verify', lambda *a, **k: int('x'))
    with pytest.raises(ValueError, match='invalid literal'):
        shards_cli.main(['verify', str(tmp_path)])


def test_a_user_fault_in_replk_shards_is_one_line_and_exit_2(tmp_path, capsys):
    assert shards_cli.main(['adopt', str(tmp_path / 'nothing'), '--source', 'web']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1 and 'Traceback' not in err


def test_a_bug_raising_key_error_in_replk_label_shows_its_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(label_cli, '_validate', lambda args: {}['a bug'])
    with pytest.raises(KeyError, match='a bug'):
        label_cli.main(['validate', '--store', str(tmp_path), '--task', 'in1k'])


def test_a_bug_in_a_training_run_shows_its_traceback_and_a_user_fault_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run, 'setup_logging', lambda rank: None)
    monkeypatch.setattr(run, 'train', lambda args, check: {}['a bug'])
    with pytest.raises(KeyError, match='a bug'):
        run.main(['--config', 'configs/tiny_cpu.json'])

    def user_fault(args, check):
        raise BadValue('data.sources: no source named "lab" (fix the config)')
    monkeypatch.setattr(run, 'train', user_fault)
    with pytest.raises(SystemExit) as stop:
        run.main(['--config', 'configs/tiny_cpu.json'])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == 'error: data.sources: no source named "lab" (fix the config)'


def test_a_missing_object_is_a_user_error_that_callers_still_catch_as_absent(tmp_path):
    with pytest.raises(NotFound, match='reading .*absent.json') as caught:
        storage.read_bytes(str(tmp_path / 'absent.json'))
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, ReplkError)


def test_an_unknown_name_prints_without_the_quotes_key_error_adds():
    assert str(UnknownName('unknown task "in2k": built in are in1k, in22k')) == 'unknown task "in2k": built in are in1k, in22k'
    assert json.dumps(str(KeyError('x'))) == '"\'x\'"'   # what KeyError itself would print
