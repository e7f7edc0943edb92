"""The claims under test: the paper's figures as data, and every chapter's verdict rule.

One home for what decides the scoreboard. A chapter computes its numbers, passes them to the
rule of its claim here and reports what comes back; no verdict logic lives in a notebook. The
rules were fixed, with the unit tests in ``tests/test_claims.py``, before the full runs they
judge. A rule returns a :class:`Verdict`: the headline verdict and the sub-claims it rests on,
each with its own state:

* ``supported``: significant at ``alpha``, in the claimed direction;
* ``contradicted``: significant, in the opposite direction;
* ``not supported``: not significant, and the data exclude an effect of the claimed size
  (the interval stays below ``SMALLEST_EFFECT`` in the claimed direction);
* ``inconclusive``: not significant, and the data cannot exclude it either.

A claim's headline verdict follows its *central* sub-claim (for C2 and C3, that weakness
predicts generalisation); the side claims can lower "supported" to "partly supported", never
raise a failed central claim.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

from flatlib.engine import stats
from flatlib.experiments import batchsize
from flatlib.infrastructure import keys

STATES = ("supported", "contradicted", "not supported", "inconclusive")
VERDICTS = ("supported", "partly supported", "contradicted", "not supported", "inconclusive")
ALPHA = 0.05
# The smallest |rho| that counts as "predicts": a correlation whose interval stays inside
# (-0.2, 0.2) is negligible; the same bound is the equivalence margin of "predicts nothing".
SMALLEST_EFFECT = 0.2


# ----------------------------------------------------------------------------- the paper's figures

@dataclass(frozen=True)
class Figure:
    """One number the paper reports, and what it is measured against."""

    quantity: str
    value: float | None = None
    p: float | None = None
    against: str = ""
    n: int | None = None  # the networks behind the figure, where the paper gives them


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    paper: str  # the paper's figure as the scoreboard shows it
    against: str  # what our figure is measured against
    source: str
    figures: dict[str, Figure] = field(default_factory=dict)
    topic: str = ""  # a few words, for the landing page's figure


_RHO = "Spearman rho with test accuracy"
CLAIMS: dict[str, Claim] = {c.id: c for c in [
    Claim("C1", "A function-preserving reparameterisation inflates the Hessian ~100x without changing a prediction",
          "~100x, 0 predictions changed", "top Hessian eigenvalue and trace of the training loss; test predictions",
          "Bennett 2026; Dinh et al. 2017",
          {"inflation": Figure("Hessian inflation", 100.0, against="the original network"),
           "predictions_changed": Figure("test predictions changed", 0.0)}),
    Claim("C2", "MNIST, 100 identical networks: weakness predicts generalisation, sharpness anticorrelates, "
          "simplicity predicts nothing",
          "weakness rho = +0.374 (p = 0.00012); sharpness rho = -0.226; simplicity p = 0.848", _RHO, "Bennett 2026",
          {"weakness": Figure("weakness rho", 0.374, 0.00012, _RHO, 100),
           "sharpness": Figure("sharpness rho", -0.226, against=_RHO, n=100),
           "simplicity": Figure("simplicity p", None, 0.848, _RHO, 100)}),
    Claim("C3", "The same on Fashion-MNIST; simplicity somewhat predictive there",
          "weakness rho = +0.384 (p = 8.15e-5)", _RHO, "Bennett 2026",
          {"weakness": Figure("weakness rho", 0.384, 8.15e-5, _RHO, 100)}),
    Claim("C4", "The large-batch generalisation gap vanishes as the training set grows",
          "+1.6 pp at n = 2,000 -> +0.02 pp at n = 60,000",
          "small-batch minus large-batch test accuracy (percentage points)", "Bennett 2026; Keskar et al. 2017",
          {"gap_2000": Figure("gap at n = 2,000 (pp)", 1.6), "gap_60000": Figure("gap at n = 60,000 (pp)", 0.02)}),
    Claim("C2+", "Weakness predicts generalisation under many training recipes, not one",
          "weakness rho = +0.374 (MNIST), +0.384 (Fashion-MNIST), one recipe each",
          "Spearman rho with test accuracy within each environment, pooled over environments",
          "Bennett 2026; Jiang et al. 2020; Dziugaite et al. 2020",
          {"mnist": Figure("weakness rho, MNIST", 0.374, 0.00012, _RHO, 100),
           "fashion_mnist": Figure("weakness rho, Fashion-MNIST", 0.384, 8.15e-5, _RHO, 100)}),
    Claim("C2+m", "The geometric reading of weakness predicts generalisation beyond margins",
          "not in the paper (our question)",
          "partial Spearman rho of input-volume weakness with test accuracy given each margin measure, "
          "within environments, pooled over environments",
          "Bennett 2026; Bartlett et al. 2017; Elsayed et al. 2018; Jiang et al. 2020"),
    Claim("C5", "PAC-Bayes bounds work because they correlate with weakness", "qualitative",
          "Spearman rho with test error, raw and partial", "Bennett 2026"),
    Claim("C6", "Regularisation often gives sharper minima that generalise, calibrate and resist noise better",
          "qualitative (Mason-Williams et al.)", "test accuracy, calibration, noise robustness",
          "Mason-Williams et al. 2025"),
    Claim("C7", "For 2-layer homogeneous networks, the flattest interpolators generalise",
          "theorem (Vardhan, Taheri, Mazumdar)", "test error of interpolators by Hessian trace",
          "Vardhan, Taheri & Mazumdar 2026"),
    Claim("C8", "Choosing the weakest hypothesis is minimax-optimal under exchangeable demands",
          "theorem (Bennett)", "exact weakness on a finite domain", "Bennett 2026"),
]}


_TOPICS = {"C1": "a reparameterisation inflates the Hessian", "C2": "weakness predicts generalisation (MNIST)",
           "C3": "weakness predicts generalisation (Fashion-MNIST)", "C4": "the large-batch gap vanishes with data",
           "C2+": "weakness predicts across training recipes",
           "C2+m": "geometric weakness predicts beyond margins", "C5": "PAC-Bayes bounds work through weakness",
           "C6": "regularised minima: sharper yet better", "C7": "the flattest interpolators generalise",
           "C8": "the weakest hypothesis is minimax-optimal"}
CLAIMS = {cid: dataclasses.replace(claim, topic=_TOPICS[cid]) for cid, claim in CLAIMS.items()}

# The version of each claim's verdict rule (``flatlib.keys``): bump a claim's (write it out here,
# with what changed) with any change to its rule, its thresholds or its sub-claims; the chapters
# that judge it are then stale until re-run. A chapter records the versions of the rules it used
# (``report.scoreboard_row``).
RULE_VERSIONS = {cid: 1 for cid in CLAIMS}
keys.register_kind("rule", lambda cid: RULE_VERSIONS.get(cid))


def paper(claim: str, figure: str) -> Figure:
    """The paper's figure ``figure`` of ``claim``; an unknown name lists the known ones."""
    figures = CLAIMS[claim].figures
    if figure not in figures:
        raise KeyError(f"claim {claim} has no paper figure {figure!r}; it has {sorted(figures)}")
    return figures[figure]


