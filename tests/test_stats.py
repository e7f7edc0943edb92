"""flatlib.stats against scipy.stats and exact permutation distributions."""
import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from flatlib import stats


@pytest.fixture
def tied():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, size=40).astype(float)  # many ties
    y = x + rng.normal(size=40)
    return x, np.round(y)


def test_vectorised_rank_correlations_match_scipy_with_ties(tied):
    x, y = tied
    assert stats._spearman_rows(x[None], y[None])[0] == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-12)
    assert stats._kendall_rows(x[None], y[None])[0] == pytest.approx(sps.kendalltau(x, y).statistic, abs=1e-12)


def test_correlation_reports_scipys_statistic_and_pvalue(tied):
    x, y = tied
    for method, fn in (("spearman", sps.spearmanr), ("kendall", sps.kendalltau)):
        r = stats.correlation(x, y, method, n_resamples=500)
        expected = fn(x, y)
        assert (r.statistic, r.pvalue) == pytest.approx((expected.statistic, expected.pvalue))
        assert r.confidence_interval.low < r.statistic < r.confidence_interval.high
        assert r.n == 40


def test_bootstrap_interval_agrees_with_scipy_bootstrap():
    rng = np.random.default_rng(1)
    x = rng.normal(size=100)
    y = 0.4 * x + rng.normal(size=100)
    ours = stats.bootstrap_interval(x, y, n_resamples=20000, seed=0)
    theirs = sps.bootstrap((x, y), lambda a, b: sps.spearmanr(a, b).statistic, paired=True, vectorized=False,
                           n_resamples=4000, method="percentile", rng=np.random.default_rng(2)).confidence_interval
    # two Monte Carlo estimates of the same quantiles: each is within ~0.01 of the truth
    assert ours.low == pytest.approx(theirs.low, abs=0.03)
    assert ours.high == pytest.approx(theirs.high, abs=0.03)


def test_permutation_pvalue_agrees_with_the_exact_permutation_distribution():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    y = np.array([2.0, 1.0, 4.0, 3.0, 7.0, 5.0, 6.0])
    observed = abs(sps.spearmanr(x, y).statistic)
    perms = [abs(sps.spearmanr(x, np.array(p)).statistic) for p in itertools.permutations(y)]
    exact = np.mean(np.array(perms) >= observed - 1e-12)
    n = 20000
    ours = stats.permutation_pvalue(x, y, n_resamples=n, seed=0)
    assert ours == pytest.approx(exact, abs=4 * np.sqrt(exact * (1 - exact) / n) + 1 / n)


def test_permutation_pvalue_is_never_zero_and_is_large_under_independence():
    rng = np.random.default_rng(3)
    x = np.arange(100.0)
    assert stats.permutation_pvalue(x, x, n_resamples=999) == pytest.approx(1 / 1000)
    assert stats.permutation_pvalue(x, rng.permutation(x), n_resamples=999) > 0.01


def test_bad_input_gets_one_clear_error():
    with pytest.raises(ValueError, match="same length"):
        stats.spearman([1, 2, 3, 4], [1, 2, 3])
    with pytest.raises(ValueError, match="finite"):
        stats.spearman([1, 2, 3, np.nan], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="method"):
        stats.correlation([1, 2, 3, 4], [1, 2, 3, 4], method="pearson")
    with pytest.raises(ValueError, match="not in the table"):
        stats.correlation_table(pd.DataFrame({"a": [1, 2]}), ["a", "b"], ["a"])


def test_correlation_table_has_one_row_per_measure_and_target_and_drops_non_finite_rows():
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"m1": rng.normal(size=30), "m2": rng.normal(size=30), "acc": rng.normal(size=30)})
    frame.loc[3, "m2"] = np.inf
    table = stats.correlation_table(frame, ["m1", "m2"], ["acc"], n_resamples=200)
    assert list(table["measure"]) == ["m1", "m2"] and list(table["n"]) == [30, 29]
    assert table.loc[0, "rho"] == pytest.approx(sps.spearmanr(frame["m1"], frame["acc"]).statistic)


def test_partial_spearman_equals_the_correlation_of_rank_residuals_and_removes_a_common_cause():
    rng = np.random.default_rng(5)
    z = rng.normal(size=200)
    x, y = z + 0.5 * rng.normal(size=200), z + 0.5 * rng.normal(size=200)
    r = stats.partial_spearman(x, y, z, n_resamples=2000)
    # oracle: regress the ranks of x and y on the ranks of z by least squares, correlate the residuals
    rx, ry, rz = (sps.rankdata(a) for a in (x, y, z))
    design = np.column_stack([np.ones(200), rz])
    res = [a - design @ np.linalg.lstsq(design, a, rcond=None)[0] for a in (rx, ry)]
    assert r.statistic == pytest.approx(np.corrcoef(*res)[0, 1], abs=1e-12)
    t = r.statistic * np.sqrt(197 / (1 - r.statistic ** 2))
    assert r.pvalue == pytest.approx(2 * sps.t.sf(abs(t), 197))
    assert sps.spearmanr(x, y).statistic > 0.6  # strongly correlated through z ...
    assert r.confidence_interval.low < 0 < r.confidence_interval.high  # ... and not at all given z
    assert r.permutation_pvalue > 0.05
    direct = stats.partial_spearman(x, z, y, n_resamples=2000)  # x does depend on z given y
    assert direct.statistic > 0.4 and direct.permutation_pvalue < 0.01


def test_paired_difference_matches_scipy_paired_t_test():
    rng = np.random.default_rng(3)
    a = rng.normal(0.92, 0.01, size=6)
    b = a - 0.01 + rng.normal(0, 0.004, size=6)
    ours = stats.paired_difference(a, b)
    ref = sps.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert ours.mean == pytest.approx(np.mean(a - b))
    assert ours.pvalue == pytest.approx(ref.pvalue)
    assert ours.confidence_interval == pytest.approx((ci.low, ci.high))
    assert ours.n == 6


def test_paired_difference_hand_computed_and_degenerate_cases():
    # d = (1, 2, 3): mean 2, sd 1, se 1/sqrt(3), t_{0.975, 2} = 4.302652729749464
    r = stats.paired_difference([1, 2, 3], [0, 0, 0])
    half = 4.302652729749464 / np.sqrt(3)
    assert r.confidence_interval == pytest.approx((2 - half, 2 + half))
    assert stats.paired_difference([1, 1], [1, 1]).pvalue == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        stats.paired_difference([1.0], [0.0])
    with pytest.raises(ValueError, match="non-finite"):
        stats.paired_difference([1.0, np.nan], [0.0, 0.0])
