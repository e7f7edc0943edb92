"""flatlib.claims: every verdict rule, each state of each sub-claim, on hand-built inputs whose
answers are known; and the paper's figures as data."""
import math

import numpy as np
import pandas as pd
import pytest

from flatlib import batchsize, claims
from flatlib.publishing import rules_minima
from oracles import paired_table


def corr(rho, p, low, high, n=100):
    return {"rho": rho, "p": p, "ci_low": low, "ci_high": high, "n": n}


# ----------------------------------------------------------------------------- the paper's figures

def test_every_claim_has_a_statement_a_paper_figure_and_what_it_is_measured_against():
    assert list(claims.CLAIMS) == ["C1", "C2", "C3", "C4", "C2+", "C2+m", *(f"C{i}" for i in range(5, 9))]
    for claim in claims.CLAIMS.values():
        assert claim.statement and claim.paper and claim.against and claim.source


def test_paper_figures_are_looked_up_by_name_and_an_unknown_one_lists_the_known():
    assert claims.paper("C2", "weakness").value == 0.374
    assert claims.paper("C4", "gap_2000").value == 1.6
    with pytest.raises(KeyError, match="weakness"):
        claims.paper("C2", "weaknes")


def test_head_to_head_claim_names_the_dataset():
    assert claims.head_to_head_claim("mnist") == "C2"
    assert claims.head_to_head_claim("fashion_mnist") == "C3"
    with pytest.raises(ValueError, match="cifar"):
        claims.head_to_head_claim("cifar10")


# ----------------------------------------------------------------------------- sub-claim states

@pytest.mark.parametrize("rho,p,ci,sign,state", [
    (0.40, 0.001, (0.2, 0.6), +1, "supported"),
    (-0.40, 0.001, (-0.6, -0.2), +1, "contradicted"),
    (0.02, 0.80, (-0.15, 0.18), +1, "not supported"),  # the data exclude rho >= 0.2
    (0.10, 0.30, (-0.10, 0.30), +1, "inconclusive"),
    (-0.30, 0.01, (-0.5, -0.1), -1, "supported"),
    (0.30, 0.01, (0.1, 0.5), -1, "contradicted"),
    (0.05, 0.60, (-0.12, 0.25), -1, "not supported"),  # the data exclude rho <= -0.2
    (-0.10, 0.30, (-0.30, 0.10), -1, "inconclusive"),
    (float("nan"), 0.01, (0.1, 0.5), +1, "inconclusive"),
])
def test_directional_has_each_state(rho, p, ci, sign, state):
    assert claims.directional("x", rho, p, ci, sign).state == state


def test_directional_rejects_a_sign_that_is_not_plus_or_minus_one():
    with pytest.raises(ValueError, match="sign"):
        claims.directional("x", 0.1, 0.5, (0, 0.2), 0)


@pytest.mark.parametrize("rho,p,n,state", [
    (0.01, 0.9, 1000, "supported"),  # tight around zero: equivalent within 0.2
    (0.30, 0.001, 100, "contradicted"),
    (-0.30, 0.001, 100, "contradicted"),
    (0.02, 0.85, 30, "inconclusive"),  # p = 0.85 at n = 30 is absence of evidence
])
def test_negligible_needs_an_equivalence_test_not_a_large_p(rho, p, n, state):
    check = claims.negligible("x", rho, p, n)
    assert check.state == state
    assert 0 <= check.values["equivalence_power"] <= 1


def test_negligible_reports_low_power_at_small_n():
    assert claims.negligible("x", 0.0, 1.0, 20).values["equivalence_power"] < 0.2
    assert claims.negligible("x", 0.0, 1.0, 1000).values["equivalence_power"] > 0.99


def test_a_state_outside_the_list_is_an_error():
    with pytest.raises(ValueError, match="state"):
        claims.Check("x", "true")
    with pytest.raises(ValueError, match="verdict"):
        claims.Verdict("C1", "yes", ())


def test_a_check_the_rule_stopped_before_is_named_not_a_stopiteration():
    # C5 with too few unsaturated bounds stops after its first two checks
    v = claims.pacbayes_link(None, None, None, reading="weakness", saturated_count=20, median_kl=10.0)
    assert [c.name for c in v.checks] == ["certificates are bounds", "bound predicts test error"]
    with pytest.raises(KeyError, match="bound explained by weakness"):
        v.check("bound explained by weakness")
    assert v.state("bound explained by weakness") == "not reached"
    assert v.state("bound predicts test error") == "inconclusive"


# ----------------------------------------------------------------------------- C1

ALPHAS = [1, 3, 10, 30]


@pytest.mark.parametrize("eig,trace,changed,loss,verdict", [
    ([1, 9, 100, 900], [1, 9, 100, 900], 0, 1e-7, "supported"),
    ([1, 9, 50, 90], [1, 9, 100, 900], 0, 1e-7, "partly supported"),
    ([1, 1, 2, 3], [1, 1, 2, 3], 0, 1e-7, "not supported"),
    ([1, 9, 100, 900], [1, 9, 100, 900], 3, 1e-7, "contradicted"),
    ([1, 9, 100, 900], [1, 9, 100, 900], 0, 1e-3, "contradicted"),
])
def test_reparameterisation_states(eig, trace, changed, loss, verdict):
    out = claims.reparameterisation(ALPHAS, eig, trace, changed, loss)
    assert out.verdict == verdict
    assert out.check("function preserved").state == ("supported" if changed == 0 and loss < 1e-5 else "contradicted")


def test_reparameterisation_reports_the_first_alpha_reaching_the_target():
    out = claims.reparameterisation(ALPHAS, [1, 9, 99, 900], [1, 9, 100, 900], 0, 0.0)
    assert out.values["first_alpha_eigenvalue"] == 30
    assert out.values["first_alpha_trace"] == 10
    assert claims.first_reaching([3, 1], [5, 200], 100) == 1
    assert claims.first_reaching([1, 2], [1, 2], 100) is None
    with pytest.raises(ValueError, match="per alpha"):
        claims.reparameterisation(ALPHAS, [1, 2], [1, 2, 3, 4], 0, 0.0)


# ----------------------------------------------------------------------------- C2, C3

STRONG_POS, STRONG_NEG = corr(0.40, 0.0001, 0.2, 0.55), corr(-0.35, 0.001, -0.5, -0.15)
NULL_WIDE, FLAT = corr(0.05, 0.6, -0.15, 0.25), corr(0.005, 0.96, -0.05, 0.06, n=2000)


@pytest.mark.parametrize("weakness,sharpness,simplicity,verdict", [
    (STRONG_POS, STRONG_NEG, FLAT, "supported"),
    (STRONG_POS, STRONG_NEG, NULL_WIDE, "partly supported"),  # simplicity: inconclusive at n = 100
    (STRONG_POS, STRONG_POS, FLAT, "partly supported"),
    # the review's case: weakness significant with the wrong sign is a contradiction, whatever the sides
    (corr(-0.40, 0.0001, -0.55, -0.2), STRONG_NEG, FLAT, "contradicted"),
    (corr(0.01, 0.9, -0.1, 0.12), STRONG_NEG, FLAT, "not supported"),
    (corr(0.10, 0.3, -0.1, 0.3), STRONG_NEG, FLAT, "inconclusive"),
])
def test_head_to_head_mnist_headline_follows_the_central_claim(weakness, sharpness, simplicity, verdict):
    out = claims.head_to_head("mnist", weakness, sharpness, simplicity)
    assert out.claim == "C2"
    assert out.verdict == verdict, out.describe()


