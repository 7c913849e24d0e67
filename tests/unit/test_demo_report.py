"""The demo's seed statistics (the quick demo in CI runs one seed; `make demo` runs three)."""
from pretrain.apps.demo_report import fmt, stats


def test_several_seeds_give_mean_sample_std_and_count():
    assert stats([0.5, 0.7]) == (0.6, stats([0.5, 0.7])[1], 2)
    assert abs(stats([0.5, 0.7])[1] - 0.1414213) < 1e-6
    assert fmt(stats([0.5, 0.7])) == '0.600 ± 0.141 (n=2)'


def test_one_seed_has_no_spread_to_report():
    assert stats([0.25]) == (0.25, 0.0, 1)
    assert fmt(stats([0.25])) == '0.250 (n=1)'


def test_a_gain_is_claimed_only_when_its_confidence_interval_over_seeds_excludes_zero():
    from pretrain.apps.demo_report import verdict
    assert verdict(stats([0.95, 0.94, 0.96, 0.95, 0.95]), stats([0.92, 0.93, 0.91, 0.92, 0.94])).startswith(
        'gain of +0.026, 95% CI [+0.012, +0.040]')
    assert verdict(stats([0.95, 0.90]), stats([0.92, 0.93])).startswith('no difference the seeds can show')
    assert verdict(stats([0.80, 0.81, 0.79]), stats([0.90, 0.91, 0.92])).startswith('loss of')


def test_a_one_seed_difference_is_never_called_a_gain():
    from pretrain.apps.demo_report import verdict
    said = verdict(stats([0.95]), stats([0.80]))   # --quick: chance-level differences were "gains"
    assert said.startswith('no difference measured') and 'one seed' in said and 'gain of' not in said