def head_to_head_claim(dataset: str) -> str:
    """The claim a head-to-head run on ``dataset`` tests."""
    claims = {"mnist": "C2", "fashion_mnist": "C3"}
    if dataset not in claims:
        raise ValueError(f"the head-to-head claims concern {sorted(claims)}, not {dataset!r}")
    return claims[dataset]


# ----------------------------------------------------------------------------- verdicts

@dataclass(frozen=True)
class Check:
    """One sub-claim: its state and the numbers it was decided on."""

    name: str
    state: str
    values: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {self.state!r}")


@dataclass(frozen=True)
class Verdict:
    claim: str
    verdict: str
    checks: tuple[Check, ...]
    values: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def describe(self) -> str:
        """The sub-claims and their states, for the prose."""
        return "; ".join(f"{c.name}: {c.state}" for c in self.checks)

    def as_dict(self) -> dict:
        return {"claim": self.claim, "verdict": self.verdict, **self.values,
                "checks": {c.name: {"state": c.state, **c.values} for c in self.checks}}


def directional(name: str, rho: float, p: float, ci: tuple[float, float], sign: int, alpha: float = ALPHA,
                smallest_effect: float = SMALLEST_EFFECT) -> Check:
    """A claim that a correlation has sign ``sign`` (+1 or -1): supported if significant at
    ``alpha`` with that sign, contradicted if significant with the other, not supported if the
    interval ``ci`` excludes an effect of ``smallest_effect`` in the claimed direction, else
    inconclusive."""
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 or -1, got {sign!r}")
    low, high = ci
    if not (math.isfinite(rho) and math.isfinite(p) and math.isfinite(low) and math.isfinite(high)):
        return Check(name, "inconclusive", {"rho": rho, "p": p, "ci": [low, high], "reason": "non-finite input"})
    if p < alpha:
        state = "supported" if np.sign(rho) == sign else "contradicted"
    else:
        reach = high if sign > 0 else -low  # the largest effect in the claimed direction the data allow
        state = "not supported" if reach < smallest_effect else "inconclusive"
    return Check(name, state, {"rho": rho, "p": p, "ci": [low, high], "sign": sign})


def negligible(name: str, rho: float, p: float, n: int, alpha: float = ALPHA, bound: float = SMALLEST_EFFECT) -> Check:
    """A claim that a correlation is absent ("predicts nothing"): contradicted if it is
    significant at ``alpha``; supported if the equivalence test (TOST, |rho| < ``bound``)
    rejects at ``alpha``; inconclusive otherwise. A p-value above ``alpha`` alone is absence of
    evidence and supports nothing; the power of the equivalence test is reported."""
    eq = stats.spearman_equivalence(rho, n, bound, alpha)
    if p < alpha:
        state = "contradicted"
    elif eq.pvalue < alpha:
        state = "supported"
    else:
        state = "inconclusive"
    return Check(name, state, {"rho": rho, "p": p, "equivalence_bound": bound, "equivalence_p": eq.pvalue,
                               "equivalence_power": eq.power, "n": n})


def _headline(central: Check, sides: list[Check]) -> str:
    if central.state == "supported":
        return "supported" if all(c.state == "supported" for c in sides) else "partly supported"
    return central.state


# C1 ------------------------------------------------------------------------------------------

def first_reaching(alphas, inflation, target: float) -> float | None:
    """The smallest alpha of the grid at which ``inflation`` reaches ``target``, or None."""
    reached = [a for a, v in sorted(zip(alphas, inflation)) if v >= target]
    return float(reached[0]) if reached else None


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
    headline = _headline(central, sides)
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