def test_head_to_head_simplicity_contradicted_when_significant_on_mnist():
    out = claims.head_to_head("mnist", STRONG_POS, STRONG_NEG, corr(0.3, 0.002, 0.1, 0.5))
    assert out.check("simplicity predicts nothing").state == "contradicted"
    assert out.verdict == "partly supported"


def test_head_to_head_fashion_mnist_wants_simplicity_somewhat_predictive():
    out = claims.head_to_head("fashion_mnist", STRONG_POS, STRONG_NEG, corr(0.3, 0.002, 0.1, 0.5))
    assert (out.claim, out.verdict) == ("C3", "supported")
    assert out.check("simplicity somewhat predictive").state == "supported"
    assert claims.head_to_head("fashion_mnist", STRONG_POS, STRONG_NEG, FLAT).verdict == "partly supported"


def test_distinct_hypotheses_counts_a_reversed_ranking_once():
    table = pd.DataFrame({"test_acc": [0.90, 0.95, 0.92, 0.97], "train_acc": [1.0] * 4})
    table["gap"] = table["train_acc"] - table["test_acc"]  # the same ranking reversed
    table["test_loss"] = [0.3, 0.1, 0.4, 0.2]  # a different ranking
    assert claims.distinct_hypotheses(table, ["a", "b", "c"], ["test_acc", "gap"]) == 3
    assert claims.distinct_hypotheses(table, ["a", "b", "c"], ["test_acc", "gap", "test_loss"]) == 6


# ----------------------------------------------------------------------------- C4

BIG = [0.010, 0.014, 0.018, 0.012, 0.016]
TIGHT = [0.0135, 0.0140, 0.0145, 0.0138, 0.0142]  # 1.4 points, an interval narrower than the 0.25-point margin


@pytest.mark.parametrize("gaps,verdict,states", [
    ({2000: TIGHT, 60000: [0.001, -0.001, 0.0, 0.002, -0.002]}, "supported",
     ("supported", "supported", "supported")),
    # shrinks from 1.4 to 0.8 points but stays clear of the 0.25-point margin
    ({2000: BIG, 60000: [0.007, 0.009, 0.008, 0.0085, 0.0075]}, "partly supported",
     ("supported", "supported", "contradicted")),
    # no gap at the smallest n
    ({2000: [0.01, -0.01, 0.005, -0.004, 0.0], 60000: [0.0, 0.0, 0.001, -0.001, 0.0]}, "not supported",
     ("inconclusive", "not supported", "supported")),
    # a reversed gap at the smallest n
    ({2000: [-x for x in BIG], 60000: [0.0, 0.001, -0.001, 0.0005, -0.0005]}, "contradicted",
     ("contradicted", "contradicted", "supported")),
    # a gap that neither shrinks nor vanishes
    ({2000: BIG, 60000: [0.012, 0.016, 0.014, 0.010, 0.018]}, "contradicted",
     ("supported", "not supported", "contradicted")),
    # a gap that does not shrink and whose last interval straddles the margin
    ({2000: BIG, 60000: [0.02, -0.01, 0.03, -0.02, 0.0]}, "inconclusive",
     ("supported", "not supported", "inconclusive")),
])
def test_batch_sweep_states(gaps, verdict, states):
    differences = batchsize.regime_differences(paired_table(gaps), "test_acc")
    # the paper's figures set to the data's own means, so that only the three original checks decide
    out = claims.batch_sweep(differences, paper=differences["difference"].to_dict())
    assert out.verdict == verdict, out.describe()
    assert tuple(c.state for c in out.checks[:3]) == states, out.describe()


def test_batch_sweep_trend_uses_every_size_not_just_the_ends():
    # equal ends, but the middle sizes rise: the two-point rule would see no change; the regression sees a rise
    gaps = {2000: BIG, 10000: [x + 0.02 for x in BIG], 20000: [x + 0.02 for x in BIG], 60000: BIG}
    out = claims.batch_sweep(batchsize.regime_differences(paired_table(gaps), "test_acc"))
    assert out.check("gap shrinks with n").values["sizes"] == 4
    assert out.check("gap shrinks with n").values["slope_per_log_n"] > 0


# Per-seed gaps whose mean is the paper's figure at each end, tightly: 1.6 points at n = 2,000 and
# 0.02 points at n = 60,000 (spread 0.05 points, so each interval lies well inside +-0.25).
PAPER_LIKE = {2000: [0.0155, 0.0160, 0.0165, 0.0158, 0.0162], 60000: [0.0001, 0.0003, 0.0002, 0.0000, 0.0004]}


def test_batch_sweep_compares_our_gap_with_the_papers_at_each_end():
    out = claims.batch_sweep(batchsize.regime_differences(paired_table(PAPER_LIKE), "test_acc"))
    matches = out.check("gap matches the paper's figures")
    assert matches.state == "supported" and set(matches.values["by_n"]) == {2000, 60000}
    assert out.verdict == "supported"
    # half the paper's gap at n = 2,000 (0.8 points): wholly outside 1.6 +- 0.25, whatever happens at the other end
    half = {**PAPER_LIKE, 2000: [g / 2 for g in PAPER_LIKE[2000]]}
    out = claims.batch_sweep(batchsize.regime_differences(paired_table(half), "test_acc"))
    assert out.check("gap matches the paper's figures").values["by_n"][2000]["state"] == "contradicted"
    assert out.check("gap matches the paper's figures").state == "contradicted"
    assert out.check("gap vanishes at the largest n").state == "supported"
    assert out.verdict == "partly supported"  # exists and vanishes, but not at the paper's size


def test_batch_sweep_paper_comparison_is_inconclusive_across_the_band_or_without_the_papers_sizes():
    # at n = 60,000 a gap of 0.25 points +- 0.05: the interval crosses the band's edge at 0.02 + 0.25
    edge = {**PAPER_LIKE, 60000: [0.0020, 0.0025, 0.0030, 0.0023, 0.0027]}
    out = claims.batch_sweep(batchsize.regime_differences(paired_table(edge), "test_acc"))
    assert out.check("gap matches the paper's figures").values["by_n"][60000]["state"] == "inconclusive"
    assert out.check("gap matches the paper's figures").state == "inconclusive"
    other_sizes = {1000: PAPER_LIKE[2000], 50000: PAPER_LIKE[60000]}
    out = claims.batch_sweep(batchsize.regime_differences(paired_table(other_sizes), "test_acc"))
    assert out.check("gap matches the paper's figures").state == "inconclusive"
    assert out.check("gap matches the paper's figures").values["by_n"] == {}
    assert claims.batch_sweep(batchsize.regime_differences(paired_table(PAPER_LIKE), "test_acc"),
                              paper={}).check("gap matches the paper's figures").state == "inconclusive"


def test_paper_gaps_are_the_claims_figures_as_fractions():
    assert claims.paper_gaps() == {2000: pytest.approx(0.016), 60000: pytest.approx(0.0002)}


def test_batch_sweep_reports_a_gap_that_rises_before_it_falls_as_non_monotone():
    # 1.0 points at n = 2,000, 2.0 at 10,000, 0.2 at 60,000, each +- 0.05: a rise, then a fall
    rise_fall = {2000: [0.0095, 0.0100, 0.0105, 0.0098, 0.0102], 10000: [0.0195, 0.0200, 0.0205, 0.0198, 0.0202],
                 60000: [0.0015, 0.0020, 0.0025, 0.0018, 0.0022]}
    out = claims.batch_sweep(batchsize.regime_differences(paired_table(rise_fall), "test_acc"))
    shape = out.check("gap shrinks at every step")
    assert shape.state == "contradicted" and shape.values["non_monotone"]
    assert shape.values["significant_rises"] == ["2000 -> 10000"]
    assert shape.values["largest_rise"]["from"] == 2000 and shape.values["largest_rise"]["to"] == 10000
    assert out.check("gap shrinks with n").state == "supported"  # the trend over log n alone hides the rise
    assert out.verdict == "partly supported"  # the shape is reported; it does not move the headline


