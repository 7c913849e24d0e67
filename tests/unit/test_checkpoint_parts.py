"""Every registered part of a run's state (loader cursor, RNGs, counters, EMA weights, pinned labels) and the
DeepSpeed-held model come back from a checkpoint exactly as saved; a part the checkpoint lacks is
an error naming it."""
import json

import pytest
from trainer_probe import run_probe

from pretrain import checkpoint
from pretrain.apps.tiny_data import make
from pretrain.train_state import Part, RngState


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return make(str(tmp_path_factory.mktemp('tiny_data')), per_source=16)


def test_checkpoint_restores_every_registered_part(tiny, tmp_path):
    sets = {'data.sources': [{'name': 'lab', 'url': tiny['shards']}, {'name': 'unl', 'url': tiny['shards']}],
            'data.label_store': tiny['labels'], 'data.tasks_file': tiny['tasks_file'],
            'checkpoint.dir': str(tmp_path / 'run'), 'log.tensorboard': False, 'train.ema_decay': 0.9}
    report = run_probe('configs/tiny_cpu.json', sets, '--checkpoint-round-trip')['round_trip']
    assert report['parts'] == ['counters', 'ema', 'labels', 'loader', 'rng']
    assert report['changed_before_load'] == {name: True for name in report['parts']}  # the test can fail
    assert report['restored'] == {name: True for name in report['parts'] + ['model']}
    marker = json.loads((tmp_path / 'run' / 'ckpt' / 'step-3' / 'COMMITTED').read_text())
    assert marker['parts'] == {'counters': {'per_rank': True, 'version': 1}, 'ema': {'per_rank': False, 'version': 1},
                               'labels': {'per_rank': False, 'version': 1}, 'loader': {'per_rank': True, 'version': 1},
                               'rng': {'per_rank': True, 'version': 1}}


def test_a_part_the_checkpoint_lacks_is_an_error_naming_it(tmp_path):
    folder = tmp_path / 'ckpt' / 'step-1'
    folder.mkdir(parents=True)
    (folder / 'COMMITTED').write_text(json.dumps(dict(version=checkpoint.STATE_VERSION, world_size=1, step=1,
                                                      parts={'rng': dict(per_rank=True, version=1)})))
    parts = dict(rng=Part(RngState(), per_rank=True), ema=Part(RngState(), per_rank=False))
    with pytest.raises(ValueError, match=r"holds the parts \['rng'\], this run registers \['ema', 'rng'\] "
                                         r"\(missing: \['ema'\]"):
        checkpoint.load(None, str(tmp_path), 'step-1', rank=0, world_size=1, parts=parts)



def test_a_part_added_since_the_checkpoint_was_written_starts_afresh_when_it_may(tmp_path):
    folder = tmp_path / 'ckpt' / 'step-1'
    folder.mkdir(parents=True)
    (folder / 'COMMITTED').write_text(json.dumps(dict(version=checkpoint.STATE_VERSION, world_size=1, step=1,
                                                      parts={})))

    class NewState(RngState):
        optional_in_older_checkpoints = True
        missing_at = None

        def on_missing(self, tag):
            self.missing_at = tag
    new = NewState()

    class Engine:
        def load_checkpoint(self, root, tag):
            return None, {}
    checkpoint.load(Engine(), str(tmp_path), 'step-1', rank=0, world_size=1, parts=dict(labels=Part(new, False)))
    assert new.missing_at == 'step-1'
