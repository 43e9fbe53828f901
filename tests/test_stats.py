import math

import pytest

from nextword.tools.stats import holm, incomplete_beta, paired_t_test, summarize, t_cdf, t_quantile

# Two-sided 95% and 99% critical values of Student's t (any printed t table, e.g. NIST/SEMATECH e-Handbook of
# Statistical Methods, section 1.3.6.7.2).
T_TABLE = {(1, 0.975): 12.706, (2, 0.975): 4.303, (4, 0.975): 2.776, (10, 0.975): 2.228, (30, 0.975): 2.042,
           (2, 0.995): 9.925, (5, 0.995): 4.032, (20, 0.995): 2.845}


@pytest.mark.parametrize(("df", "p"), sorted(T_TABLE))
def test_t_quantiles_match_the_printed_table(df, p):
    assert t_quantile(p, df) == pytest.approx(T_TABLE[df, p], abs=1e-3)
    assert t_cdf(T_TABLE[df, p], df) == pytest.approx(p, abs=2e-5)


def test_t_cdf_has_its_closed_forms_and_symmetry():
    assert t_cdf(0.0, 3) == 0.5
    assert t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-12)  # one degree of freedom: Cauchy, 1/2 + atan(t)/pi
    assert t_cdf(2.0, 2) == pytest.approx(0.5 + 2.0 / (2 * math.sqrt(6.0)), abs=1e-12)  # 1/2 + t / (2 sqrt(2 + t²))
    assert t_cdf(-1.7, 6) == pytest.approx(1 - t_cdf(1.7, 6), abs=1e-14)
    assert t_cdf(50.0, 1000) == pytest.approx(1.0) and t_cdf(-50.0, 1000) < 1e-100
    assert incomplete_beta(0.3, 1.0, 1.0) == pytest.approx(0.3)  # I_x(1, 1) = x
    assert incomplete_beta(0.3, 2.0, 1.0) == pytest.approx(0.09)  # I_x(a, 1) = x^a


def test_t_cdf_agrees_with_scipy_where_it_is_installed():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 7.5, 40, 300):
        for t in (-8.0, -2.5, -0.3, 0.0, 0.9, 3.1, 25.0):
            assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), rel=1e-9, abs=1e-15)


def test_a_paired_test_counts_seed_by_seed_differences():
    baseline = [3.00, 3.10, 2.90]
    shifted = [v + 0.05 for v in baseline]
    assert paired_t_test(shifted, baseline) == 0.0  # each seed 0.05 worse: no spread, certain
    assert paired_t_test(baseline, baseline) == 1.0
    # differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1, t = 0.2 / (0.1 / sqrt 3) = 3.464 on 2 degrees of freedom
    p = paired_t_test([3.1, 3.3, 3.2], [3.0, 3.1, 2.9])
    assert p == pytest.approx(2 * (1 - t_cdf(2 * math.sqrt(3), 2)))
    assert 0.05 < p < 0.1  # 4.303 is needed for 0.05
    with pytest.raises(ValueError):
        paired_t_test([1.0], [2.0])


def test_summary_is_the_mean_with_its_t_interval():
    summary = summarize([1.0, 2.0, 3.0])
    assert summary.mean == 2.0
    half = 4.303 * 1.0 / math.sqrt(3)
    assert summary.ci95 == pytest.approx((2.0 - half, 2.0 + half), abs=1e-3)


def test_holm_multiplies_the_kth_smallest_by_the_tests_left_and_keeps_the_order():
    # m = 4: 0.01·4 = 0.04; 0.02·3 = 0.06; 0.03·2 = 0.06; 0.5·1 = 0.5, each back in its own place
    assert holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    # A later, smaller product never undercuts an earlier one, and nothing exceeds 1
    assert holm([0.02, 0.021]) == pytest.approx([0.04, 0.04])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert holm([0.004]) == [0.004]
