"""What evaluate, export and init.checkpoint say when pointed at the wrong thing: what the path is
(missing, one step of a run, a run's ckpt/, a shard folder) and what to pass instead; --data
without a name; data without human labels is an error, not an empty result with exit 0."""
import json

import pytest

from pretrain.apps.tiny_data import make
from pretrain.evaluate import main as evaluate
from pretrain.weights import check_run_folder

TINY = {'kernel_sizes': [7, 5], 'depths': [1, 1], 'channels': [16, 32], 'small_kernel': 3}


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return make(str(tmp_path_factory.mktemp('tiny')), per_source=8)


def test_a_path_that_is_not_a_run_folder_says_what_it_is_and_what_to_pass(tiny, tmp_path):
    step = tmp_path / 'run' / 'ckpt' / 'step-40'
    step.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r'^--checkpoint .*/nothing: no such file or folder$'):
        check_run_folder(str(tmp_path / 'nothing'), '--checkpoint', '--tag')
    with pytest.raises(ValueError, match=r'init\.checkpoint .*step-40 is one checkpoint of the run .*/run: pass the '
                                         r'run folder, and init\.tag step-40 for this step'):
        check_run_folder(str(step), 'init.checkpoint', 'init.tag')
    with pytest.raises(ValueError, match=r'ckpt holds the checkpoints of the run .*/run: pass the run folder'):
        check_run_folder(str(step.parent), '--checkpoint', '--tag')
    with pytest.raises(ValueError, match=r'is a shard folder \(it has _index/\)'):
        check_run_folder(tiny['shards'], '--checkpoint', '--tag')
    (tmp_path / 'run' / 'config.json').write_text('{}')
    check_run_folder(str(tmp_path / 'run'), '--checkpoint', '--tag')   # a run folder passes


def test_data_without_a_source_name_is_a_usage_error_naming_the_form(tiny, capsys):
    with pytest.raises(SystemExit):
        evaluate(['--checkpoint', 'x.safetensors', '--data', tiny['shards']])
    assert f'{tiny["shards"]}: expected NAME=URL' in capsys.readouterr().err   # was: TypeError


@pytest.fixture(scope='module')
def weights(tiny, tmp_path_factory):
    import timm
    from safetensors.torch import save_file

    import pretrain.models  # noqa: F401
    path = tmp_path_factory.mktemp('w') / 'model.safetensors'
    save_file(timm.create_model('replknet_31b', num_classes=4, **TINY).state_dict(), str(path))
    return str(path)


def test_evaluating_shards_without_human_labels_is_an_error_not_an_empty_result(tiny, weights):
    args = ['--checkpoint', weights, '--model', 'replknet_31b', '--model-kwargs', json.dumps(TINY),
            '--task', 'shape=4', '--workers', '0', '--size', '32']
    with pytest.raises(SystemExit, match=r"--data unl=.*: no image there has a human label for shape"):
        evaluate(args + ['--data', f'unl={tiny["shards"]}'])
    result = evaluate(args + ['--data', f'val={tiny["shards"]}'])
    assert result['val/shape/images'] == 8 and result['weights'] == 'trained'
    assert 'val/shape/top5' not in result          # 4 classes: top-5 would be 1 by construction


def test_evaluation_runs_in_the_precision_the_weights_trained_in_unless_told(tiny):
    """A bf16 run scored 0.3333 in its own evaluation and 0.2917 from the CLI's fp32 default."""
    import argparse

    from pretrain.config import load_config
    from pretrain.evaluate import eval_spec
    from shards.stream import SourceSpec
    from shards.transforms import TransformConfig
    cfg = load_config('configs/tiny_cpu.json', ['train.precision=bf16', 'model.channels_last=true'])
    args = argparse.Namespace(precision=None, data=[SourceSpec('val', tiny['shards'])], batch_size=8, workers=0)
    spec = eval_spec(args, {'shape': 4}, TransformConfig(), cfg)
    assert spec.precision == 'bf16' and spec.channels_last
    assert eval_spec(argparse.Namespace(**dict(vars(args), precision='fp32')), {'shape': 4}, TransformConfig(),
                     cfg).precision == 'fp32'                                                  # told otherwise
    export_trained = dict(precision='bf16', channels_last=False)                              # an export's config.json
    spec = eval_spec(args, {'shape': 4}, TransformConfig(), None, export_trained)
    assert spec.precision == 'bf16' and not spec.channels_last
    assert eval_spec(args, {'shape': 4}, TransformConfig(), None).precision == 'fp32'          # nothing recorded


def test_model_kwargs_that_would_steer_timms_loader_are_one_line_not_a_traceback(tiny, weights):
    args = ['--checkpoint', weights, '--model', 'replknet_31b', '--model-kwargs', '{"pretrained": true}',
            '--task', 'shape=4', '--workers', '0', '--data', f'val={tiny["shards"]}']
    with pytest.raises(SystemExit, match=r"--model/--model-kwargs: kwargs \['pretrained'\] would make timm "
                                         r'load weights itself'):
        evaluate(args)