def test_batch_sweep_shape_states_for_a_monotone_and_a_flat_middle():
    falling = {2000: [0.0195, 0.0200, 0.0205, 0.0198, 0.0202], 10000: [0.0095, 0.0100, 0.0105, 0.0098, 0.0102],
               60000: [0.0015, 0.0020, 0.0025, 0.0018, 0.0022]}
    out = claims.batch_sweep(batchsize.regime_differences(paired_table(falling), "test_acc"))
    shape = out.check("gap shrinks at every step")
    assert shape.state == "supported" and not shape.values["non_monotone"]
    flat_middle = {**falling, 10000: falling[2000]}  # no significant fall from 2,000 to 10,000, no rise either
    out = claims.batch_sweep(batchsize.regime_differences(paired_table(flat_middle), "test_acc"))
    assert out.check("gap shrinks at every step").state == "inconclusive"


def test_batch_sweep_needs_two_sizes():
    with pytest.raises(ValueError, match="two"):
        claims.batch_sweep(batchsize.regime_differences(paired_table({2000: BIG}), "test_acc"))


# ----------------------------------------------------------------------------- C5

B_POS = corr(0.5, 0.0001, 0.3, 0.65)
KL = 5000.0  # nats: certificates that are bounds
W_NEG = corr(-0.4, 0.001, -0.6, -0.2)  # weakness predicts lower test error, the claim's sign


@pytest.mark.parametrize("bound,given_w,w_given_b,verdict", [
    (B_POS, corr(0.1, 0.4, -0.1, 0.3), corr(-0.3, 0.003, -0.5, -0.1), "supported"),
    (B_POS, corr(0.1, 0.4, -0.1, 0.3), corr(-0.05, 0.6, -0.25, 0.15), "partly supported"),
    (B_POS, corr(0.45, 0.0001, 0.3, 0.6), corr(-0.05, 0.6, -0.25, 0.15), "contradicted"),
    (B_POS, corr(0.35, 0.07, -0.02, 0.6), corr(-0.05, 0.6, -0.25, 0.15), "not supported"),
    (corr(0.05, 0.6, -0.15, 0.25), corr(0.0, 0.9, -0.2, 0.2), corr(-0.3, 0.003, -0.5, -0.1), "inconclusive"),
])
def test_pacbayes_link_states(bound, given_w, w_given_b, verdict):
    assert claims.pacbayes_link(bound, given_w, w_given_b, median_kl=KL, weakness=W_NEG).verdict == verdict


def test_pacbayes_link_weakness_of_the_wrong_sign_does_not_survive():
    # the review's case: a significant *positive* partial correlation of weakness with test error
    out = claims.pacbayes_link(B_POS, corr(0.1, 0.4, -0.1, 0.3), corr(0.3, 0.003, 0.1, 0.5), median_kl=KL,
                               weakness=W_NEG)
    assert out.check("weakness survives the bound").state == "contradicted"
    assert out.verdict == "partly supported"


@pytest.mark.parametrize("median_kl,state,verdict", [
    (8e-9, "not supported", "inconclusive"),  # the first published study's held-out estimates
    (claims.MIN_MEDIAN_KL * 0.999, "not supported", "inconclusive"),
    (claims.MIN_MEDIAN_KL, "supported", "supported"),
    (7500.0, "supported", "supported"),
])
def test_certificates_whose_median_kl_is_below_the_threshold_are_held_out_estimates_and_inconclusive(
        median_kl, state, verdict):
    out = claims.pacbayes_link(B_POS, corr(0.1, 0.4, -0.1, 0.3), corr(-0.3, 0.003, -0.5, -0.1), median_kl=median_kl,
                               weakness=W_NEG)
    assert out.check("certificates are bounds").state == state
    assert out.verdict == verdict
    assert out.values["median_kl"] == median_kl and out.check("certificates are bounds").values["threshold"] == 1.0


@pytest.mark.parametrize("median_kl", [None, float("nan"), -1.0, "12"])
def test_a_missing_or_impossible_median_kl_is_refused(median_kl):
    with pytest.raises(ValueError, match="median_kl"):
        claims.pacbayes_link(B_POS, corr(0.1, 0.4, -0.1, 0.3), corr(-0.3, 0.003, -0.5, -0.1), median_kl=median_kl,
                             weakness=W_NEG)


def test_saturated_bounds_are_masked():
    mask = claims.saturated([0.5, 1.0, 1 - 1e-12, 0.999, 1.3])
    assert mask.tolist() == [False, True, True, False, True]


def test_verdict_as_dict_carries_every_check_the_reading_and_the_certificate_kind():
    out = claims.pacbayes_link(B_POS, corr(0.1, 0.4, -0.1, 0.3), corr(-0.3, 0.003, -0.5, -0.1), median_kl=KL,
                               weakness=W_NEG, saturated_count=4, reading="weakness_input_volume",
                               certificate="prior at initialisation")
    d = out.as_dict()
    assert d["verdict"] == "supported" and d["saturated"] == 4
    assert (d["reading"], d["certificate"], d["median_kl"]) == ("weakness_input_volume", "prior at initialisation", KL)
    assert set(d["checks"]) == {"certificates are bounds", "bound predicts test error", "bound explained by weakness",
                                "weakness survives the bound"}
    assert "bound predicts test error: supported" in out.describe()


def test_correlation_reads_a_correlation_table_row():
    row = pd.Series({"rho": 0.3, "p": 0.01, "p_perm": 0.02, "ci_low": 0.1, "ci_high": 0.5})
    assert claims.correlation(row, 40) == {"rho": 0.3, "p": 0.02, "ci_low": 0.1, "ci_high": 0.5, "n": 40}
    assert claims.correlation(row, 40, p="p")["p"] == 0.01


def test_pacbayes_link_with_saturated_bounds_is_inconclusive_and_says_why():
    out = claims.pacbayes_link(None, None, None, median_kl=KL, saturated_count=99)
    assert out.verdict == "inconclusive" and out.values["saturated"] == 99
    assert "99 saturated" in out.check("bound predicts test error").values["reason"]


# C5 on hand-built per-network tables: each column a known mix of independent normal draws

def _link_table(err, bound, open_labels, input_volume, kl=KL):
    # the bound mapped monotonically into (0, 1), where a certificate lies (ranks unchanged)
    return pd.DataFrame({"certificate": 0.5 + 0.05 * np.asarray(bound), "certificate_kl": kl, "test_error": err,
                         "weakness_open_labels": open_labels, "weakness_input_volume": input_volume})


def _draws(seed, n=40, k=4):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=n) for _ in range(k)]


def _study(table, **controls):
    # the robustness partials are left out unless a test asks for them (their own tests below)
    return claims.pacbayes_link_study(table, n_resamples=999, certificate="prior at initialisation",
                                      **({"size": None, "fit": None} | controls))


