"""flatlib.stats for the robustness atlas: tests of a correlation against a value, pooling over
environments, the reliability of a test-set ranking, and the two cross-environment standards
(Jiang et al. 2020; Dziugaite et al. 2020), each against a hand computation or a simulation."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from flatlib import stats
from flatlib.engine import reliability


def test_fisher_z_test_matches_a_hand_computation():
    rho, n, value = -0.245, 100, 0.374
    se = math.sqrt(1.06 / 97)
    z = (math.atanh(rho) - math.atanh(value)) / se
    assert stats.fisher_z_test(rho, n, value) == pytest.approx(2 * sps.norm.cdf(-abs(z)), rel=1e-12)
    assert stats.fisher_z_test(0.374, n, 0.374) == pytest.approx(1.0)


def test_fisher_z_test_has_its_size_under_the_null():
    # Bivariate normal with Pearson r chosen so Spearman's population rho is 0.3.
    rng = np.random.default_rng(1)
    target = 0.3
    r = 2 * math.sin(math.pi * target / 6)
    cov = [[1, r], [r, 1]]
    rejections = []
    for _ in range(2000):
        x, y = rng.multivariate_normal([0, 0], cov, size=40).T
        rejections.append(stats.fisher_z_test(sps.spearmanr(x, y).statistic, 40, target) < 0.05)
    assert 0.03 < np.mean(rejections) < 0.07


def test_fisher_z_test_refuses_bad_input():
    with pytest.raises(ValueError, match="at least 4"):
        stats.fisher_z_test(0.1, 3, 0.2)
    with pytest.raises(ValueError, match="value in"):
        stats.fisher_z_test(0.1, 30, 1.0)


def test_pooled_correlation_matches_a_hand_computation():
    rhos, ns = np.array([0.5, 0.1, -0.2]), np.array([24, 24, 50])
    z, w = np.arctanh(rhos), (ns - 3) / 1.06
    mean = (w * z).sum() / w.sum()
    se = 1 / math.sqrt(w.sum())
    result = stats.pooled_correlation(rhos, ns)
    assert result.statistic == pytest.approx(math.tanh(mean))
    assert result.pvalue == pytest.approx(2 * sps.norm.sf(abs(mean) / se))
    assert result.interval.low == pytest.approx(math.tanh(mean - 1.959963984540054 * se))
    q = (w * (z - mean) ** 2).sum()
    assert result.q == pytest.approx(q)
    assert result.q_pvalue == pytest.approx(sps.chi2.sf(q, 2))
    assert (result.groups, result.n) == (3, 98)


def test_pooled_correlation_of_one_group_is_that_group():
    result = stats.pooled_correlation([0.4], [30])
    assert result.statistic == pytest.approx(0.4)
    assert math.isnan(result.q_pvalue)


def test_pooled_correlation_leaves_out_non_finite_groups_and_refuses_none():
    assert stats.pooled_correlation([0.4, np.nan], [30, 30]).groups == 1
    with pytest.raises(ValueError, match="no group"):
        stats.pooled_correlation([np.nan], [30])


def _simulated_correct(true_acc, images, rng):
    return (rng.random((len(true_acc), images)) < np.asarray(true_acc)[:, None]).astype(float)


def test_reliability_is_near_one_for_well_separated_networks_and_near_zero_for_identical_ones():
    rng = np.random.default_rng(0)
    spread = _simulated_correct(np.linspace(0.80, 0.95, 20), 10000, rng)
    same = _simulated_correct(np.full(200, 0.9), 2000, rng)
    high = stats.ranking_reliability(spread, splits=20, n_resamples=20)
    low = stats.ranking_reliability(same, splits=20, n_resamples=20)
    assert high.reliability > 0.97 and high.ceiling > 0.98
    assert abs(low.reliability) < 0.25  # sampling SD about 0.14 at 200 networks


def test_reliability_matches_the_classical_formula_and_its_interval_covers_it():
    # True accuracies spread with SD s; binomial noise p(1-p)/N per network and image count N.
    # The classical reliability of the full-set accuracy is s^2 / (s^2 + p(1-p)/N).
    images, s, p = 4000, 0.006, 0.9
    expected = s ** 2 / (s ** 2 + p * (1 - p) / images)
    rng = np.random.default_rng(2)
    big = stats.ranking_reliability(_simulated_correct(p + s * rng.standard_normal(300), images, rng),
                                    splits=50, n_resamples=0)
    assert big.reliability == pytest.approx(expected, abs=0.06)
    covered = 0
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        result = stats.ranking_reliability(_simulated_correct(p + s * rng.standard_normal(60), images, rng),
                                           splits=10, n_resamples=100, seed=seed)
        covered += result.interval.low < expected < result.interval.high
    assert covered >= 8


def test_an_image_bootstrap_would_be_biased_upward():
    # Why the interval resamples networks, not images: in an image bootstrap, the resampled
    # world's true accuracies are the observed ones, noise included.
    images, s, p = 4000, 0.006, 0.9
    expected = s ** 2 / (s ** 2 + p * (1 - p) / images)
    rng = np.random.default_rng(3)
    correct = _simulated_correct(p + s * rng.standard_normal(300), images, rng)
    boot = [reliability._spearman_brown(reliability._split_half(correct[:, rng.integers(0, images, images)], 1, rng))
            for _ in range(30)]
    assert np.percentile(boot, 2.5) > expected


def test_reliability_refuses_a_vector():
    with pytest.raises(ValueError, match="networks x test images"):
        stats.ranking_reliability(np.ones(10))


@pytest.fixture
def grid():
    """Two axes (a: 2 values, b: 3 values), one network per environment, hand-chosen numbers."""
    rows = []
    for a, b, m, g in [(0, 0, 1.0, 0.90), (0, 1, 2.0, 0.92), (0, 2, 3.0, 0.91),
                       (1, 0, 5.0, 0.95), (1, 1, 4.0, 0.93), (1, 2, 6.0, 0.96)]:
        rows.append({"a": a, "b": b, "m": m, "g": g})
    return pd.DataFrame(rows)


def test_granulated_kendall_matches_a_hand_computation(grid):
    # Axis a, b fixed: pairs (1,5 | .90,.95) +1, (2,4 | .92,.93) +1, (3,6 | .91,.96) +1 -> psi_a = 1.
    # Axis b, a = 0: m 1,2,3 vs g .90,.92,.91 -> concordant 2, discordant 1 -> tau = 1/3;
    #         a = 1: m 5,4,6 vs g .95,.93,.96 -> concordant 3 -> tau = 1.  psi_b = 2/3.
    result = stats.granulated_kendall(grid, "m", "g", ["a", "b"])
    assert result["a"] == pytest.approx(1.0)
    assert result["b"] == pytest.approx(2 / 3)
    assert result["overall"] == pytest.approx(5 / 6)
    flipped = stats.granulated_kendall(grid, "m", "g", ["a", "b"], sign=-1)
    assert flipped["overall"] == pytest.approx(-5 / 6)


def test_granulated_kendall_averages_seeds_within_an_environment(grid):
    noisy = pd.concat([grid.assign(m=grid.m + 0.1, seed=0), grid.assign(m=grid.m - 0.1, seed=1)])
    assert stats.granulated_kendall(noisy, "m", "g", ["a", "b"]) == stats.granulated_kendall(grid, "m", "g", ["a", "b"])


def test_sign_errors_match_a_hand_computation():
    # Two environments differing in axis a, two networks each.
    # a=0: (m, g) = (1, .90), (3, .92);  a=1: (2, .95), (4, .91).
    # Pairs (a=0 net, a=1 net): (1,.90)-(2,.95): dm<0, dg<0 agree; (1,.90)-(4,.91): agree;
    # (3,.92)-(2,.95): dm>0, dg<0 error; (3,.92)-(4,.91): dm<0, dg>0 error. -> 2/4.
    frame = pd.DataFrame({"a": [0, 0, 1, 1], "m": [1, 3, 2, 4], "g": [.90, .92, .95, .91]})
    table = stats.sign_errors(frame, "m", "g", ["a"])
    assert list(table["sign_error"]) == [0.5]
    assert list(stats.sign_errors(frame, "m", "g", ["a"], sign=-1)["sign_error"]) == [0.5]
    tied = frame.assign(m=[1, 1, 1, 1])
    assert list(stats.sign_errors(tied, "m", "g", ["a"])["sign_error"]) == [0.5]


def test_sign_errors_use_only_pairs_differing_in_one_axis(grid):
    table = stats.sign_errors(grid, "m", "g", ["a", "b"])
    # a: 3 pairs (b fixed); b: 3 pairs within each a -> 6; 9 in all, none differing in both.
    assert len(table) == 9
    assert sorted(table["axis"].value_counts().items()) == [("a", 3), ("b", 6)]
    # Axis a: every pair agrees (psi_a = 1 above), so no sign errors.
    assert (table[table.axis == "a"]["sign_error"] == 0).all()
    # A measure that is the target itself never errs; its negation always does.
    perfect = grid.assign(m=grid.g)
    assert (stats.sign_errors(perfect, "m", "g", ["a", "b"])["sign_error"] == 0).all()
    assert (stats.sign_errors(perfect, "m", "g", ["a", "b"], sign=-1)["sign_error"] == 1).all()


def test_partial_table_rows_are_partial_spearman():
    rng = np.random.default_rng(4)
    z = rng.normal(size=40)
    frame = pd.DataFrame({"m": z + rng.normal(size=40), "g": z + rng.normal(size=40), "loss": z})
    table = stats.partial_table(frame, ["m"], "g", "loss", n_resamples=200)
    part = stats.partial_spearman(frame.m, frame.g, frame.loss, n_resamples=200)
    row = table.iloc[0]
    assert row.partial_rho == part.statistic and row.p_perm == part.permutation_pvalue
    assert row.rho == pytest.approx(sps.spearmanr(frame.m, frame.g).statistic)
    assert abs(row.partial_rho) < abs(row.rho)  # the shared cause removed
    with pytest.raises(ValueError, match="not in the table"):
        stats.partial_table(frame, ["x"], "g", "loss")


def test_pooled_random_effects_match_a_hand_computation():
    rhos, ns = np.array([0.6, 0.1, -0.2, 0.3]), np.array([24, 24, 24, 24])
    z, v = np.arctanh(rhos), 1.06 / (ns - 3)
    w = 1 / v
    mean = (w * z).sum() / w.sum()
    q = (w * (z - mean) ** 2).sum()
    tau2 = max(0, (q - 3) / (w.sum() - (w ** 2).sum() / w.sum()))
    ws = 1 / (v + tau2)
    ms = (ws * z).sum() / ws.sum()
    spread = sps.t.ppf(0.975, 2) * math.sqrt(tau2 + 1 / ws.sum())
    result = stats.pooled_correlation(rhos, ns)
    assert tau2 > 0 and result.tau2 == pytest.approx(tau2)
    assert result.prediction.low == pytest.approx(math.tanh(ms - spread))
    assert result.prediction.high == pytest.approx(math.tanh(ms + spread))
    assert math.isnan(stats.pooled_correlation(rhos[:2], ns[:2]).prediction.low)  # needs 3 groups


def test_pooled_correlation_does_not_let_a_perfect_rank_correlation_dominate():
    result = stats.pooled_correlation([1.0, 0.2, 0.1, 0.3], [8, 8, 8, 8])
    z = np.arctanh([1 - 1 / 8, 0.2, 0.1, 0.3])
    assert result.statistic == pytest.approx(math.tanh(z.mean()))
    with pytest.raises(ValueError, match="finite count"):
        stats.pooled_correlation([0.1, 0.2], [10, np.nan])


def test_kendall_tau_a_counts_ties_as_zero():
    # x ties in one pair: pairs (0,1) tie -> 0; (0,2) +1; (1,2) +1 -> 2/3 (tau-b would be 0.816).
    assert stats.kendall_tau_a([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / 3)
    assert stats.kendall_tau_a([1, 2, 3], [3, 2, 1]) == -1.0


def test_non_finite_networks_are_left_out_of_both_cross_environment_standards(grid):
    broken = pd.concat([grid.assign(seed=0), grid.assign(seed=1, m=np.nan)])
    axes = ["a", "b"]
    assert stats.granulated_kendall(broken, "m", "g", axes) == stats.granulated_kendall(grid, "m", "g", axes)
    assert stats.sign_errors(broken, "m", "g", ["a", "b"]).equals(stats.sign_errors(grid, "m", "g", ["a", "b"]))
    # An environment with no finite network drops out of its groups instead of scoring 0.
    gone = grid.assign(m=[np.nan, 2.0, 3.0, 5.0, 4.0, 6.0])
    assert stats.granulated_kendall(gone, "m", "g", ["a", "b"])["a"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- two estimates

def test_fisher_z_two_sample_matches_a_hand_computation():
    # atanh(0.5) - atanh(0.2) = 0.346574; variance 1.06/27 + 1.06/47 = 0.061812; z = 1.39398; p = 2 (1 - Phi(z))
    assert stats.fisher_z_two_sample(0.5, 30, 0.2, 50) == pytest.approx(0.163323, abs=1e-6)
    assert stats.fisher_z_two_sample(0.2, 50, 0.5, 30) == pytest.approx(0.163323, abs=1e-6)
    assert stats.fisher_z_two_sample(0.3, 40, 0.3, 100) == pytest.approx(1.0)


def test_fisher_z_two_sample_counts_the_papers_uncertainty_too():
    # our rho -0.188 against the paper's +0.374, both from 100 networks: far less extreme than
    # treating the paper's value as exact, and the one-sample test is its limit as the paper's n grows
    two = stats.fisher_z_two_sample(-0.188, 100, 0.374, 100)
    assert two == pytest.approx(7.95e-5, rel=1e-2)
    assert stats.fisher_z_test(-0.188, 100, 0.374) < two / 1000
    assert stats.fisher_z_two_sample(-0.188, 100, 0.374, 10 ** 9) == pytest.approx(
        stats.fisher_z_test(-0.188, 100, 0.374), rel=1e-6)


def test_fisher_z_two_sample_has_its_size_under_the_null():
    rng = np.random.default_rng(3)
    cov = [[1, 0.4], [0.4, 1]]
    rejections = []
    for _ in range(600):
        a, b = rng.multivariate_normal([0, 0], cov, 40), rng.multivariate_normal([0, 0], cov, 60)
        rejections.append(stats.fisher_z_two_sample(sps.spearmanr(*a.T).statistic, 40,
                                                    sps.spearmanr(*b.T).statistic, 60) < 0.05)
    assert 0.025 < np.mean(rejections) < 0.08


def test_fisher_z_two_sample_refuses_bad_input():
    with pytest.raises(ValueError, match="at least 4"):
        stats.fisher_z_two_sample(0.1, 3, 0.2, 100)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        stats.fisher_z_two_sample(1.2, 30, 0.2, 100)


def test_welch_difference_is_scipys_unequal_variance_t_test():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 8), rng.normal(0.2, 2.0, 11)
    se = lambda x: x.std(ddof=1) / np.sqrt(x.size)  # noqa: E731
    ours = stats.welch_difference(a.mean(), se(a), a.size - 1, b.mean(), se(b), b.size - 1)
    assert ours.pvalue_greater == pytest.approx(sps.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)
    assert ours.pvalue_less == pytest.approx(sps.ttest_ind(a, b, equal_var=False, alternative="less").pvalue)
    assert ours.difference == pytest.approx(a.mean() - b.mean())
    exact = stats.welch_difference(2.0, 0.0, 5, 1.0, 0.0, 5)
    assert exact.pvalue_greater == 0.0 and exact.pvalue_less == 1.0
    with pytest.raises(ValueError, match="df > 0"):
        stats.welch_difference(1, 0.1, 0, 0, 0.1, 4)


def test_partial_rank_correlation_is_partial_spearmans_statistic():
    rng = np.random.default_rng(1)
    z = rng.normal(size=30)
    x, y = z + rng.normal(size=30), z + rng.normal(size=30)
    assert stats.partial_rank_correlation(x, y, z) == pytest.approx(
        stats.partial_spearman(x, y, z, n_resamples=99).statistic, abs=1e-12)


# ----------------------------------------------------------------------------- resampling a table

def _networks(datasets=("a", "b"), environments=3, seeds=4):
    rows = [{"dataset": d, "environment": f"e{e}", "seed": s, "regime": r, "value": 100 * e + 10 * s + (r == "y")}
            for d in datasets for e in range(environments) for s in range(seeds) for r in ("x", "y")]
    return pd.DataFrame(rows)


def test_resample_keeps_strata_sizes_and_whole_units_and_relabels_copies():
    table = _networks()
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = stats.resample(table, ["seed"], ["dataset", "environment"], rng)
        assert len(out) == len(table)
        assert (out.groupby(["dataset", "environment"]).size() == 8).all()
        # every drawn seed brings both its rows (the pair), and copies are told apart by their label
        assert (out.groupby(["dataset", "environment", "seed"])["regime"].apply(sorted).map(tuple)
                == ("x", "y")).all()
        assert out.groupby(["dataset", "environment"])["seed"].nunique().eq(4).all()
        assert ((out["value"] % 10) == (out["regime"] == "y")).all()
    a = stats.resample(table, ["seed"], rng=np.random.default_rng(5))
    b = stats.resample(table, ["seed"], rng=np.random.default_rng(5))
    pd.testing.assert_frame_equal(a, b)


def test_two_stage_resample_draws_environments_then_seeds_within_each():
    table = _networks()
    out = stats.resample(table, ["environment", "seed"], ["dataset"], np.random.default_rng(2))
    assert (out.groupby("dataset")["environment"].nunique() == 3).all()
    assert (out.groupby(["dataset", "environment"])["seed"].nunique() == 4).all()
    # a drawn environment's networks are that environment's: the hundreds digit names it
    original = out["environment"].str.split("#").str[0].str[1:].astype(int)
    assert ((out["value"] // 100) == original).all()


def test_the_bootstrap_variance_of_a_mean_is_the_plug_in_variance_over_n():
    # The ideal bootstrap variance of a mean of n iid values is (1/n) * (1/n) sum (x - xbar)^2.
    x = np.array([0.0, 1.0, 3.0, 4.0, 7.0, 9.0])
    table = pd.DataFrame({"seed": range(x.size), "x": x})
    means = [t["table"]["x"].mean() for t in stats.bootstrap_tables({"table": table}, {"table": (["seed"], [])},
                                                                     4000, seed=1)]
    assert np.var(means) == pytest.approx(((x - x.mean()) ** 2).mean() / x.size, rel=0.08)


def test_resample_refuses_missing_columns_and_plans():
    table = _networks()
    with pytest.raises(ValueError, match="not in the table"):
        stats.resample(table, ["network"])
    with pytest.raises(ValueError, match="at least one column"):
        stats.resample(table, [])
    with pytest.raises(ValueError, match="one resampling plan"):
        next(stats.bootstrap_tables({"t": table}, {"u": (["seed"], [])}, 1))


def test_cluster_bootstrap_draws_clusters_with_replacement():
    # two clusters of means 0 and 1: each replicate's mean of cluster means is 0, 0.5 or 1 with
    # probabilities 1/4, 1/2, 1/4
    values = stats.cluster_bootstrap([np.zeros(3), np.ones(5)], lambda drawn: np.mean([c.mean() for c in drawn]),
                                     4000, seed=0)
    assert set(np.unique(values)) <= {0.0, 0.5, 1.0}
    assert np.mean(values == 0.5) == pytest.approx(0.5, abs=0.03)
    assert np.array_equal(values, stats.cluster_bootstrap([np.zeros(3), np.ones(5)],
                                                          lambda d: np.mean([c.mean() for c in d]), 4000, seed=0))
