"""flatlib.stats against scipy.stats and exact permutation distributions."""
import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from flatlib import stats
from flatlib.engine import correlation


@pytest.fixture
def tied():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, size=40).astype(float)  # many ties
    y = x + rng.normal(size=40)
    return x, np.round(y)


def test_vectorised_rank_correlations_match_scipy_with_ties(tied):
    x, y = tied
    assert correlation._spearman_rows(x[None], y[None])[0] == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-12)
    assert correlation._kendall_rows(x[None], y[None])[0] == pytest.approx(sps.kendalltau(x, y).statistic, abs=1e-12)


def test_correlation_reports_scipys_statistic_and_pvalue(tied):
    x, y = tied
    for method, fn in (("spearman", sps.spearmanr), ("kendall", sps.kendalltau)):
        r = stats.correlation(x, y, method, n_resamples=500)
        expected = fn(x, y)
        assert (r.statistic, r.pvalue) == pytest.approx((expected.statistic, expected.pvalue))
        assert r.confidence_interval().low < r.statistic < r.confidence_interval().high
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
    assert r.confidence_interval().low < 0 < r.confidence_interval().high  # ... and not at all given z
    assert r.permutation_pvalue > 0.05
    direct = stats.partial_spearman(x, z, y, n_resamples=2000)  # x does depend on z given y
    assert direct.statistic > 0.4 and direct.permutation_pvalue < 0.01


def test_partial_spearman_permutation_pvalue_is_freedman_lane_against_its_exact_distribution():
    # Freedman & Lane (1983), as in Anderson & Legendre (1999), on the ranks: fit y ~ 1 + z, add
    # each permutation of its residuals back to its fitted values, refit y* ~ 1 + x + z and compare
    # |t| of x's coefficient with the observed one; all 5040 permutations of 7 rows.
    x = np.array([-0.2, 0.3, 0.1, 1.5, 0.0, 1.8, -0.7])
    y = np.array([-2.3, -0.3, 1.0, 2.4, -0.9, 1.5, 0.1])
    z = np.array([-1.3, 0.6, 0.6, 1.3, -0.8, 1.7, -0.3])
    rx, ry, rz = (sps.rankdata(a) for a in (x, y, z))
    reduced, full = np.column_stack([np.ones(7), rz]), np.column_stack([np.ones(7), rx, rz])
    fitted = reduced @ np.linalg.lstsq(reduced, ry, rcond=None)[0]
    residual = ry - fitted

    def t_of_x(response):
        coef, *_ = np.linalg.lstsq(full, response, rcond=None)
        rest = response - full @ coef
        return coef[1] / np.sqrt(rest @ rest / (7 - 3) * np.linalg.inv(full.T @ full)[1, 1])

    observed = abs(t_of_x(ry))
    exact = np.mean([abs(t_of_x(fitted + residual[list(p)])) >= observed * (1 - 1e-9)
                     for p in itertools.permutations(range(7))])
    n = 20000
    ours = stats.partial_spearman(x, y, z, n_resamples=n, seed=0).permutation_pvalue
    assert ours == pytest.approx(exact, abs=4 * np.sqrt(exact * (1 - exact) / n) + 1 / n)


def test_paired_difference_matches_scipy_paired_t_test():
    rng = np.random.default_rng(3)
    a = rng.normal(0.92, 0.01, size=6)
    b = a - 0.01 + rng.normal(0, 0.004, size=6)
    ours = stats.paired_difference(a, b)
    ref = sps.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert ours.mean == pytest.approx(np.mean(a - b))
    assert ours.pvalue == pytest.approx(ref.pvalue)
    assert ours.confidence_interval() == pytest.approx((ci.low, ci.high))
    assert ours.n == 6


def test_paired_difference_hand_computed_and_degenerate_cases():
    # d = (1, 2, 3): mean 2, sd 1, se 1/sqrt(3), t_{0.975, 2} = 4.302652729749464
    r = stats.paired_difference([1, 2, 3], [0, 0, 0])
    half = 4.302652729749464 / np.sqrt(3)
    assert r.confidence_interval() == pytest.approx((2 - half, 2 + half))
    assert stats.paired_difference([1, 1], [1, 1]).pvalue == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        stats.paired_difference([1.0], [0.0])
    with pytest.raises(ValueError, match="non-finite"):
        stats.paired_difference([1.0, np.nan], [0.0, 0.0])


# ----------------------------------------------------------------------------- equivalence, trend, p-values

def test_spearman_equivalence_matches_a_hand_computation():
    rho, n, bound = 0.05, 100, 0.2
    se = np.sqrt(1.06 / (n - 3))
    z, zb = np.arctanh(rho), np.arctanh(bound)
    p_expected = max(sps.norm.sf((z + zb) / se), sps.norm.cdf((z - zb) / se))
    power_expected = 2 * sps.norm.cdf(zb / se - sps.norm.ppf(0.95)) - 1
    out = stats.spearman_equivalence(rho, n, bound)
    assert out.pvalue == pytest.approx(p_expected, rel=1e-12)
    assert out.power == pytest.approx(power_expected, rel=1e-12)