def _combined(states: list[str]) -> str:
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
      judged by ``directional`` (claimed sign +1); combined over datasets by ``_combined``;
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
        central = Check(f"{measure}: pooled within environments", _combined(pooled_states),
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
                given = Check(f"{measure}: pooled within environments {GIVEN_FIT}", _combined(states),
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
    combined over datasets by ``_combined``.

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
        checks.append(Check(f"{measure} predicts beyond {margin}", _combined([v["state"] for v in per.values()]), per))
    states = [c.state for c in checks]
    verdict = ("supported" if all(x == "supported" for x in states) else
               next(x for x in ("contradicted", "not supported", "inconclusive") if x in states))
    return Verdict("C2+m", verdict, tuple(checks), {"measure": measure, "margins": margins})


# C4 ------------------------------------------------------------------------------------------

def paper_gaps() -> dict[int, float]:
    """The paper's C4 figures as {n: gap}, the gap a fraction (as ``batchsize.regime_differences``
    gives it), from the percentage points in ``CLAIMS``."""
    return {int(name.split("_")[1]): figure.value / 100 for name, figure in CLAIMS["C4"].figures.items()}


def _band_state(low: float, high: float, centre: float, margin: float) -> str:
    """An interval against the band centre +- margin: supported inside it, contradicted wholly
    outside it, inconclusive across an edge."""
    if centre - margin < low and high < centre + margin:
        return "supported"
    if low >= centre + margin or high <= centre - margin:
        return "contradicted"
    return "inconclusive"


def batch_sweep(gaps, margin: float = 0.0025, alpha: float = ALPHA, paper: dict | None = None) -> Verdict:
    """C4, from ``gaps``: one row per training-set size ``n`` (the index) with the paired
    small-minus-large test-accuracy difference ``difference``, its standard error ``se``, its
    Student-t interval ``ci_low``/``ci_high`` and its number of ``pairs``
    (``batchsize.regime_differences``). ``paper``: the published gaps to compare with, {n: gap}
    (default: the paper's MNIST figures, ``paper_gaps()``; ``{}`` for a dataset the paper does
    not report).

    * exists: the interval at the smallest n lies above 0 (below 0: contradicted);
    * shrinks: the weighted regression of the gap on log n over every size (weights 1/se^2)
      has a negative slope, one-sided p < ``alpha`` (a positive one: contradicted);
    * vanishes: the interval at the largest n lies inside (-margin, +margin); it is
      contradicted if the interval lies wholly outside.
    * matches the paper's figures: at each size the paper reports, our interval against the
      band paper's gap +- ``margin`` (``batchsize.against_figures``): supported where it lies
      inside, contradicted where it lies wholly outside. Supported if supported at every such
      size, contradicted if contradicted at one, inconclusive otherwise or with none in the run.
    * shrinks at every step (the shape; reported, not moving the headline): every change
      between two sizes (``batchsize.gap_changes``, Welch) judged at the Bonferroni level
      ``alpha`` / (number of pairs of sizes): contradicted if the gap rises significantly between
      some two sizes (with a significant fall elsewhere too, the gap is *non-monotone*, reported
      as ``non_monotone``); supported if it falls significantly at every step from one size to
      the next; inconclusive otherwise.

    Central: vanishes. Supported = exists and vanishes, lowered to partly supported unless the
    paper's figures are matched; partly supported = exists and shrinks but has not vanished;
    contradicted = the gap grows, or a reversed gap at the smallest n. *Changed after the
    published run:* the comparison with the paper's figures and the shape were added (the
    first rule never compared our gap with the paper's, and its trend hid a gap that rises
    before it falls)."""
    if len(gaps) < 2:
        raise ValueError("the verdict needs at least two training-set sizes")
    lo, hi = gaps.index.min(), gaps.index.max()
    first, last = gaps.loc[lo], gaps.loc[hi]
    exists = Check("gap exists at the smallest n",
                   "supported" if first["ci_low"] > 0 else "contradicted" if first["ci_high"] < 0 else "inconclusive",
                   {"n": int(lo), "gap": float(first["difference"]), "ci": [float(first["ci_low"]),
                                                                             float(first["ci_high"])]})
    trend = stats.weighted_trend(np.log(gaps.index.to_numpy(dtype=float)), gaps["difference"], gaps["se"])
    shrinks = Check("gap shrinks with n",
                    "supported" if trend.pvalue_decreasing < alpha else
                    "contradicted" if trend.pvalue_increasing < alpha else "not supported",
                    {"slope_per_log_n": trend.slope, "slope_se": trend.slope_se,
                     "p_decreasing": trend.pvalue_decreasing, "sizes": int(trend.n)})
    inside = -margin < last["ci_low"] and last["ci_high"] < margin
    outside = last["ci_low"] >= margin or last["ci_high"] <= -margin
    vanishes = Check("gap vanishes at the largest n",
                     "supported" if inside else "contradicted" if outside else "inconclusive",
                     {"n": int(hi), "gap": float(last["difference"]),
                      "ci": [float(last["ci_low"]), float(last["ci_high"])], "margin": margin})
    figures = batchsize.against_figures(gaps, paper_gaps() if paper is None else paper)
    ends = {int(r.n): {"ours": r.ours, "ci": [r.ci_low, r.ci_high], "paper": r.paper, "difference": r.difference,
                       "p": r.p, "state": _band_state(r.ci_low, r.ci_high, r.paper, margin)}
            for r in figures.itertuples()}
    end_states = [e["state"] for e in ends.values()]
    matches = Check("gap matches the paper's figures",
                    "inconclusive" if not ends else "contradicted" if "contradicted" in end_states else
                    "supported" if all(x == "supported" for x in end_states) else "inconclusive",
                    {"by_n": ends, "margin": margin})
    changes = batchsize.gap_changes(gaps)
    level = alpha / len(changes)
    rises = changes[changes["p_rise"] < level]
    falls = changes[changes["p_fall"] < level]
    sizes = sorted(int(n) for n in gaps.index)
    consecutive = set(zip(sizes[:-1], sizes[1:]))
    steps = changes[[(a, b) in consecutive for a, b in zip(changes["n_from"], changes["n_to"])]]
    largest = changes.loc[changes["p_rise"].idxmin()]
    shape = Check("gap shrinks at every step",
                  "contradicted" if len(rises) else
                  "supported" if (steps["p_fall"] < level).all() else "inconclusive",
                  {"bonferroni_alpha": level, "non_monotone": bool(len(rises) and len(falls)),
                   "significant_rises": [f"{int(r.n_from)} -> {int(r.n_to)}" for r in rises.itertuples()],
                   "largest_rise": {"from": int(largest["n_from"]), "to": int(largest["n_to"]),
                                    "change": float(largest["change"]), "p": float(largest["p_rise"])}})
    if exists.state == "contradicted":
        verdict = "contradicted"
    elif exists.state != "supported":
        verdict = "not supported"  # no gap at the smallest n: nothing to vanish
    elif vanishes.state == "supported":
        verdict = "supported" if matches.state == "supported" else "partly supported"
    elif shrinks.state == "supported":
        verdict = "partly supported"
    elif shrinks.state == "contradicted" or vanishes.state == "contradicted":
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    return Verdict("C4", verdict, (exists, shrinks, vanishes, matches, shape), {"margin": margin})


# C5 ------------------------------------------------------------------------------------------

def saturated(values, tol: float = 1e-9) -> np.ndarray:
    """A mask of bound values within ``tol`` of 1 (or above): a bound at 1 carries no
    information about the network, so it is excluded from correlations and counted."""
    return np.asarray(values, dtype=float) >= 1 - tol


# Fewer networks than this with an unsaturated bound leave nothing to correlate.
MIN_NETWORKS = 10

# The study's certificates are bounds, not held-out error estimates, only if their KL is not
# negligible. KL(Q || P) is what the bound charges, in nats, for what the posterior knows beyond
# the prior: below 1 nat (1.44 bits) it pays less than a union bound over three predictors would,
# so the certificate is a held-out test-set bound on (almost) the prior's own predictor, and can
# say nothing about what the network learned from the sample it is certified on (a prior fitted to
# that network's own data gives such KLs: the first published study's median was 8e-9 nats). Fixed
# before any certificate with a prior at initialisation was correlated; the median is over the
# networks whose certificate enters the correlations (over all, when every one is saturated).
MIN_MEDIAN_KL = 1.0

# The two readings of weakness tested against the bound, the pre-registered primary first.
C5_READINGS = ("weakness_open_labels", "weakness_input_volume")


def pacbayes_link(bound: dict | None, bound_given_weakness: dict | None, weakness_given_bound: dict | None,
                  median_kl: float, saturated_count: int = 0, reading: str = C5_READINGS[0],
                  certificate: str = "", alpha: float = ALPHA, min_median_kl: float = MIN_MEDIAN_KL) -> Verdict:
    """C5, on the bound B and one reading W of weakness against test error, each correlation
    given as ``{"rho", "p", "ci_low", "ci_high", "n"}`` over the networks whose bound is not
    saturated; ``median_kl`` is the median KL (nats) of those networks' certificates and
    ``certificate`` names their kind (it is carried into the verdict for the scoreboard). Signs: a
    bound that works rises with test error (rho > 0); weakness predicts *lower* test error
    (rho < 0).

    * The certificates are bounds: their median KL is at least ``min_median_kl`` nats
      (``MIN_MEDIAN_KL``); if not, they are held-out estimates, and the verdict is inconclusive
      whatever the correlations say (they are still reported).
    * B predicts test error (rho > 0, significant). If not, inconclusive: there is nothing for
      weakness to explain.
    * B is explained by W: given W, B's partial correlation is not significant and at most half
      the raw one; contradicted if it stays significant with the raw sign.
    * W survives B: given B, W's partial correlation is negative and significant.

    Supported = both; partly supported = one; contradicted = neither and one contradicted;
    not supported otherwise. With fewer than ``MIN_NETWORKS`` unsaturated bounds, pass None for
    the correlations: the verdict is inconclusive, for want of an informative bound."""
    if not (isinstance(median_kl, (int, float)) and math.isfinite(median_kl) and median_kl >= 0):
        raise ValueError(f"median_kl must be a finite number of nats >= 0 (the median KL of the study's "
                         f"certificates), got {median_kl!r}")
    is_bound = Check("certificates are bounds", "supported" if median_kl >= min_median_kl else "not supported",
                     {"median_kl": float(median_kl), "threshold": min_median_kl})
    values = {"reading": reading, "certificate": certificate, "median_kl": float(median_kl),
              "saturated": int(saturated_count)}
    if bound is None:
        reason = f"fewer than {MIN_NETWORKS} networks have an unsaturated bound ({saturated_count} saturated)"
        return Verdict("C5", "inconclusive", (is_bound, Check("bound predicts test error", "inconclusive",
                                                              {"reason": reason})),
                       {**values, "networks_used": 0})

    def ci(r):
        return (r["ci_low"], r["ci_high"])

    predicts = directional("bound predicts test error", bound["rho"], bound["p"], ci(bound), +1, alpha)
    raw, part = bound["rho"], bound_given_weakness["rho"]
    if bound_given_weakness["p"] < alpha and np.sign(part) == np.sign(raw):
        explained_state = "contradicted"
    elif bound_given_weakness["p"] >= alpha and abs(part) <= 0.5 * abs(raw):
        explained_state = "supported"
    else:
        explained_state = "not supported"
    explained = Check("bound explained by weakness", explained_state,
                      {"rho_raw": raw, "rho_given_weakness": part, "p": bound_given_weakness["p"]})
    survives = directional("weakness survives the bound", weakness_given_bound["rho"], weakness_given_bound["p"],
                           ci(weakness_given_bound), -1, alpha)
    checks = (is_bound, predicts, explained, survives)
    values["networks_used"] = int(bound["n"])
    if is_bound.state != "supported" or predicts.state != "supported":
        return Verdict("C5", "inconclusive", checks, values)
    held = [c.state for c in (explained, survives)]
    if held.count("supported") == 2:
        verdict = "supported"
    elif held.count("supported") == 1:
        verdict = "partly supported"
    elif "contradicted" in held:
        verdict = "contradicted"
    else:
        verdict = "not supported"
    return Verdict("C5", verdict, checks, values)


def pacbayes_link_study(table, bound: str = "certificate", kl: str = "certificate_kl", target: str = "test_error",
                        readings=C5_READINGS, certificate: str = "", n_resamples: int = 10000, seed: int = 0,
                        alpha: float = ALPHA):
    """C5 on a per-network table: ``(verdicts, correlations)``, one ``pacbayes_link`` verdict per
    weakness reading (``readings``, primary first) and the correlations they rest on.

    Over the networks whose ``bound`` is not ``saturated`` (the rest are counted), per reading W:
    Spearman of B and ``target``, of W and ``target``, of B and W, and the partial correlations
    of B with ``target`` given W and of W with ``target`` given B (``flatlib.stats``, the
    decision p-value the permutation one); ``median_kl`` is the median of column ``kl`` over the
    same networks (over all of them when every bound is saturated). ``correlations`` has one row
    per correlation (x, y, controlling for, rho, ci_low, ci_high, p_perm, n), the raw B-target row
    once. The caller chooses the networks (e.g. those at the common training loss,
    ``flatlib.study.at_target``)."""
    import pandas as pd

    missing = [c for c in (bound, kl, target, *readings) if c not in table.columns]
    if missing:
        raise ValueError(f"the table lacks the column(s) {missing}; it has {list(table.columns)}")
    if not len(readings):
        raise ValueError("give at least one weakness reading")
    if not len(table):
        raise ValueError("the table has no networks: C5 needs the certificates of at least one")
    full = saturated(table[bound])
    used = table[~full]
    # over the certificates that enter the correlations; where none does, over every one given
    median_kl = float(np.median((used if len(used) else table)[kl]))
    common = dict(median_kl=median_kl, saturated_count=int(full.sum()), certificate=certificate, alpha=alpha)
    columns = ["x", "y", "controlling for", "rho", "ci_low", "ci_high", "p_perm", "n"]
    if len(used) < MIN_NETWORKS:
        verdicts = {w: pacbayes_link(None, None, None, reading=w, **common) for w in readings}
        return verdicts, pd.DataFrame([], columns=columns)
    rows, found = [], {}

    def correlate(x, y, control=None):
        if (x, y, control) not in found:
            r = (stats.spearman(used[x], used[y], n_resamples=n_resamples, seed=seed) if control is None else
                 stats.partial_spearman(used[x], used[y], used[control], n_resamples=n_resamples, seed=seed))
            found[(x, y, control)] = {"rho": r.statistic, "p": r.permutation_pvalue,
                                      "ci_low": r.confidence_interval().low,
                                      "ci_high": r.confidence_interval().high, "n": len(used)}
            rows.append({"x": x, "y": y, "controlling for": control or "", "rho": r.statistic,
                         "ci_low": r.confidence_interval().low, "ci_high": r.confidence_interval().high,
                         "p_perm": r.permutation_pvalue, "n": len(used)})
        return found[(x, y, control)]

    verdicts = {}
    for w in readings:
        raw = correlate(bound, target)
        given_w, w_given_b = correlate(bound, target, w), correlate(w, target, bound)
        correlate(w, target)
        correlate(bound, w)
        verdicts[w] = pacbayes_link(raw, given_w, w_given_b, reading=w, **common)
    return verdicts, pd.DataFrame(rows, columns=columns)


# C6 ------------------------------------------------------------------------------------------

# The metrics of the regularised-minima rule and the sign of the claimed change, regularised minus
# baseline: sharpness up (raw, then invariant: both on a log10 scale, so a difference is a ratio),
# accuracy, robustness and consistency up, calibration error down.
REGULARISED_SHARPNESS = {"raw": "log10_top_eigenvalue", "invariant": "log10_adaptive_sharpness"}
REGULARISED_BETTER = {"generalisation": ("test_acc", +1), "calibration": ("ece", -1),
                      "robustness": ("noise_acc", +1), "consistency": ("consistency", +1)}
# The smallest gain in test accuracy (a fraction: 0.0025 is a quarter of a percentage point) that
# counts as "generalises better": the book's margin for a negligible accuracy difference, the
# batch sweep's default ``margin``, fixed before either rule saw a result. A cell whose accuracy
# interval stops short of it excludes a gain of the claimed kind.
SMALLEST_ACCURACY_GAIN = 0.0025


def _cell_state(row, sign: int) -> str:
    """One paired difference's interval against zero, in the direction ``sign``."""
    low, high = sign * row["ci_low"], sign * row["ci_high"]
    low, high = min(low, high), max(low, high)
    return "supported" if low > 0 else "contradicted" if high < 0 else "inconclusive"


def _often(name: str, states: list[str], values: dict) -> Check:
    """A "often" claim over the cells: supported if at least half of them support it and more
    support than contradict it, contradicted if at least half contradict it and more contradict
    than support it, otherwise (a tie included) inconclusive."""
    half = math.ceil(len(states) / 2)
    counts = {"supported": states.count("supported"), "contradicted": states.count("contradicted"),
              "cells": len(states)}
    up, down = counts["supported"], counts["contradicted"]
    state = ("supported" if up >= half and up > down else
             "contradicted" if down >= half and down > up else "inconclusive")
    return Check(name, state, {**counts, **values})


def regularised(effects, weakness: dict | None = None, alpha: float = ALPHA) -> Verdict:
    """C6, from ``effects`` (``flatlib.regularised.effects``): one row per (``dataset``,
    ``regime``, ``metric``) with the paired difference regularised minus baseline and its
    interval ``ci_low``/``ci_high`` (Bonferroni-corrected over the cells). A *cell* is one
    regularised regime on one dataset; "often" means at least half the cells.

    * Central, *regularised minima are sharper yet generalise better*: a cell fits when its
      raw sharpness (log10 top Hessian eigenvalue) is significantly higher and its test
      accuracy significantly higher. Supported if at least half the cells fit and more fit than go the
      conventional way; contradicted if at least half go the conventional way (significantly
      flatter and better, or sharper and worse) and more than fit; not supported if the data
      exclude "often": even were every cell that *could fit* to fit, fewer than half would (a cell
      could fit when it does not already, its raw sharpness is not significantly lower, and its
      accuracy interval reaches ``SMALLEST_ACCURACY_GAIN``); inconclusive otherwise (a tie
      included). *Changed after the published run:* "not
      supported" was "no cell fits", which called "not supported" a run whose intervals admit
      the claimed gains, against this module's definition of the state.
    * Side, each judged over every cell by ``_often``: they *calibrate* better (lower ECE),
      *resist noise* better (higher mean accuracy under input noise), and are *more consistent*
      (higher agreement between seeds). Headline: the central state, lowered from supported to
      partly supported unless every side claim is supported.
    * Reported, not moving the headline: *sharper by an invariant measure too* (log10 adaptive
      sharpness, judged by ``_often``): whether the sharpening survives reparameterisation; and,
      with ``weakness`` (per dataset, the Spearman correlation across every network of the
      primary weakness measure with test accuracy, ``{"rho", "p", "ci_low", "ci_high", "n"}``),
      *weakness orders the networks as test accuracy does* (claimed positive, per dataset by
      ``directional``, combined over datasets by ``_combined``)."""
    cells = effects[["dataset", "regime"]].drop_duplicates().itertuples(index=False)
    cells = [tuple(c) for c in cells]
    if not cells:
        raise ValueError("no regularised regime to judge")

    found: dict[tuple, list] = {}
    for record in effects.to_dict(orient="records"):
        found.setdefault((record["dataset"], record["regime"], record["metric"]), []).append(record)

    def row(cell, metric):
        rows = found.get((*cell, metric), [])
        if len(rows) != 1:
            raise ValueError(f"effects needs exactly one row for {cell} and metric {metric!r}, found {len(rows)}")
        return rows[0]

    def state(cell, metric, sign):
        return _cell_state(row(cell, metric), sign)

    raw = {c: state(c, REGULARISED_SHARPNESS["raw"], +1) for c in cells}
    acc = {c: state(c, REGULARISED_BETTER["generalisation"][0], +1) for c in cells}
    fits = [c for c in cells if raw[c] == "supported" and acc[c] == "supported"]
    conventional = [c for c in cells
                    if (raw[c], acc[c]) in (("contradicted", "supported"), ("supported", "contradicted"))]
    # A cell the data leave open: its minima may be sharper (the raw interval reaches above 0) and
    # its accuracy gain may reach the smallest gain that counts.
    possible = [c for c in cells if c not in fits and raw[c] != "contradicted"
                and row(c, REGULARISED_BETTER["generalisation"][0])["ci_high"] >= SMALLEST_ACCURACY_GAIN]
    half = math.ceil(len(cells) / 2)
    reachable = len(fits) + len(possible)  # the most cells that could fit, were every open one to fit
    central_state = ("supported" if len(fits) >= half and len(fits) > len(conventional) else
                     "contradicted" if len(conventional) >= half and len(conventional) > len(fits) else
                     "not supported" if reachable < half else "inconclusive")
    names = dict(zip(cells, (f"{d}/{r}" for d, r in cells)))
    central = Check("regularised minima are sharper yet generalise better", central_state,
                    {"cells": len(cells), "fit": [names[c] for c in fits],
                     "conventional": [names[c] for c in conventional],
                     "could_fit": [names[c] for c in possible], "smallest_accuracy_gain": SMALLEST_ACCURACY_GAIN,
                     "sharper": [names[c] for c in cells if raw[c] == "supported"],
                     "flatter": [names[c] for c in cells if raw[c] == "contradicted"],
                     "better_accuracy": [names[c] for c in cells if acc[c] == "supported"],
                     "worse_accuracy": [names[c] for c in cells if acc[c] == "contradicted"]})
    sides = []
    for name, key in (("they calibrate better", "calibration"), ("they resist input noise better", "robustness"),
                      ("they are more consistent across seeds", "consistency")):
        metric, sign = REGULARISED_BETTER[key]
        states = [state(c, metric, sign) for c in cells]
        sides.append(_often(name, states, {"metric": metric}))
    invariant = _often("sharper by an invariant measure too",
                       [state(c, REGULARISED_SHARPNESS["invariant"], +1) for c in cells],
                       {"metric": REGULARISED_SHARPNESS["invariant"]})
    checks = [central, *sides, invariant]
    if weakness:
        per = [directional(f"weakness predicts test accuracy ({d})", w["rho"], w["p"], (w["ci_low"], w["ci_high"]),
                           +1, alpha) for d, w in weakness.items()]
        checks.append(Check("weakness orders the networks as test accuracy does", _combined([c.state for c in per]),
                            {d: {"state": c.state, **c.values} for d, c in zip(weakness, per)}))
    verdict = _headline(central, sides)
    return Verdict("C6", verdict, tuple(checks), {"cells": len(cells)})


# C7 ------------------------------------------------------------------------------------------

# An interpolator "generalises" when its population loss is at most this fraction of the zero
# function's (it explains at least half of the target's mean square), "fails" when it does no
# better than the zero function.
GENERALISES_BELOW = 0.5
# A separation counts as clean when a generalising interpolator is flatter than a
# non-generalising one in at least this share of pairs (the AUC).
CLEAN_SEPARATION = 0.9
# "Separation weakens" needs the AUC to fall by at least this much, with a 95 % interval that
# excludes no drop at all. Fixed before this rule was applied to any published number: 0.1 is the
# distance between a perfect separation (AUC 1) and the clean one above (0.9), so a drop of less
# cannot by itself turn a perfect separation into one the rule would not call clean; on the AUC
# scale (P(flatter) over pairs) it is one pair in ten more ordered the wrong way, about the step
# between Rice & Harris's (2005) "small" and "medium" effects (AUC 0.56, 0.64).
MIN_AUC_DROP = 0.1


def _separation_state(s: dict, alpha: float) -> str:
    if s["p_flatter"] < alpha and s["auc"] >= CLEAN_SEPARATION:
        return "supported"
    if s["p_sharper"] < alpha:
        return "contradicted"
    return "inconclusive"


def _weakening(benign: dict, harsh: dict, same: bool) -> Check:
    """The drop in AUC from ``benign`` to ``harsh`` (two ``separation`` dicts with ``auc`` and
    ``auc_se``) judged against ``MIN_AUC_DROP`` with its 95 % normal interval."""
    name = "separation weakens outside the theorem's conditions"
    values = {"benign_auc": benign["auc"], "harsh_auc": harsh["auc"], "min_drop": MIN_AUC_DROP}
    numbers = [benign["auc"], harsh["auc"], benign.get("auc_se", math.nan), harsh.get("auc_se", math.nan)]
    if same or not all(math.isfinite(v) for v in numbers):
        return Check(name, "inconclusive", {**values, "reason": "one condition only" if same else
                                            "an AUC or its standard error is undefined"})
    drop = benign["auc"] - harsh["auc"]
    half = float(sps.norm.ppf(0.975)) * math.hypot(benign["auc_se"], harsh["auc_se"])
    low, high = drop - half, drop + half
    state = ("contradicted" if high < 0 else
             "supported" if low > 0 and drop >= MIN_AUC_DROP else
             "not supported" if high < MIN_AUC_DROP else "inconclusive")
    return Check(name, state, {**values, "drop": drop, "ci": [low, high]})


def flattest_interpolators(conditions, alpha: float = ALPHA) -> Verdict:
    """C7, from ``conditions``: one dict per (label noise, approximation error) condition with
    ``noise``, ``approximation``, ``separation`` (``flatlib.interpolators.separation`` of the
    trace minimised over rescalings, generalising kinds against non-generalising ones, over the
    interpolators that reached the interpolation tolerance), ``raw_attack`` (the same for the
    generalising interpolators' raw trace as trained against the non-generalising ones' raw
    trace after their flattest rescaling) and ``flattest_relative_loss`` (the median population
    loss of the trace-penalised interpolators over the zero function's). The *benign*
    condition is the one with the least noise and the least approximation error.

    * Central, at the benign condition, *non-generalising interpolators cannot be made as
      flat*: supported if the generalising interpolators have the smaller minimised trace with a
      one-sided Mann-Whitney p below ``alpha`` and an AUC of at least ``CLEAN_SEPARATION``;
      contradicted if they have the larger one (p below ``alpha`` the other way); otherwise
      inconclusive.
    * Side, at the benign condition, *the flattest interpolators generalise*: supported if the
      median relative population loss of the trace-penalised interpolators is at most
      ``GENERALISES_BELOW``; contradicted if it is 1 or more (no better than predicting zero);
      otherwise inconclusive. The headline is the central state, lowered from supported to
      partly supported when this does not hold.
    * Reported: *flattening the non-generalising interpolators closes the raw-trace gap*
      (supported if the raw-trace attack's AUC is below ``CLEAN_SEPARATION`` while the minimised
      trace's is not; sharpening the generalising ones instead always would, since the trace is
      unbounded above along a rescaling orbit), and *separation weakens outside the theorem's
      conditions*: the drop of the minimised trace's AUC from the benign condition to the one
      with the most noise, then the most approximation error, with the 95 % normal interval from
      each AUC's bootstrap standard error ``auc_se`` in its ``separation`` (over seeds,
      ``flatlib.interpolators.auc_standard_error``; the two conditions are treated as
      independent, which overstates the interval when they share seeds' inputs): supported if
      the interval lies above 0 and the drop is at least ``MIN_AUC_DROP``; contradicted if the
      interval lies below 0 (the AUC rises); not supported if the interval stays below
      ``MIN_AUC_DROP``; inconclusive otherwise, or when an AUC or its standard error is
      undefined. *Changed after the published run:* it was supported by a drop of any size,
      without an interval."""
    if not conditions:
        raise ValueError("no conditions to judge")
    benign = min(conditions, key=lambda c: (c["noise"], c["approximation"]))
    harsh = max(conditions, key=lambda c: (c["noise"], c["approximation"]))
    if any(c["noise"] < benign["noise"] or c["approximation"] < benign["approximation"] for c in conditions):
        raise ValueError("the conditions need one with both the least noise and the least approximation error")
    sep = benign["separation"]
    central = Check("non-generalising interpolators cannot be made as flat", _separation_state(sep, alpha),
                    {**sep, "noise": benign["noise"], "approximation": benign["approximation"]})
    loss = benign["flattest_relative_loss"]
    flattest = Check("the flattest interpolators generalise",
                     "inconclusive" if not math.isfinite(loss) else
                     "supported" if loss <= GENERALISES_BELOW else "contradicted" if loss >= 1 else "inconclusive",
                     {"median_relative_population_loss": loss, "threshold": GENERALISES_BELOW})
    attack = benign["raw_attack"]
    fooled = Check("flattening the non-generalising interpolators closes the raw-trace gap",
                   "supported" if attack["auc"] < CLEAN_SEPARATION <= sep["auc"] else
                   "contradicted" if attack["auc"] >= CLEAN_SEPARATION else "inconclusive",
                   {"raw_attack_auc": attack["auc"], "min_trace_auc": sep["auc"]})
    weakens = _weakening(sep, harsh["separation"], harsh is benign)
    weakens = dataclasses.replace(weakens, values={**weakens.values, "harsh_noise": harsh["noise"],
                                                   "harsh_approximation": harsh["approximation"]})
    return Verdict("C7", _headline(central, [flattest]), (central, flattest, fooled, weakens),
                   {"conditions": len(conditions)})


# C8 ------------------------------------------------------------------------------------------

def _difference_state(d: dict, claimed: str) -> str:
    """A paired difference ``{"mean", "ci_low", "ci_high"}`` against zero: ``claimed`` ">= 0"
    is supported when the interval's low end is at least 0 and contradicted when its high end
    is below 0; ``claimed`` "<= 0" is the mirror image; otherwise inconclusive."""
    low, high = d["ci_low"], d["ci_high"]
    if claimed == ">= 0":
        return "supported" if low >= 0 else "contradicted" if high < 0 else "inconclusive"
    if claimed == "<= 0":
        return "supported" if high <= 0 else "contradicted" if low > 0 else "inconclusive"
    raise ValueError(f"claimed must be '>= 0' or '<= 0', got {claimed!r}")


def finite_weakness(minimax: dict, structured: dict, proxy: dict, predicts: dict, geometric: dict,
                    alpha: float = ALPHA) -> Verdict:
    """C8, on the finite domain (``flatlib.finite``).

    * Central, *minimax under exchangeable demands*: ``minimax`` holds the paired differences
      (weakest minus shortest, weakest minus any consistent hypothesis drawn at random; keys
      "shortest" and "any", each ``{"mean", "ci_low", "ci_high"}``) of the worst-case accuracy
      over draws whose unseen labels are exchangeable (a uniformly random completion).
      Supported if both intervals lie at or above 0; contradicted if either lies below 0;
      inconclusive if every difference is exactly 0 (every learner picked the same hypothesis,
      so nothing was compared). In ``flatlib.finite``'s language the worst case counts only
      the open inputs, which the weakest hypothesis maximises, so this check cannot come out
      contradicted there: it measures the size of an advantage that holds by construction.
    * Boundary, *the advantage goes away when demands are structured*: ``structured`` holds the
      difference weakest minus shortest of expected accuracy under a target the language can
      express. Supported if its interval lies at or below 0. Reported; it bounds the claim and
      does not move the headline.
    * *The sampled proxy tracks exact weakness*: ``proxy`` is the Spearman correlation (``{"rho",
      "p", "ci_low", "ci_high", "n"}``) across networks of ``weakness_open_labels`` on a sample
      of unseen inputs with the networks' exact weakness; claimed positive. The exact count is
      the same thresholded count over every unseen input, so this checks the estimator of the
      literal reading (its sampling), not the reading.
    * *Exact weakness predicts generalisation across networks*: ``predicts``, the Spearman
      correlation of exact weakness (the literal reading) with accuracy on the unseen inputs;
      claimed positive.
    * *The geometric reading predicts generalisation across networks*: ``geometric``, the
      Spearman correlation of the mean Hamming radius to a change of predicted label
      (``finite.mean_hamming_radius``) with accuracy on the unseen inputs; claimed positive.
      Added after the first published run (issue 33), before it was computed on any network,
      as the peer of the literal reading's check: reported, and it does not move the headline,
      which was pre-registered on the literal reading.

    The headline follows the central check, lowered from supported to partly supported when
    the proxy check or the literal reading's network check is not supported."""
    others = ("shortest", "any")
    states = [_difference_state(minimax[k], ">= 0") for k in others]
    compared = any(minimax[k]["ci_low"] != 0 or minimax[k]["ci_high"] != 0 for k in others)
    central = Check("weakest is minimax-optimal under exchangeable demands",
                    "inconclusive" if not compared else  # every learner picked the same: nothing compared
                    "contradicted" if "contradicted" in states else
                    "supported" if all(x == "supported" for x in states) else "inconclusive",
                    {**{k: minimax[k] for k in others}, "compared": compared})
    boundary = Check("the advantage goes away under structured demands", _difference_state(structured, "<= 0"),
                     dict(structured))
    track = directional("the sampled proxy tracks exact weakness", proxy["rho"], proxy["p"],
                        (proxy["ci_low"], proxy["ci_high"]), +1, alpha)
    general = directional("exact weakness predicts network generalisation", predicts["rho"], predicts["p"],
                          (predicts["ci_low"], predicts["ci_high"]), +1, alpha)
    geometry = directional("the geometric reading predicts network generalisation", geometric["rho"],
                           geometric["p"], (geometric["ci_low"], geometric["ci_high"]), +1, alpha)
    verdict = central.state
    if verdict == "supported" and not (track.state == "supported" and general.state == "supported"):
        verdict = "partly supported"
    return Verdict("C8", verdict, (central, boundary, track, general, geometry))


# ----------------------------------------------------------------------------- stability

# Bootstrap replicates of a verdict's stability at the chapters' defaults: a share is then known
# to about +-3.5 points (binomial standard error at 50 %), enough to tell a firm verdict from
# one on a threshold, and the slowest chapter's replicates stay within about half a minute.
STABILITY_REPLICATES = 200


def stability(rule, table, replicates: int = STABILITY_REPLICATES, seed: int = 0, units=("seed",),
              within=()) -> dict[str, float]:
    """How firm a verdict is: the share of ``replicates`` bootstrap replicates of the data in
    which the claim's rule returns each verdict, largest first (verdicts it never returns are
    left out; the shares sum to 1).

    ``rule`` maps a table to a :class:`Verdict`: the claim's rule above, unchanged, fed by an
    adapter that computes its inputs from the table as the chapter does (``flatlib.stability``
    has one per claim). ``table`` is a frame with one row per network (or a mapping name ->
    frame, each with its own plan); each replicate is ``stats.resample(table, units, within)``:
    the units (seeds, environments then seeds, draws) drawn with replacement inside each group
    of ``within``. ``units`` and ``within`` are, for a mapping, mappings of the same names.

    A replicate the rule refuses as input it cannot judge (``ValueError``: with few seeds, a
    replicate may draw one seed every time, and a paired interval has no spread) counts as
    inconclusive: the data of that replicate decide nothing. If the rule refuses every
    replicate, its error is raised."""
    from collections import Counter

    if isinstance(table, dict):
        if not isinstance(units, dict) or set(units) != set(table):
            raise ValueError(f"for several tables give units as a mapping with one entry per table: {sorted(table)}")
        tables, plan = table, {name: (units[name], within.get(name, ()) if within else ()) for name in table}
    else:
        tables, plan = {"table": table}, {"table": (units, within)}
    counts, refused = Counter(), []
    for replicate in stats.bootstrap_tables(tables, plan, replicates, seed):
        try:
            counts[rule(replicate if isinstance(table, dict) else replicate["table"]).verdict] += 1
        except ValueError as error:  # a replicate the rule cannot judge (one seed drawn every time, say)
            refused.append(error)
            counts["inconclusive"] += 1
    if len(refused) == replicates:
        raise ValueError(f"the rule refused every replicate; the first said: {refused[0]}") from refused[0]
    order = sorted(counts, key=lambda v: (-counts[v], VERDICTS.index(v)))
    return {verdict: counts[verdict] / replicates for verdict in order}


def describe_stability(verdict: str, shares: dict[str, float] | None) -> str:
    """A verdict with its stability, as the scoreboard shows it: "not supported (64 %;
    contradicted 31 %, inconclusive 5 %)"; the verdict alone without ``shares``."""
    if not shares:
        return verdict
    others = ", ".join(f"{v} {percent(s)}" for v, s in shares.items() if v != verdict)
    return f"{verdict} ({percent(shares.get(verdict, 0.0))}" + (f"; {others})" if others else ")")


def percent(share: float) -> str:
    """A share of replicates as a whole percentage; "< 1 %" and "> 99 %" where rounding would
    say 0 or 100 of a share that is neither (one replicate in 200 is not none)."""
    shown = f"{100 * share:.0f}"
    if share > 0 and shown == "0":
        return "< 1 %"
    if share < 1 and shown == "100":
        return "> 99 %"
    return f"{shown} %"


def correlation(row, n: int, p: str = "p_perm") -> dict:
    """A row of ``stats.correlation_table`` as a rule's input: rho, the decision p-value
    (column ``p``, by default the permutation p), the interval and the number of networks."""
    return {"rho": float(row["rho"]), "p": float(row[p]), "ci_low": float(row["ci_low"]),
            "ci_high": float(row["ci_high"]), "n": int(n)}
