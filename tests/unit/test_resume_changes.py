"""What a resume may change: how the run is steered, never what it is; settings a later version added
do not strand a run in progress."""
import pytest

from pretrain.config import load_config, to_dict
from pretrain.resume_changes import check_resume_changes


def saved_and(*sets):
    saved = to_dict(load_config('configs/tiny_cpu.json'))
    return saved, to_dict(load_config('configs/tiny_cpu.json', list(sets)))


def test_the_schedule_lr_weight_decay_and_cadence_may_change_and_each_change_is_reported():
    saved, now = saved_and('optim.lr=0.0001', 'schedule.max_steps=99', 'eval.every_steps=5',
                           'checkpoint.lease_timeout_s=60', 'model.grad_checkpointing=true')
    said = check_resume_changes(saved, now, 'step-4')
    assert said == ['checkpoint.lease_timeout_s: 300.0 -> 60.0', 'eval.every_steps: 0 -> 5',
                    'model.grad_checkpointing: False -> True', 'optim.lr: 0.002 -> 0.0001',
                    'schedule.max_steps: None -> 99']


def test_what_defines_the_run_is_refused_naming_each_field():
    saved, now = saved_and('train.micro_batch=4', 'optim.name="sgd"', 'data.transform.image_size=64')
    with pytest.raises(ValueError, match=r"resuming step-4 with settings that define the run changed \(3\): "
                                         r"data.transform.image_size: 32 -> 64; optim.name: 'adamw' -> 'sgd'; "
                                         r"train.micro_batch: 8 -> 4\."):
        check_resume_changes(saved, now, 'step-4')


def test_a_setting_the_checkpoint_predates_is_reported_not_refused():
    saved, now = saved_and()
    del saved['data']['labels_refresh'], saved['checkpoint']['preempt_signals']
    said = check_resume_changes(saved, now, 'step-4')
    assert said == ["checkpoint.preempt_signals: (absent) -> ['SIGTERM', 'SIGUSR1']",
                    'data.labels_refresh: (absent) -> False']


def test_a_run_stopped_by_a_storage_outage_resumes_with_a_longer_retry_budget():
    saved, now = saved_and('data.stream.retry={"budget_s": 3600}', 'data.stream.max_corrupt_fraction=0.05')
    said = check_resume_changes(saved, now, 'step-4')
    assert said == ['data.stream.max_corrupt_fraction: 0.01 -> 0.05', 'data.stream.retry.budget_s: 300.0 -> 3600.0']
