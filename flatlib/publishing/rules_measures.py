"""The verdict rules of the claims about which measures predict what (``flatlib.claims``, which
re-exports them): C1 (a reparameterisation inflates the Hessian), C2 and C3 (head to head), the
atlas (C2+) and the geometric reading beyond each margin measure (C2+m).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from flatlib.engine import stats
from flatlib.publishing.claim_figures import ALPHA, SMALLEST_EFFECT, head_to_head_claim
from flatlib.publishing.verdicts import Check, Verdict, directional, first_reaching, headline_verdict, negligible


def reparameterisation(alphas, eig_inflation, trace_inflation, predictions_changed: int,
                       test_loss_change: float, target: float = 100.0, loss_tolerance: float = 1e-5) -> Verdict:
    """C1. Function preserved = no test prediction changed and the test loss moved by less
    than ``loss_tolerance`` relatively. Supported if, at the largest alpha, both the top
    eigenvalue and the trace grew at least ``target``-fold with the function preserved;
    partly supported at 10-fold; a function that changed contradicts the claim.

    The growth goes as alpha^2, so the rule is met by choosing alpha large enough: it is a
    demonstration, not a test with an uncertain outcome. The verdict therefore also reports the
    first alpha at which each quantity reaches the target."""
    alphas = list(alphas)
    if len(alphas) != len(eig_inflation) or len(alphas) != len(trace_inflation):
        raise ValueError("give one eigenvalue and one trace inflation per alpha")
    top = int(np.argmax(alphas))
    growth = min(eig_inflation[top], trace_inflation[top])
    preserved = predictions_changed == 0 and test_loss_change < loss_tolerance
    function = Check("function preserved", "supported" if preserved else "contradicted",
                     {"predictions_changed": int(predictions_changed), "test_loss_max_rel_change": test_loss_change})
    inflated = Check("Hessian inflated", "supported" if growth >= target else "not supported",
                     {"growth_at_largest_alpha": float(growth), "target": target})
    if not preserved:
        verdict = "contradicted"
    elif growth >= target:
        verdict = "supported"
    elif growth >= 10:
        verdict = "partly supported"
    else:
        verdict = "not supported"
    return Verdict("C1", verdict, (function, inflated), {
        "alpha_max": float(alphas[top]),
        "first_alpha_eigenvalue": first_reaching(alphas, eig_inflation, target),
        "first_alpha_trace": first_reaching(alphas, trace_inflation, target)})


# C2, C3 -------------------------------------------------------------------------------------

GIVEN_FIT = "given the training loss at the stop"


def robust_to_fit(central: Check, given_fit: Check, headline: str) -> str:
    """The pre-registered robustness check of the common training loss (fixed before the re-run
    of the head-to-heads and the atlas at the new recipe): the central check is computed again on
    the partial correlation given each network's training loss at the stop. A finding
    (``central`` supported or contradicted) that the partial correlation does not reproduce in
    the same state rests on how well the networks fit, not on the measure: the headline becomes
    inconclusive. An absence of finding is left as it is (the partial state is reported)."""
    if central.state in ("supported", "contradicted") and given_fit.state != central.state:
        return "inconclusive"
    return headline


def head_to_head(dataset: str, weakness: dict, sharpness: dict, simplicity: dict, alpha: float = ALPHA,
                 weakness_given_fit: dict | None = None) -> Verdict:
    """C2 (MNIST) and C3 (Fashion-MNIST), on the pre-registered primary measures, each given as
    ``{"rho", "p", "ci_low", "ci_high", "n"}`` against test accuracy (``p``: the decision
    p-value, the permutation p). Central: weakness predicts test accuracy (rho > 0). Sides:
    sharpness anticorrelates (rho < 0); simplicity predicts nothing on MNIST (equivalence test)
    and is somewhat predictive (rho > 0) on Fashion-MNIST. With ``weakness_given_fit`` (the same
    fields for the partial correlation given the training loss at the stop), the central check
    is repeated on it and ``robust_to_fit`` applies."""
    claim = head_to_head_claim(dataset)

    def ci(r):
        return (r["ci_low"], r["ci_high"])

    central = directional("weakness predicts test accuracy", weakness["rho"], weakness["p"], ci(weakness), +1, alpha)
    sides = [directional("sharpness anticorrelates", sharpness["rho"], sharpness["p"], ci(sharpness), -1, alpha)]
    if claim == "C2":
        sides.append(negligible("simplicity predicts nothing", simplicity["rho"], simplicity["p"],
                                int(simplicity["n"]), alpha))
    else:
        sides.append(directional("simplicity somewhat predictive", simplicity["rho"], simplicity["p"], ci(simplicity),
                                 +1, alpha))
    headline = headline_verdict(central, sides)
    if weakness_given_fit is None:
        return Verdict(claim, headline, (central, *sides))
    given = directional(f"weakness predicts test accuracy {GIVEN_FIT}", weakness_given_fit["rho"],
                        weakness_given_fit["p"], ci(weakness_given_fit), +1, alpha)
    return Verdict(claim, robust_to_fit(central, given, headline), (central, *sides, given))


def distinct_hypotheses(table, measures: list[str], targets: list[str]) -> int:
    """The size of the Bonferroni family: measures times the number of targets that rank the
    networks differently. Two targets whose rankings are equal or exactly reversed (test
    accuracy and the train-test gap, when every network fits its training set) are one
    hypothesis per measure, not two."""
    from scipy.stats import rankdata

    distinct: list[np.ndarray] = []
    for target in targets:
        ranks = rankdata(table[target].to_numpy(dtype=float))
        if not any(np.array_equal(ranks, r) or np.array_equal(ranks, rankdata(-r)) for r in distinct):
            distinct.append(ranks)
    return len(measures) * len(distinct)


# C2+: the robustness atlas --------------------------------------------------------------------

# The pre-registered weakness measures, primary first: the headline follows the primary.
ATLAS_WEAKNESS = ("weakness_open_labels", "weakness_input_volume")
ATLAS_CLAIMED_SIGN = {"weakness": +1, "sharpness": -1, "simplicity": +1}
# The margin family is no claim of the paper's: each of its measures is oriented by the sign its
# own literature reports with generalisation: a larger margin better (Bartlett et al. 2017;
# Elsayed et al. 2018; Jiang et al. 2020), a larger input sensitivity (Novak et al. 2018) or
# path norm (Neyshabur et al. 2015; Jiang et al. 2020) worse.
LITERATURE_SIGN = {"margin_output": +1, "margin_output_normalised": +1, "margin_input_distance": +1,
                   "jacobian_norm": -1, "path_norm": -1}


def claimed_sign(measure: str, family: str) -> int:
    """+1 where a larger value of ``measure`` is claimed to go with better generalisation, -1
    where with worse: the paper's claim for its families (``ATLAS_CLAIMED_SIGN``), the
    literature's for each measure of the margin family (``LITERATURE_SIGN``)."""
    if family in ATLAS_CLAIMED_SIGN:
        return ATLAS_CLAIMED_SIGN[family]
    if family == "margin" and measure in LITERATURE_SIGN:
        return LITERATURE_SIGN[measure]
    raise ValueError(f"no claimed sign for {measure!r} (family {family!r}); a margin-family measure needs its "
                     "literature's sign in claims.LITERATURE_SIGN")