def test_a_bound_that_is_weakness_plus_its_own_noise_is_explained_by_it_and_weakness_survives():
    z, e1, e2, e3 = _draws(0)
    # test error is driven by weakness (lower error where weaker); the bound reads weakness through
    # noise of its own; input volume is unrelated noise
    verdicts, correlations = _study(_link_table(-z + 0.3 * e1, -z + 0.3 * e2, z, e3))
    assert list(verdicts) == list(claims.C5_READINGS)  # both readings, the primary first
    primary, secondary = verdicts["weakness_open_labels"], verdicts["weakness_input_volume"]
    assert primary.verdict == "supported"
    assert primary.values["certificate"] == "prior at initialisation" and primary.values["median_kl"] == KL
    # the unrelated reading neither explains the bound nor survives it
    assert secondary.check("bound explained by weakness").state == "contradicted"
    assert secondary.check("weakness survives the bound").state in ("not supported", "inconclusive")
    assert secondary.verdict == "contradicted"
    # both readings: the bound given each reading, and each reading given the bound
    wanted = {("certificate", "test_error", ""), ("certificate", "test_error", "weakness_open_labels"),
              ("certificate", "test_error", "weakness_input_volume"),
              ("weakness_open_labels", "test_error", "certificate"),
              ("weakness_input_volume", "test_error", "certificate"),
              ("weakness_open_labels", "test_error", ""), ("weakness_input_volume", "test_error", ""),
              ("certificate", "weakness_open_labels", ""), ("certificate", "weakness_input_volume", "")}
    assert set(map(tuple, correlations[["x", "y", "controlling for"]].to_numpy())) == wanted
    assert len(correlations) == len(wanted) and (correlations["n"] == 40).all()


def test_a_bound_that_tracks_test_error_apart_from_weakness_contradicts_the_claim():
    z, e1, e2, e3 = _draws(1)
    verdicts, _ = _study(_link_table(z + 0.3 * e1, z, e2, e3))
    for verdict in verdicts.values():
        assert verdict.check("bound explained by weakness").state == "contradicted"
        assert verdict.verdict == "contradicted"


def test_weakness_that_adds_to_an_unexplained_bound_partly_supports_the_claim():
    b, y, e1, e3 = _draws(2)
    # test error = bound - weakness: the bound keeps its power given weakness, weakness given the bound
    verdicts, _ = _study(_link_table(b - y + 0.3 * e1, b, y, e3))
    primary = verdicts["weakness_open_labels"]
    assert primary.check("bound explained by weakness").state == "contradicted"
    assert primary.check("weakness survives the bound").state == "supported"
    assert primary.verdict == "partly supported"


def test_a_bound_weakness_only_partly_explains_is_not_supported():
    b, e1, e2, e3 = _draws(37)
    # a weak bound (test error = bound + twice as much noise) sharing part of itself with weakness:
    # given weakness its correlation is no longer significant but keeps more than half its size
    verdicts, _ = _study(_link_table(b + 2.0 * e1, b, -(0.6 * b + e2), e3))
    primary = verdicts["weakness_open_labels"]
    explained = primary.check("bound explained by weakness").values
    assert explained["p"] >= claims.ALPHA and abs(explained["rho_given_weakness"]) > 0.5 * abs(explained["rho_raw"])
    assert primary.check("weakness survives the bound").state in ("not supported", "inconclusive")
    assert primary.verdict == "not supported"


def test_a_bound_that_does_not_predict_test_error_is_inconclusive():
    z, e1, e2, e3 = _draws(3)
    verdicts, _ = _study(_link_table(e1, e2, z, e3))
    for verdict in verdicts.values():
        assert verdict.check("bound predicts test error").state != "supported"
        assert verdict.verdict == "inconclusive"


def test_held_out_estimates_are_inconclusive_about_bounds_however_well_they_correlate():
    z, e1, e2, e3 = _draws(0)
    kl = np.full(40, 5000.0)
    kl[:21] = 0.5  # the median network's KL is half a nat
    verdicts, _ = _study(_link_table(-z + 0.3 * e1, -z + 0.3 * e2, z, e3, kl=kl))
    primary = verdicts["weakness_open_labels"]
    assert primary.values["median_kl"] == 0.5
    assert primary.check("certificates are bounds").state == "not supported"
    assert primary.check("bound explained by weakness").state == "supported"  # reported, but decides nothing
    assert primary.verdict == "inconclusive"


def test_saturated_bounds_are_left_out_and_too_few_left_is_inconclusive():
    z, e1, e2, e3 = _draws(0)
    table = _link_table(-z + 0.3 * e1, -z + 0.3 * e2, z, e3)
    table.loc[:4, "certificate"] = 1.0
    verdicts, correlations = _study(table)
    assert verdicts["weakness_open_labels"].values["saturated"] == 5
    assert (correlations["n"] == 35).all()
    table.loc[:31, "certificate"] = 1.0  # 8 left, below claims.MIN_NETWORKS
    verdicts, correlations = _study(table)
    assert correlations.empty
    for verdict in verdicts.values():
        assert verdict.verdict == "inconclusive" and verdict.values["saturated"] == 32
        assert "32 saturated" in verdict.check("bound predicts test error").values["reason"]
    # every bound saturated: the KL is still that of the certificates given, not of none
    table["certificate"] = 1.0
    table["certificate_kl"] = np.linspace(100.0, 500.0, 40)
    verdicts, _ = _study(table)
    assert verdicts["weakness_open_labels"].values["median_kl"] == pytest.approx(300.0)
    assert verdicts["weakness_open_labels"].check("certificates are bounds").state == "supported"
    with pytest.raises(ValueError, match="no networks"):
        _study(table.iloc[:0])


def test_a_table_without_the_rules_columns_is_refused_naming_them():
    with pytest.raises(ValueError, match="certificate_kl"):
        claims.pacbayes_link_study(pd.DataFrame({"certificate": [0.5], "test_error": [0.1],
                                                 "weakness_open_labels": [1.0], "weakness_input_volume": [1.0]}))


# C2+: the robustness atlas -------------------------------------------------------------------

def _within(rhos: dict, n: int = 24, p: dict | None = None):
    """A hand-built atlas table: rhos[measure][dataset] is a list, one rho per environment; p
    from the Fisher-z approximation unless given."""
    import pandas as pd
    from scipy import stats as sps
    rows = []
    for measure, by_dataset in rhos.items():
        for dataset, values in by_dataset.items():
            for e, rho in enumerate(values):
                z = math.atanh(rho) / math.sqrt(1.06 / (n - 3))
                pv = (p or {}).get((measure, dataset, e), float(2 * sps.norm.sf(abs(z))))
                rows.append({"dataset": dataset, "environment": f"env{e}", "measure": measure, "rho": rho,
                             "p": pv, "n": n})
    return pd.DataFrame(rows)


def _atlas(w1, w2, sharp, n=24):
    return claims.atlas(_within({"weakness_open_labels": w1, "weakness_input_volume": w2,
                                 "top_eigenvalue": sharp, "adaptive_sharpness": sharp}, n),
                        ["top_eigenvalue", "adaptive_sharpness"])


STEADY = {"mnist": [0.4, 0.35, 0.45, 0.4], "fashion_mnist": [0.38, 0.42, 0.4, 0.36]}
NOTHING = {"mnist": [0.05, -0.05, 0.0, 0.02], "fashion_mnist": [-0.02, 0.03, 0.0, -0.01]}
WEAK_SHARP = {"mnist": [-0.1, -0.05, -0.1, 0.0], "fashion_mnist": [-0.05, -0.1, 0.0, -0.1]}