def test_spearman_equivalence_size_under_the_null_at_the_bound():
    # at a true rho on the bound, TOST rejects at most alpha of the time (simulated Spearman rho)
    rng = np.random.default_rng(0)
    n, bound, rejections, trials = 200, 0.2, 0, 400
    r = 2 * np.sin(np.pi * bound / 6)  # the Pearson correlation of a normal pair whose Spearman rho is `bound`
    for _ in range(trials):
        x = rng.standard_normal(n)
        y = r * x + np.sqrt(1 - r ** 2) * rng.standard_normal(n)
        rho = sps.spearmanr(x, y).statistic
        rejections += stats.spearman_equivalence(rho, n, bound).pvalue < 0.05
    assert rejections / trials < 0.05 + 3 * np.sqrt(0.05 * 0.95 / trials)


def test_spearman_equivalence_rejects_bad_input():
    for kwargs, match in [({"bound": 0}, "bound"), ({"alpha": 0.6}, "alpha"), ({"n": 3}, "4 pairs"),
                          ({"rho": 1.5}, "rho")]:
        args = {"rho": 0.1, "n": 50, **kwargs}
        with pytest.raises(ValueError, match=match):
            stats.spearman_equivalence(**args)


def test_weighted_trend_matches_numpy_weighted_polyfit():
    rng = np.random.default_rng(1)
    x = np.log([2000, 5000, 10000, 20000, 60000])
    se = rng.uniform(0.001, 0.004, size=5)
    y = 0.02 - 0.003 * x + rng.normal(0, se)
    coef, cov = np.polyfit(x, y, 1, w=1 / se, cov="unscaled")
    out = stats.weighted_trend(x, y, se)
    assert (out.slope, out.intercept) == pytest.approx(tuple(coef), rel=1e-10)
    assert out.slope_se == pytest.approx(np.sqrt(cov[0, 0]), rel=1e-10)
    assert out.pvalue_decreasing == pytest.approx(sps.norm.cdf(out.slope / out.slope_se))
    assert out.pvalue_decreasing + out.pvalue_increasing == pytest.approx(1.0)


def test_weighted_trend_rejects_degenerate_input():
    with pytest.raises(ValueError, match="distinct"):
        stats.weighted_trend([1, 1], [0, 1], [1, 1])
    with pytest.raises(ValueError, match="positive"):
        stats.weighted_trend([1, 2], [0, 1], [1, 0])
    with pytest.raises(ValueError, match="one value per point"):
        stats.weighted_trend([1, 2, 3], [0, 1], [1, 1])


def test_format_pvalue_never_rounds_a_p_value_onto_a_significance_level():
    assert stats.format_pvalue(0.0499) == "0.0499"  # 2 figures would say 0.05, which the rule reads as not significant
    assert stats.format_pvalue(0.0504) == "0.0504"
    assert stats.format_pvalue(0.049996) == "0.049996"
    assert stats.format_pvalue(0.05) == "0.05"
    assert stats.format_pvalue(0.047) == "0.047"
    assert stats.format_pvalue(0.0095) == "0.0095"
    assert stats.format_pvalue(0.00996) == "0.00996"


def test_format_pvalue_shows_a_monte_carlo_floor_as_a_bound():
    assert stats.format_pvalue(1 / 10001, n_resamples=10000) == "< 1e-4"
    assert stats.format_pvalue(0.000123) == "0.00012"
    assert stats.format_pvalue(0.0312, n_resamples=10000) == "0.031"
    assert stats.format_pvalue(float("nan")) == "n/a"


@pytest.mark.parametrize("n_resamples", [99, 199, 200, 999, 1000, 9999, 10000, 99999])
def test_a_pvalue_at_the_permutation_floor_prints_a_true_statement(n_resamples):
    floor = 1 / (n_resamples + 1)  # the smallest Monte Carlo p-value, reached when no permutation is as extreme
    shown = stats.p_text(floor, n_resamples)
    relation, bound = shown.removeprefix("p ").split(" ")
    true_of_floor = {"<": floor < float(bound), "≤": floor <= float(bound), "=": False}
    assert true_of_floor[relation], shown  # a bound the floor satisfies, never a value below it
    assert float(bound) <= 10 * floor  # and not a loose one


def test_p_text_reads_as_prose():
    assert stats.p_text(0.0151) == "p = 0.015"
    assert stats.p_text(1 / 10001, n_resamples=10000) == "p < 1e-4"


def test_a_constant_variable_has_no_correlation_and_does_not_crash_a_table():
    x = np.ones(20)
    y = np.arange(20.0)
    result = stats.correlation(x, y, n_resamples=200)
    assert np.isnan(result.statistic) and np.isnan(result.permutation_pvalue)
    assert all(np.isnan(result.confidence_interval()))
    table = stats.correlation_table(pd.DataFrame({"flat": x, "y": y, "z": -y}), ["flat", "z"], ["y"],
                                    n_resamples=200)
    assert np.isnan(table.loc[0, "rho"]) and table.loc[1, "rho"] == pytest.approx(-1.0)


def test_an_undefined_partial_correlation_has_no_p_value():
    x, y = np.ones(20), np.arange(20.0)
    part = stats.partial_spearman(x, y, np.sin(y), n_resamples=200)
    assert np.isnan(part.statistic) and np.isnan(part.permutation_pvalue)


def test_tables_with_a_constant_column_raise_no_warning():
    import warnings
    frame = pd.DataFrame({"flat": np.ones(20), "y": np.arange(20.0), "z": np.sin(np.arange(20.0))})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would print the library's path into a page
        table = stats.correlation_table(frame, ["flat"], ["y"], n_resamples=200)
        part = stats.partial_table(frame, ["flat"], "y", "z", n_resamples=200)
    assert np.isnan(table.loc[0, "kendall_tau"]) and np.isnan(part.loc[0, "rho"])
