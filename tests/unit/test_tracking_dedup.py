"""Each tracker gets each (step, value name) once across a crash and its resume: the replayed steps
are not sent twice, and a step's evaluation row that the crash cut off is still sent. (The real
backends, W&B and MLflow, are run in tests/multiprocess/test_tracking.py.)"""
from types import SimpleNamespace

from pretrain import metrics as metrics_mod
from pretrain import tracking


class Recorder:
    name = 'mlflow'

    def __init__(self, sent):
        self.sent = sent

    def log(self, step, values):
        self.sent.extend((step, k) for k in values)

    def params(self, params):
        pass

    def tags(self, tags):
        pass

    def close(self, status='FINISHED'):
        self.sent.append(('closed', status))


def writer(tmp_path, monkeypatch, sent, resume_step=None):
    monkeypatch.setattr(tracking, 'open_trackers', lambda cfg, run_dir, state: [Recorder(sent)])
    return metrics_mod.MetricsWriter(str(tmp_path), enabled=True, tensorboard=False, resume_step=resume_step,
                                     log_cfg=SimpleNamespace())


def test_a_resume_sends_neither_step_twice_but_sends_the_evaluation_the_crash_cut_off(tmp_path, monkeypatch, caplog):
    sent = []
    first = writer(tmp_path, monkeypatch, sent)
    first.write(1, {'loss': 1.0})
    first.write(2, {'loss': 0.5})
    first.write(2, {'val/top1': 0.5})
    first.write(3, {'loss': 1 / 3})
    # killed here: step 3's evaluation row never written; the newest checkpoint is step 2
    resumed = writer(tmp_path, monkeypatch, sent, resume_step=2)
    resumed.write(3, {'loss': 1 / 3})
    resumed.write(3, {'val/top1': 0.6})
    resumed.write(4, {'loss': 0.25})
    resumed.close('KILLED')
    assert sent == [(1, 'loss'), (2, 'loss'), (2, 'val/top1'), (3, 'loss'), (3, 'val/top1'), (4, 'loss'),
                    ('closed', 'KILLED')]
    assert 'steps 3..3 were reported to mlflow before this resume' in caplog.text