def test_atlas_supported_when_weakness_is_steady_and_beats_sharpness():
    verdict = _atlas(STEADY, STEADY, WEAK_SHARP, n=100)
    assert verdict.claim == "C2+" and verdict.verdict == "supported"
    assert verdict.check("weakness_open_labels: holds across recipes").state == "supported"
    assert verdict.check("weakness_open_labels: beats the best sharpness measure").state == "supported"
    counts = verdict.values["weakness"]["weakness_open_labels"]["mnist"]
    assert counts["positive"] == 4 and counts["significant_reversed"] == 0


def test_atlas_partly_supported_when_the_sign_depends_on_the_recipe():
    # Pooled positive, but one environment reverses hard: the claim holds only under some recipes.
    mixed = {"mnist": [0.8, 0.8, 0.8, -0.75], "fashion_mnist": [0.6, 0.5, 0.55, 0.5]}
    verdict = _atlas(mixed, STEADY, WEAK_SHARP)
    assert verdict.check("weakness_open_labels: pooled within environments").state == "supported"
    robust = verdict.check("weakness_open_labels: holds across recipes")
    assert robust.state == "contradicted"
    assert robust.values["mnist"]["reversed_at_bonferroni"] == ["env3"]
    assert verdict.verdict == "partly supported"


def test_atlas_partly_supported_when_sharpness_predicts_better():
    strong_sharp = {"mnist": [-0.6, -0.6, -0.6, -0.6], "fashion_mnist": [-0.6, -0.6, -0.6, -0.6]}
    verdict = _atlas(STEADY, STEADY, strong_sharp, n=100)
    assert verdict.check("weakness_open_labels: beats the best sharpness measure").state == "contradicted"
    assert verdict.values["best_sharpness"]["mnist"]["score"] == pytest.approx(0.6, abs=1e-9)
    assert verdict.verdict == "partly supported"


def test_atlas_contradicted_when_weakness_anticorrelates_everywhere():
    against = {d: [-r for r in v] for d, v in STEADY.items()}
    verdict = _atlas(against, STEADY, WEAK_SHARP)
    assert verdict.verdict == "contradicted"
    # The secondary measure is judged too, but does not set the headline.
    assert verdict.check("weakness_input_volume: pooled within environments").state == "supported"


def test_atlas_not_supported_when_pooled_rho_excludes_the_claimed_size():
    verdict = _atlas(NOTHING, NOTHING, WEAK_SHARP, n=200)
    assert verdict.verdict == "not supported"


def test_atlas_inconclusive_when_datasets_disagree():
    split = {"mnist": STEADY["mnist"], "fashion_mnist": [-r for r in STEADY["fashion_mnist"]]}
    verdict = _atlas(split, STEADY, WEAK_SHARP)
    assert verdict.check("weakness_open_labels: pooled within environments").state == "inconclusive"
    assert verdict.verdict == "inconclusive"


def test_atlas_robustness_not_supported_when_a_new_recipe_may_reverse_it():
    # Heterogeneous, no environment significantly reversed, but the prediction interval for a
    # new environment reaches well below zero.
    varied = {"mnist": [0.9, 0.05, 0.9, 0.05], "fashion_mnist": [0.9, 0.05, 0.9, 0.05]}
    verdict = _atlas(varied, STEADY, WEAK_SHARP, n=50)
    robust = verdict.check("weakness_open_labels: holds across recipes")
    assert robust.state == "not supported" and robust.values["mnist"]["prediction_interval"][0] < -0.2
    assert verdict.verdict == "partly supported"


def test_atlas_robustness_inconclusive_between_the_bounds_and_with_two_environments():
    verdict = _atlas(NOTHING, NOTHING, WEAK_SHARP, n=200)
    assert verdict.check("weakness_open_labels: holds across recipes").state == "inconclusive"
    two = {d: v[:2] for d, v in STEADY.items()}
    verdict = _atlas(two, two, {d: v[:2] for d, v in WEAK_SHARP.items()}, n=100)
    robust = verdict.check("weakness_open_labels: holds across recipes")
    assert robust.state == "inconclusive" and verdict.verdict == "partly supported"


def test_atlas_reversal_is_judged_by_fisher_z_not_the_permutation_floor():
    # Decision p-values at a permutation floor that cannot reach 0.05 / 8: the reversal is still seen.
    rhos = {"weakness_open_labels": {"mnist": [0.8, 0.8, 0.8, -0.75], "fashion_mnist": [0.6, 0.5, 0.55, 0.5]},
            "weakness_input_volume": STEADY, "top_eigenvalue": WEAK_SHARP}
    floor = {(m, d, e): 0.01 for m in rhos for d in ("mnist", "fashion_mnist") for e in range(4)}
    verdict = claims.atlas(_within(rhos, p=floor), ["top_eigenvalue"])
    assert verdict.check("weakness_open_labels: holds across recipes").state == "contradicted"


def test_atlas_comparison_with_sharpness_inconclusive_when_intervals_overlap():
    verdict = _atlas(STEADY, STEADY, {d: [-r for r in v] for d, v in STEADY.items()})
    assert verdict.check("weakness_open_labels: beats the best sharpness measure").state == "inconclusive"


def test_atlas_refuses_missing_measures_and_columns():
    table = _within({"weakness_open_labels": STEADY, "weakness_input_volume": STEADY})
    with pytest.raises(ValueError, match="top_eigenvalue"):
        claims.atlas(table, ["top_eigenvalue"])
    with pytest.raises(ValueError, match="lacks columns"):
        claims.atlas(table.drop(columns="n"), ["top_eigenvalue"])
    with pytest.raises(ValueError, match="at least one weakness and one sharpness"):
        claims.atlas(table, [])


# C2+m: the geometric reading beyond margins ----------------------------------------------------

def _partials(by_margin: dict, environments: int = 12, n: int = 24):
    """A hand-built ``atlas.within_partial`` table: by_margin[margin] is the partial rho in every
    environment of both datasets (a number), or per dataset ({dataset: number})."""
    rows = []
    for margin, value in by_margin.items():
        for dataset in ("mnist", "fashion_mnist"):
            rho = value[dataset] if isinstance(value, dict) else value
            rows += [{"dataset": dataset, "environment": f"env{e}", "measure": claims.GEOMETRIC_WEAKNESS,
                      "given": margin, "n": n, "partial_rho": rho} for e in range(environments)]
    return pd.DataFrame(rows)


def test_beyond_margins_supported_only_when_it_survives_every_margin():
    verdict = claims.beyond_margins(_partials({m: 0.4 for m in claims.MARGIN_MEASURES}))
    assert verdict.claim == "C2+m" and verdict.verdict == "supported"
    assert [c.name for c in verdict.checks] == [f"weakness_input_volume predicts beyond {m}"
                                                for m in claims.MARGIN_MEASURES]
    # one margin explains it away (pooled partial 0 over 12 x 24 networks: interval within +-0.12)
    explained = claims.beyond_margins(_partials({"margin_output": 0.4, "path_norm": 0.0}),
                                      ["margin_output", "path_norm"])
    assert explained.check("weakness_input_volume predicts beyond path_norm").state == "not supported"
    assert explained.verdict == "not supported"


def test_beyond_margins_contradicted_when_a_margin_reverses_it_and_inconclusive_when_thin():
    reversed_ = claims.beyond_margins(_partials({"margin_output": 0.4, "jacobian_norm": -0.4}),
                                      ["margin_output", "jacobian_norm"])
    assert reversed_.verdict == "contradicted"
    thin = claims.beyond_margins(_partials({"margin_output": 0.3}, environments=2, n=8), ["margin_output"])
    assert thin.verdict == "inconclusive"
    split = claims.beyond_margins(_partials({"margin_output": {"mnist": 0.4, "fashion_mnist": 0.0}}),
                                  ["margin_output"])
    assert split.verdict == "inconclusive"  # supported on one dataset, explained on the other


