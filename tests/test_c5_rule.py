"""C5's rule at version 2 (``rules_bounds.pacbayes_link``): the repairs made after the first full
run on certificates that are bounds. Each test fails on version 1 (which had no ``weakness``,
``bound_given_size`` or ``bound_given_fit``, and no such columns in the study)."""
import numpy as np
import pandas as pd
import pytest

from flatlib import claims


def corr(rho, p, low, high, n=100):
    return {"rho": rho, "p": p, "ci_low": low, "ci_high": high, "n": n}


B_POS = corr(0.5, 0.0001, 0.3, 0.65)
EXPLAINED = corr(0.1, 0.4, -0.1, 0.3)  # given W, the bound's correlation is gone
SURVIVES = corr(-0.3, 0.003, -0.5, -0.1)
W_NEG = corr(-0.4, 0.001, -0.6, -0.2)
KL = 5000.0


def test_the_rule_needs_weakness_against_test_error_when_there_is_a_bound():
    with pytest.raises(ValueError, match="weakness="):
        claims.pacbayes_link(B_POS, EXPLAINED, SURVIVES, median_kl=KL)


@pytest.mark.parametrize("weakness,state,verdict", [
    (W_NEG, "supported", "supported"),
    (corr(+0.7, 0.0001, 0.5, 0.8), "not supported", "partly supported"),  # the claim's opposite sign
    (corr(-0.1, 0.4, -0.3, 0.1), "not supported", "partly supported"),  # weakness predicts nothing
])
def test_only_weakness_with_the_claims_sign_can_explain_the_bound(weakness, state, verdict):
    out = claims.pacbayes_link(B_POS, EXPLAINED, SURVIVES, median_kl=KL, weakness=weakness)
    assert out.check("bound explained by weakness").state == state
    assert out.check("bound explained by weakness").values["weakness_rho"] == weakness["rho"]
    assert out.verdict == verdict


@pytest.mark.parametrize("given,name", [("bound_given_size", "the training-set size"),
                                        ("bound_given_fit", "the training loss")])
@pytest.mark.parametrize("partial,verdict", [
    (corr(0.45, 0.0001, 0.25, 0.6), "supported"),  # reproduced: the verdict stands
    (corr(-0.5, 0.0001, -0.65, -0.3), "inconclusive"),  # reversed within (Simpson's paradox)
    (corr(0.05, 0.6, -0.15, 0.25), "inconclusive"),  # gone
])
def test_a_bound_must_predict_test_error_given_the_size_and_the_fit(given, name, partial, verdict):
    out = claims.pacbayes_link(B_POS, EXPLAINED, SURVIVES, median_kl=KL, weakness=W_NEG, **{given: partial})
    assert out.check(f"bound predicts test error given {name}").state in ("supported", "contradicted",
                                                                           "not supported", "inconclusive")
    assert out.verdict == verdict


def _simpson(seed=0, per_size=30):
    """Two training-set sizes; within each, a looser bound goes with LOWER test error (the
    bound anticorrelates); the larger size has both a tighter bound and a lower error, so the
    pooled correlation is positive. Weakness predicts test error within and across."""
    rng = np.random.default_rng(seed)
    rows = []
    for size, shift in ((10000, 1.0), (20000, -1.0)):
        b = rng.normal(size=per_size)
        err = shift * 3 - 0.8 * b + 0.3 * rng.normal(size=per_size)
        rows.append(pd.DataFrame({
            "certificate": 0.5 + 0.05 * (b + 4 * shift), "certificate_kl": KL, "test_error": err,
            "weakness_open_labels": -err + 0.3 * rng.normal(size=per_size),
            "weakness_input_volume": rng.normal(size=per_size), "train_size": size,
            "train_loss": 0.01 * rng.random(per_size)}))
    return pd.concat(rows, ignore_index=True)


def test_a_pooled_correlation_that_reverses_within_each_training_set_size_is_inconclusive():
    table = _simpson()
    pooled = claims.pacbayes_link_study(table, n_resamples=999, size=None, fit=None)[0]["weakness_open_labels"]
    assert pooled.check("bound predicts test error").state == "supported"  # version 1 judged on this alone
    verdicts, correlations = claims.pacbayes_link_study(table, n_resamples=999)
    primary = verdicts["weakness_open_labels"]
    assert primary.check("bound predicts test error").state == "supported"
    assert primary.check("bound predicts test error given the training-set size").state == "contradicted"
    assert primary.verdict == "inconclusive"
    assert {("certificate", "test_error", "train_size"), ("certificate", "test_error", "train_loss")} <= \
        set(map(tuple, correlations[["x", "y", "controlling for"]].to_numpy()))


def test_a_size_that_does_not_vary_leaves_its_check_out_and_a_missing_column_is_refused():
    one_size = _simpson().query("train_size == 10000")
    primary = claims.pacbayes_link_study(one_size, n_resamples=999)[0]["weakness_open_labels"]
    names = [c.name for c in primary.checks]
    assert "bound predicts test error given the training-set size" not in names
    assert "bound predicts test error given the training loss" in names
    with pytest.raises(ValueError, match="train_loss"):
        claims.pacbayes_link_study(one_size.drop(columns="train_loss"), n_resamples=999)


def test_version_1_is_kept_to_show_what_the_repairs_moved():
    wrong_sign = corr(+0.7, 0.0001, 0.5, 0.8)
    reversed_within = corr(-0.5, 0.0001, -0.65, -0.3)
    old = claims.pacbayes_link(B_POS, EXPLAINED, SURVIVES, median_kl=KL, weakness=wrong_sign,
                               bound_given_size=reversed_within, version=1)
    assert old.verdict == "supported" and [c.name for c in old.checks] == [
        "certificates are bounds", "bound predicts test error", "bound explained by weakness",
        "weakness survives the bound"]
    assert claims.pacbayes_link(B_POS, EXPLAINED, SURVIVES, median_kl=KL, weakness=wrong_sign,
                                bound_given_size=reversed_within).verdict == "inconclusive"
    table = _simpson()
    assert claims.pacbayes_link_study(table, n_resamples=999, version=1)[0]["weakness_open_labels"].verdict != \
        "inconclusive"
    with pytest.raises(ValueError, match="versions 1 and 2"):
        claims.pacbayes_link(B_POS, EXPLAINED, SURVIVES, median_kl=KL, weakness=W_NEG, version=3)