def combined_state(states: list[str]) -> str:
    """One state from one per dataset: supported only if supported on every dataset;
    contradicted if contradicted somewhere and supported nowhere; not supported if not
    supported everywhere; otherwise (including opposite findings) inconclusive."""
    if all(s == "supported" for s in states):
        return "supported"
    if "contradicted" in states and "supported" not in states:
        return "contradicted"
    if all(s == "not supported" for s in states):
        return "not supported"
    return "inconclusive"


def atlas(within, sharpness: list[str], weakness: tuple[str, ...] = ATLAS_WEAKNESS, alpha: float = ALPHA,
          within_given_fit=None) -> Verdict:
    """C2+, the robustness atlas, from ``within``: one row per (``dataset``, ``environment``,
    ``measure``) with the Spearman ``rho`` of the measure with test accuracy over the
    environment's networks, its decision p-value ``p`` (the permutation p) and its number of
    networks ``n``. ``sharpness`` names the sharpness measures weakness is compared with
    (claimed sign -1).

    For each pre-registered weakness measure (``weakness``, primary first), on each dataset:

    * pooled: the fixed-effect pooled rho over environments (``stats.pooled_correlation``)
      judged by ``directional`` (claimed sign +1); combined over datasets by ``combined_state``;
    * holds across recipes: contradicted if any environment shows a reversal significant at the
      Bonferroni level alpha / (environments of all datasets), by the Fisher z test of its rho
      (not the permutation p, whose floor 1 / (resamples + 1) may not reach that level);
      supported if the random-effects 95 % prediction interval for a new environment's rho lies
      above 0 on every dataset (evidence that it holds in recipes not yet tried, not merely an
      absence of heterogeneity); not supported if that interval reaches below -0.2 on some
      dataset (a new recipe may well reverse it); inconclusive otherwise, or with fewer than 3
      environments on a dataset;
    * beats sharpness: weakness's pooled 95 % interval lies wholly above that of the best
      sharpness measure (the one with the largest pooled -rho; its interval sign-flipped) on
      every dataset (supported), wholly below it on every dataset (contradicted), else
      inconclusive. Non-overlapping intervals are a conservative test of a difference, and
      picking the best of several sharpness measures favours sharpness.

    The headline follows the primary weakness measure's pooled check, lowered from supported
    to partly supported when its robustness or its comparison with sharpness is not supported.
    With ``within_given_fit`` (the same table with each environment's partial correlation given
    the training loss at the stop as ``rho``), the primary's pooled check is repeated on it and
    ``robust_to_fit`` applies.
    The counts of environments where each weakness measure has the paper's sign (significantly,
    and at all) and where it is significantly reversed are reported for every dataset."""
    needed = {"dataset", "environment", "measure", "rho", "p", "n"}
    missing = sorted(needed - set(within.columns))
    if missing:
        raise ValueError(f"within lacks columns {missing}")
    if not weakness or not sharpness:
        raise ValueError("name at least one weakness and one sharpness measure")
    unknown = sorted((set(weakness) | set(sharpness)) - set(within["measure"]))
    if unknown:
        raise ValueError(f"no correlations for measure(s) {unknown}")
    datasets = sorted(within["dataset"].unique())
    environments = within[["dataset", "environment"]].drop_duplicates().shape[0]
    strict = alpha / environments

    def pooled(measure, dataset):
        rows = within[(within["measure"] == measure) & (within["dataset"] == dataset)]
        return stats.pooled_correlation(rows["rho"], rows["n"]), rows

    best_sharpness = {}
    for dataset in datasets:
        results = {m: pooled(m, dataset)[0] for m in sharpness}
        best = max(results, key=lambda m: -results[m].statistic)
        low, high = results[best].interval
        best_sharpness[dataset] = {"measure": best, "score": -results[best].statistic, "ci": [-high, -low]}

    checks, values = [], {"environments": int(environments), "bonferroni_alpha": strict,
                          "best_sharpness": best_sharpness, "weakness": {}}
    headline = None
    for measure in weakness:
        per_dataset, pooled_states, reversed_any, predictions, above, below = {}, [], False, [], [], []
        for dataset in datasets:
            result, rows = pooled(measure, dataset)
            check = directional(measure, result.statistic, result.pvalue, tuple(result.interval), +1, alpha)
            pooled_states.append(check.state)
            significant = rows["p"] < alpha
            z, variance = stats.fisher_z(rows["rho"], rows["n"])
            p_z = 2 * sps.norm.sf(np.abs(z) / np.sqrt(variance))
            reversed_ = rows[(p_z < strict) & (rows["rho"] < 0)]
            reversed_any |= len(reversed_) > 0
            predictions.append(result.prediction)
            above.append(result.interval.low > best_sharpness[dataset]["ci"][1])
            below.append(result.interval.high < best_sharpness[dataset]["ci"][0])
            per_dataset[dataset] = {
                "pooled_rho": result.statistic, "pooled_p": result.pvalue, "pooled_ci": list(result.interval),
                "q_p": result.q_pvalue, "tau2": result.tau2, "prediction_interval": list(result.prediction),
                "environments": int(len(rows)),
                "significant_with_paper_sign": int((significant & (rows["rho"] > 0)).sum()),
                "positive": int((rows["rho"] > 0).sum()),
                "significant_reversed": int((significant & (rows["rho"] < 0)).sum()),
                "reversed_at_bonferroni": sorted(str(e) for e in reversed_["environment"]),
                "state": check.state}
        values["weakness"][measure] = per_dataset
        central = Check(f"{measure}: pooled within environments", combined_state(pooled_states),
                        {d: {k: per_dataset[d][k] for k in ("pooled_rho", "pooled_p", "pooled_ci", "state")}
                         for d in datasets})
        if reversed_any:
            robust_state = "contradicted"
        elif any(math.isnan(p.low) for p in predictions):
            robust_state = "inconclusive"
        elif all(p.low > 0 for p in predictions):
            robust_state = "supported"
        elif any(p.low < -SMALLEST_EFFECT for p in predictions):
            robust_state = "not supported"
        else:
            robust_state = "inconclusive"
        robust = Check(f"{measure}: holds across recipes", robust_state,
                       {d: {k: per_dataset[d][k] for k in ("prediction_interval", "q_p", "significant_reversed",
                                                             "reversed_at_bonferroni")} for d in datasets})
        beat_state = "supported" if all(above) else "contradicted" if all(below) else "inconclusive"
        beat = Check(f"{measure}: beats the best sharpness measure", beat_state,
                     {d: {"weakness": per_dataset[d]["pooled_rho"], "weakness_ci": per_dataset[d]["pooled_ci"],
                          **best_sharpness[d]} for d in datasets})
        checks += [central, robust, beat]
        if headline is None:
            headline = central.state
            if headline == "supported" and (robust.state != "supported" or beat.state != "supported"):
                headline = "partly supported"
            if within_given_fit is not None:
                states = []
                for dataset in datasets:
                    rows = within_given_fit[(within_given_fit["measure"] == measure)
                                            & (within_given_fit["dataset"] == dataset)]
                    if len(rows) == 0:  # no environment with a partial correlation: no finding
                        states.append("inconclusive")
                        continue
                    result = stats.pooled_correlation(rows["rho"], rows["n"])
                    states.append(directional(measure, result.statistic, result.pvalue, tuple(result.interval), +1,
                                              alpha).state)
                given = Check(f"{measure}: pooled within environments {GIVEN_FIT}", combined_state(states),
                              dict(zip(datasets, states)))
                checks.append(given)
                headline = robust_to_fit(central, given, headline)
    values["headline_measure"] = weakness[0]
    return Verdict("C2+", headline, tuple(checks), values)