def test_beyond_margins_pools_with_one_pair_fewer_per_environment():
    verdict = claims.beyond_margins(_partials({"margin_output": 0.3}, environments=3, n=10), ["margin_output"])
    pooled = verdict.check("weakness_input_volume predicts beyond margin_output").values["mnist"]
    # three environments of 10 networks each carry the weight of 3 x (10 - 1 - 3) = 18: se of z = sqrt(1.06 / 18)
    se = math.sqrt(1.06 / 18)
    assert pooled["pooled_ci"] == pytest.approx([math.tanh(math.atanh(0.3) - 1.959964 * se),
                                                 math.tanh(math.atanh(0.3) + 1.959964 * se)], rel=1e-5)


def test_beyond_margins_refuses_a_missing_margin_or_column():
    with pytest.raises(ValueError, match="path_norm"):
        claims.beyond_margins(_partials({"margin_output": 0.4}), ["margin_output", "path_norm"])
    with pytest.raises(ValueError, match="lacks columns"):
        claims.beyond_margins(_partials({"margin_output": 0.4}).drop(columns="n"), ["margin_output"])
    with pytest.raises(ValueError, match="not of"):
        claims.beyond_margins(_partials({"margin_output": 0.4}), ["margin_output"], measure="weakness_open_labels")


def test_combined_states():
    assert claims.combined_state(["supported", "supported"]) == "supported"
    assert claims.combined_state(["contradicted", "inconclusive"]) == "contradicted"
    assert claims.combined_state(["supported", "contradicted"]) == "inconclusive"
    assert claims.combined_state(["not supported", "not supported"]) == "not supported"
    assert claims.combined_state(["not supported", "inconclusive"]) == "inconclusive"
    assert claims.combined_state(["contradicted", "not supported"]) == "contradicted"


# C8 ------------------------------------------------------------------------------------------

def _d(mean, low, high):
    return {"mean": mean, "ci_low": low, "ci_high": high}


def _r(rho, p):
    return {"rho": rho, "p": p, "ci_low": rho - 0.2, "ci_high": rho + 0.2, "n": 48}


def test_finite_weakness_states():
    ahead = {"shortest": _d(0.3, 0.25, 0.35), "any": _d(0.1, 0.05, 0.15)}
    tied = {"shortest": _d(0.0, 0.0, 0.0), "any": _d(0.0, 0.0, 0.0)}
    partly_tied = {"shortest": _d(0.0, 0.0, 0.0), "any": _d(0.1, 0.05, 0.15)}
    behind = {"shortest": _d(-0.2, -0.3, -0.1), "any": _d(0.1, 0.05, 0.15)}
    unsure = {"shortest": _d(0.1, -0.05, 0.25), "any": _d(0.1, 0.05, 0.15)}
    worse, good = _d(-0.4, -0.5, -0.3), _r(0.6, 0.001)
    v = claims.finite_weakness(ahead, worse, good, good, good)
    assert v.claim == "C8" and v.verdict == "supported"
    assert v.check("the advantage goes away under structured demands").state == "supported"
    assert claims.finite_weakness(tied, worse, good, good, good).verdict == "inconclusive"  # nothing was compared
    assert claims.finite_weakness(partly_tied, worse, good, good, good).verdict == "supported"  # a tie is minimax too
    assert claims.finite_weakness(behind, worse, good, good, good).verdict == "contradicted"
    assert claims.finite_weakness(unsure, worse, good, good, good).verdict == "inconclusive"
    assert claims.finite_weakness(ahead, worse, _r(0.05, 0.7), good, good).verdict == "partly supported"
    assert claims.finite_weakness(ahead, worse, good, _r(-0.5, 0.001), good).verdict == "partly supported"
    kept = claims.finite_weakness(ahead, _d(0.2, 0.1, 0.3), good, good, good)
    assert kept.check("the advantage goes away under structured demands").state == "contradicted"
    assert kept.verdict == "supported"  # the boundary is reported, not a condition of the headline
    assert rules_minima._difference_state(_d(0, -0.1, 0.1), "<= 0") == "inconclusive"
    with pytest.raises(ValueError, match="claimed must be"):
        rules_minima._difference_state(_d(0, 0, 0), "> 0")
    for state, geometric in (("supported", good), ("contradicted", _r(-0.5, 0.001)), ("not supported", _r(-0.1, 0.5))):
        # the geometric reading is reported beside the literal one and never moves the headline
        v = claims.finite_weakness(ahead, worse, good, good, geometric)
        assert v.check("the geometric reading predicts network generalisation").state == state
        assert v.verdict == "supported"


# ----------------------------------------------------------------------------- C6

