"""The demo's seed statistics (the quick demo in CI runs one seed; `make demo` runs three)."""
from pretrain.apps.demo_report import fmt, stats


def test_several_seeds_give_mean_sample_std_and_count():
    assert stats([0.5, 0.7]) == (0.6, stats([0.5, 0.7])[1], 2)
    assert abs(stats([0.5, 0.7])[1] - 0.1414213) < 1e-6
    assert fmt(stats([0.5, 0.7])) == '0.600 ± 0.141 (n=2)'


def test_one_seed_has_no_spread_to_report():
    assert stats([0.25]) == (0.25, 0.0, 1)
    assert fmt(stats([0.25])) == '0.250 (n=1)'