# C2+m: does the geometric reading predict beyond margins? ------------------------------------

# The reading of weakness under test, and the margin family it may be standing in for (issue 33;
# the measures' names as the registry will carry them). The rule reads the column names it is
# given, so it does not depend on how the margins are computed.
GEOMETRIC_WEAKNESS = "weakness_input_volume"
MARGIN_MEASURES = ("margin_output", "margin_output_normalised", "margin_input_distance", "jacobian_norm",
                   "path_norm")


def beyond_margins(partials, margins=MARGIN_MEASURES, measure: str = GEOMETRIC_WEAKNESS,
                   alpha: float = ALPHA) -> Verdict:
    """C2+m, pre-registered before the atlas's re-run with the margin family: does the
    geometric reading of weakness predict test accuracy beyond what a margin measure does?

    ``partials`` (``flatlib.atlas.within_partial``): one row per (``dataset``, ``environment``,
    ``given``) with ``partial_rho``, the partial Spearman correlation of ``measure`` with test
    accuracy given the margin measure ``given`` within the environment, and its ``n`` networks.
    For each margin measure, on each dataset: the fixed-effect pooled partial correlation over
    environments (``stats.pooled_correlation`` on ``n`` - 1 pairs: a partial correlation given
    one variable has the Fisher-z variance of a plain one on one pair fewer; environments whose
    partial correlation is undefined are left out) judged by ``directional`` (claimed sign +1),
    combined over datasets by ``combined_state``.

    The headline is supported if it is supported given every margin measure: the reading
    predicts beyond margins only if no margin explains it away. Otherwise it is the worst state
    given some margin measure, in the order contradicted (it predicts the other way once that
    margin is held fixed), not supported (that margin explains it: the pooled interval excludes
    a partial correlation of ``SMALLEST_EFFECT``), inconclusive."""
    needed = {"dataset", "environment", "given", "partial_rho", "n"}
    missing = sorted(needed - set(partials.columns))
    if missing:
        raise ValueError(f"partials lacks columns {missing}; build it with flatlib.atlas.within_partial")
    margins = list(margins)
    if not margins:
        raise ValueError("name at least one margin measure")
    absent = sorted(set(margins) - set(partials["given"]))
    if absent:
        raise ValueError(f"no partial correlations given margin measure(s) {absent}")
    if "measure" in partials.columns and set(partials["measure"]) != {measure}:
        raise ValueError(f"partials are of {sorted(set(partials['measure']))}, not of {measure!r}")
    datasets = sorted(partials["dataset"].unique())
    checks = []
    for margin in margins:
        per = {}
        for dataset in datasets:
            rows = partials[(partials["given"] == margin) & (partials["dataset"] == dataset)]
            rows = rows[np.isfinite(rows["partial_rho"].astype(float)) & (rows["n"] >= 5)]
            if rows.empty:
                per[dataset] = {"state": "inconclusive", "reason": "no environment has a defined partial correlation"}
                continue
            pooled = stats.pooled_correlation(rows["partial_rho"], rows["n"] - 1)
            check = directional(margin, pooled.statistic, pooled.pvalue, tuple(pooled.interval), +1, alpha)
            per[dataset] = {"pooled_partial_rho": pooled.statistic, "pooled_p": pooled.pvalue,
                            "pooled_ci": list(pooled.interval), "environments": int(len(rows)), "state": check.state}
        checks.append(Check(f"{measure} predicts beyond {margin}",
                            combined_state([v["state"] for v in per.values()]), per))
    states = [c.state for c in checks]
    verdict = ("supported" if all(x == "supported" for x in states) else
               next(x for x in ("contradicted", "not supported", "inconclusive") if x in states))
    return Verdict("C2+m", verdict, tuple(checks), {"measure": measure, "margins": margins})


# C4 ------------------------------------------------------------------------------------------