def c6_effects(cells: dict) -> pd.DataFrame:
    """Effects rows from ``{(dataset, regime): {metric: (ci_low, ci_high)}}``; metrics left out
    get an interval across zero."""
    metrics = ["log10_top_eigenvalue", "log10_adaptive_sharpness", "test_acc", "ece", "noise_acc", "consistency"]
    rows = []
    for (dataset, regime), given in cells.items():
        for metric in metrics:
            low, high = given.get(metric, (-1.0, 1.0))
            rows.append({"dataset": dataset, "regime": regime, "metric": metric, "difference": (low + high) / 2,
                         "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


UP, DOWN, ZERO = (0.1, 0.3), (-0.3, -0.1), (-0.1, 0.1)
C6_CELLS = [("mnist", r) for r in ("weight_decay", "augmentation", "sam", "all")]


def test_c6_sharper_and_better_in_half_the_cells_with_every_side_claim_is_supported():
    good = {"log10_top_eigenvalue": UP, "test_acc": UP, "ece": DOWN, "noise_acc": UP, "consistency": UP}
    cells = {c: (good if i < 2 else {}) for i, c in enumerate(C6_CELLS)}
    verdict = claims.regularised(c6_effects(cells))
    assert verdict.verdict == "supported"
    central = verdict.check("regularised minima are sharper yet generalise better")
    assert central.values["fit"] == ["mnist/weight_decay", "mnist/augmentation"]
    assert verdict.check("sharper by an invariant measure too").state == "inconclusive"


def test_c6_a_side_claim_short_of_half_lowers_the_headline_to_partly_supported():
    good = {"log10_top_eigenvalue": UP, "test_acc": UP, "ece": DOWN, "noise_acc": UP}  # consistency unchanged
    verdict = claims.regularised(c6_effects({c: good for c in C6_CELLS}))
    assert verdict.verdict == "partly supported"
    assert verdict.check("they are more consistent across seeds").state == "inconclusive"
    worse_calibrated = {**good, "consistency": UP, "ece": UP}
    verdict = claims.regularised(c6_effects({c: worse_calibrated for c in C6_CELLS}))
    assert verdict.check("they calibrate better").state == "contradicted"
    assert verdict.verdict == "partly supported"


def test_c6_flatter_and_better_minima_contradict_the_claim():
    conventional = {"log10_top_eigenvalue": DOWN, "test_acc": UP}
    verdict = claims.regularised(c6_effects({c: conventional for c in C6_CELLS}))
    assert verdict.verdict == "contradicted"
    sharper_and_worse = {"log10_top_eigenvalue": UP, "test_acc": DOWN}
    assert claims.regularised(c6_effects({c: sharper_and_worse for c in C6_CELLS})).verdict == "contradicted"


def test_c6_no_cell_fitting_is_not_supported_only_when_the_intervals_exclude_the_claimed_gain():
    # sharper, with accuracy intervals that reach +0.5 points: no cell fits, but the data admit the claimed effect
    open_gain = {"log10_top_eigenvalue": UP, "test_acc": (-0.004, 0.005)}
    verdict = claims.regularised(c6_effects({c: open_gain for c in C6_CELLS}))
    assert verdict.verdict == "inconclusive"
    assert len(verdict.check("regularised minima are sharper yet generalise better").values["could_fit"]) == 4
    # the same, but the intervals reach at most +0.2 points: a gain of the claimed size is excluded
    no_gain = {"log10_top_eigenvalue": UP, "test_acc": (-0.004, 0.002)}
    verdict = claims.regularised(c6_effects({c: no_gain for c in C6_CELLS}))
    assert verdict.verdict == "not supported"
    assert verdict.check("regularised minima are sharper yet generalise better").values["could_fit"] == []
    fit = {"log10_top_eigenvalue": UP, "test_acc": UP}
    cells = {c: (fit if i == 0 else {}) for i, c in enumerate(C6_CELLS)}
    assert claims.regularised(c6_effects(cells)).verdict == "inconclusive"


def test_c6_the_first_rule_called_not_supported_exactly_the_runs_where_no_cell_fits():
    open_gain = {"log10_top_eigenvalue": UP, "test_acc": (-0.004, 0.005)}  # no cell fits, the gain is admitted
    verdict = claims.regularised(c6_effects({c: open_gain for c in C6_CELLS}))
    assert (verdict.verdict, claims.regularised_first_rule(verdict)) == ("inconclusive", "not supported")
    fit, flatter = {"log10_top_eigenvalue": UP, "test_acc": UP}, {"log10_top_eigenvalue": DOWN, "test_acc": ZERO}
    one_fits = claims.regularised(c6_effects(dict(zip(C6_CELLS, [fit, flatter, flatter, flatter]))))
    assert (one_fits.verdict, claims.regularised_first_rule(one_fits)) == ("not supported", "inconclusive")
    every = claims.regularised(c6_effects({c: fit for c in C6_CELLS}))
    assert claims.regularised_first_rule(every) == "supported"


def test_c6_not_supported_when_too_few_cells_could_fit_even_if_every_open_one_did():
    flatter = {"log10_top_eigenvalue": DOWN, "test_acc": ZERO}  # significantly flatter: cannot fit
    worse = {"log10_top_eigenvalue": ZERO, "test_acc": DOWN}  # significantly worse: cannot fit
    open_ = {"log10_top_eigenvalue": ZERO, "test_acc": ZERO}
    cells = dict(zip(C6_CELLS, [flatter, worse, flatter, open_]))  # 1 of 4 could fit: short of half
    verdict = claims.regularised(c6_effects(cells))
    assert verdict.check("regularised minima are sharper yet generalise better").values["could_fit"] == ["mnist/all"]
    assert verdict.verdict == "not supported"
    cells[C6_CELLS[2]] = open_  # 2 of 4 could: the data no longer exclude "at least half"
    assert claims.regularised(c6_effects(cells)).verdict == "inconclusive"


def test_c6_half_is_counted_over_every_dataset_and_regime():
    fit = {"log10_top_eigenvalue": UP, "test_acc": UP}
    cells = {(d, r): (fit if d == "mnist" and r in ("sam", "all") else {}) for d in ("mnist", "fashion_mnist")
             for r in ("weight_decay", "augmentation", "sam", "all")}
    verdict = claims.regularised(c6_effects(cells))
    assert verdict.values["cells"] == 8
    assert verdict.check("regularised minima are sharper yet generalise better").state == "inconclusive"  # 2 of 8
    cells.update({("fashion_mnist", "sam"): fit, ("fashion_mnist", "all"): fit})
    assert claims.regularised(c6_effects(cells)).check(
        "regularised minima are sharper yet generalise better").state == "supported"  # 4 of 8


def test_c6_the_invariant_measure_and_weakness_are_reported_without_moving_the_headline():
    fit = {"log10_top_eigenvalue": UP, "log10_adaptive_sharpness": DOWN, "test_acc": UP, "ece": DOWN,
           "noise_acc": UP, "consistency": UP}
    weakness = {"mnist": corr(-0.5, 0.001, -0.7, -0.2, 40), "fashion_mnist": corr(0.1, 0.5, -0.2, 0.4, 40)}
    verdict = claims.regularised(c6_effects({c: fit for c in C6_CELLS}), weakness=weakness)
    assert verdict.verdict == "supported"
    assert verdict.check("sharper by an invariant measure too").state == "contradicted"
    assert verdict.check("weakness orders the networks as test accuracy does").state == "contradicted"


def test_c6_an_interval_on_zero_or_a_missing_metric_is_not_a_finding():
    assert rules_minima._cell_state({"ci_low": 0.0, "ci_high": 0.2}, +1) == "inconclusive"
    assert rules_minima._cell_state({"ci_low": -0.3, "ci_high": -0.1}, -1) == "supported"
    effects = c6_effects({C6_CELLS[0]: {}})
    with pytest.raises(ValueError, match="consistency"):
        claims.regularised(effects[effects["metric"] != "consistency"])


# ----------------------------------------------------------------------------- C7

def c7_condition(noise, approximation, auc=1.0, p_flatter=1e-4, p_sharper=0.99, attack_auc=0.5, loss=0.1,
                 auc_se=0.02):
    return {"noise": noise, "approximation": approximation,
            "separation": {"auc": auc, "p_flatter": p_flatter, "p_sharper": p_sharper, "auc_se": auc_se},
            "raw_attack": {"auc": attack_auc}, "flattest_relative_loss": loss}


def test_c7_clean_separation_and_generalising_flattest_interpolators_are_supported():
    verdict = claims.flattest_interpolators([c7_condition(0, 0), c7_condition(1.0, 1.0, auc=0.6, p_flatter=0.2)])
    assert verdict.verdict == "supported"
    assert verdict.check("flattening the non-generalising interpolators closes the raw-trace gap").state == "supported"
    assert verdict.check("separation weakens outside the theorem's conditions").state == "supported"


def test_c7_the_benign_condition_decides_whatever_the_order():
    conditions = [c7_condition(1.0, 0, auc=0.5, p_flatter=0.5, p_sharper=0.5), c7_condition(0, 0)]
    verdict = claims.flattest_interpolators(conditions)
    assert verdict.check("non-generalising interpolators cannot be made as flat").values["noise"] == 0
    with pytest.raises(ValueError, match="least noise and the least approximation"):
        claims.flattest_interpolators([c7_condition(0, 1.0), c7_condition(1.0, 0)])


@pytest.mark.parametrize("auc,p_flatter,p_sharper,state", [
    (0.95, 0.001, 0.99, "supported"),
    (0.85, 0.001, 0.99, "inconclusive"),  # significant but not clean
    (0.95, 0.2, 0.8, "inconclusive"),  # clean but too few interpolators to be significant
    (0.1, 0.99, 0.001, "contradicted"),  # the generalising ones are the sharper
])
def test_c7_separation_states(auc, p_flatter, p_sharper, state):
    verdict = claims.flattest_interpolators([c7_condition(0, 0, auc, p_flatter, p_sharper)])
    assert verdict.check("non-generalising interpolators cannot be made as flat").state == state
    assert verdict.check("separation weakens outside the theorem's conditions").state == "inconclusive"


@pytest.mark.parametrize("loss,state,headline", [(0.3, "supported", "supported"),
                                                 (0.7, "inconclusive", "partly supported"),
                                                 (1.2, "contradicted", "partly supported"),
                                                 (math.nan, "inconclusive", "partly supported")])
def test_c7_flattest_interpolators_that_do_not_generalise_lower_the_headline(loss, state, headline):
    verdict = claims.flattest_interpolators([c7_condition(0, 0, loss=loss)])
    assert verdict.check("the flattest interpolators generalise").state == state
    assert verdict.verdict == headline


def test_c7_a_raw_trace_that_still_separates_after_the_attack_was_not_fooled():
    verdict = claims.flattest_interpolators([c7_condition(0, 0, attack_auc=0.95)])
    check = verdict.check("flattening the non-generalising interpolators closes the raw-trace gap")
    assert check.state == "contradicted"


def test_c6_a_tie_between_cells_for_and_against_is_inconclusive():
    fit = {"log10_top_eigenvalue": UP, "test_acc": UP, "ece": DOWN, "noise_acc": UP, "consistency": UP}
    against = {"log10_top_eigenvalue": DOWN, "test_acc": UP, "ece": UP, "noise_acc": DOWN, "consistency": DOWN}
    cells = {c: (fit if i < 2 else against) for i, c in enumerate(C6_CELLS)}
    verdict = claims.regularised(c6_effects(cells))
    assert verdict.check("regularised minima are sharper yet generalise better").state == "inconclusive"
    for side in ("they calibrate better", "they resist input noise better", "they are more consistent across seeds"):
        assert verdict.check(side).state == "inconclusive"
    assert verdict.verdict == "inconclusive"


def test_c7_an_undefined_separation_at_the_harshest_condition_is_inconclusive():
    verdict = claims.flattest_interpolators([c7_condition(0, 0), c7_condition(1.0, 1.0, auc=math.nan)])
    assert verdict.check("separation weakens outside the theorem's conditions").state == "inconclusive"


def test_every_registered_measure_the_atlas_orients_has_a_claimed_sign():
    from flatlib import measures

    signs = {name: claims.claimed_sign(name, m.family) for name, m in measures.MEASURES.items() if m.family != "bound"}
    assert signs["weakness_open_labels"] == +1 and signs["top_eigenvalue"] == -1
    assert signs["margin_output"] == +1 and signs["jacobian_norm"] == -1 and signs["path_norm"] == -1
    with pytest.raises(ValueError, match="LITERATURE_SIGN"):
        claims.claimed_sign("margin_of_tomorrow", "margin")


def _weakens(benign_auc, benign_se, harsh_auc, harsh_se):
    benign, harsh = c7_condition(0, 0, auc=benign_auc), c7_condition(1.0, 1.0, auc=harsh_auc, p_flatter=0.01)
    benign["separation"]["auc_se"], harsh["separation"]["auc_se"] = benign_se, harsh_se
    return claims.flattest_interpolators([benign, harsh]).check("separation weakens outside the theorem's conditions")


@pytest.mark.parametrize("benign,harsh,state", [
    ((1.0, 0.0), (0.99, 0.011), "not supported"),  # 1.00 -> 0.99: the interval [-0.01, +0.03] excludes a drop of 0.1
    ((1.0, 0.0), (0.6, 0.05), "supported"),  # a drop of 0.4, interval [+0.30, +0.50]
    ((1.0, 0.0), (0.8, 0.15), "inconclusive"),  # a drop of 0.2 whose interval reaches below 0
    ((0.95, 0.01), (0.91, 0.01), "not supported"),  # significant, but a drop of 0.04 with interval below 0.1
    ((0.7, 0.02), (0.95, 0.02), "contradicted"),  # the AUC rises significantly
    ((1.0, math.nan), (0.5, 0.05), "inconclusive"),  # no interval: no finding
])
def test_c7_separation_weakens_only_by_the_minimum_drop_with_its_interval(benign, harsh, state):
    check = _weakens(*benign, *harsh)
    assert check.state == state, check.values
    if "drop" in check.values:
        half = 1.959964 * math.hypot(benign[1], harsh[1])
        assert check.values["ci"] == pytest.approx([benign[0] - harsh[0] - half, benign[0] - harsh[0] + half])


def test_c7_minimum_drop_is_the_distance_from_perfect_to_clean_separation():
    assert claims.MIN_AUC_DROP == pytest.approx(1 - claims.CLEAN_SEPARATION)


# The common training loss: the pre-registered robustness check ------------------------------

def _corr(rho, p, low, high, n=100):
    return {"rho": rho, "p": p, "ci_low": low, "ci_high": high, "n": n}


@pytest.mark.parametrize("raw,given,headline", [
    (_corr(0.4, 1e-4, 0.2, 0.55), _corr(0.35, 1e-3, 0.15, 0.5), "supported"),  # the finding survives the fit
    (_corr(0.4, 1e-4, 0.2, 0.55), _corr(0.05, 0.6, -0.15, 0.25), "inconclusive"),  # it rests on the fit
    (_corr(-0.3, 1e-3, -0.45, -0.1), _corr(-0.28, 2e-3, -0.45, -0.1), "contradicted"),
    (_corr(-0.3, 1e-3, -0.45, -0.1), _corr(-0.1, 0.3, -0.3, 0.1), "inconclusive"),
    (_corr(-0.05, 0.6, -0.25, 0.12), _corr(0.3, 1e-3, 0.1, 0.5), "not supported"),  # no finding: left as it is
])
def test_a_head_to_head_finding_the_partial_given_the_fit_does_not_reproduce_is_inconclusive(raw, given, headline):
    sharp, simple = _corr(-0.3, 1e-3, -0.45, -0.1), _corr(0.01, 0.9, -0.1, 0.1)
    verdict = claims.head_to_head("mnist", raw, sharp, simple, weakness_given_fit=given)
    assert verdict.verdict == headline
    assert verdict.check(f"weakness predicts test accuracy {claims.GIVEN_FIT}").state == \
        claims.directional("x", given["rho"], given["p"], (given["ci_low"], given["ci_high"]), +1).state
    assert claims.head_to_head("mnist", raw, sharp, simple).verdict == (
        "supported" if raw["rho"] > 0 else "contradicted" if raw["p"] < 0.05 else "not supported")


def test_the_atlas_finding_that_vanishes_given_the_fit_is_inconclusive():
    import pandas as pd

    def table(rho_w):
        rows = []
        for dataset in ("mnist", "fashion_mnist"):
            for e in range(6):
                rows.append({"dataset": dataset, "environment": f"e{e}", "measure": "weakness_open_labels",
                             "rho": rho_w, "p": 0.01, "n": 24})
                rows.append({"dataset": dataset, "environment": f"e{e}", "measure": "top_eigenvalue",
                             "rho": -0.1, "p": 0.5, "n": 24})
        return pd.DataFrame(rows)

    raw = table(-0.4)  # a reversal in every environment: pooled contradicted
    plain = claims.atlas(raw, ["top_eigenvalue"], ("weakness_open_labels",))
    assert plain.verdict == "contradicted"
    assert claims.atlas(raw, ["top_eigenvalue"], ("weakness_open_labels",),
                        within_given_fit=table(-0.4)).verdict == "contradicted"
    vanished = claims.atlas(raw, ["top_eigenvalue"], ("weakness_open_labels",), within_given_fit=table(0.0))
    assert vanished.verdict == "inconclusive"
    assert vanished.check(f"weakness_open_labels: pooled within environments {claims.GIVEN_FIT}").state == \
        "not supported"
