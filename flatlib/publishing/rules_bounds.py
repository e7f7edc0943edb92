"""The verdict rules of the batch sweep (C4) and of the link between PAC-Bayes bounds and weakness
(C5) (``flatlib.claims``, which re-exports them).
"""
from __future__ import annotations

import math

import numpy as np

from flatlib.engine import stats
from flatlib.experiments import batchsize
from flatlib.publishing.claim_figures import ALPHA, CLAIMS
from flatlib.publishing.verdicts import Check, Verdict, directional


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
                  certificate: str = "", alpha: float = ALPHA, min_median_kl: float = MIN_MEDIAN_KL, *,
                  weakness: dict | None = None, bound_given_size: dict | None = None,
                  bound_given_fit: dict | None = None, version: int = 2) -> Verdict:
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
    the correlations: the verdict is inconclusive, for want of an informative bound.

    Repairs after the first full run on certificates that are bounds (rule version 2, disclosed
    on the chapter's page; ``weakness`` is required with a bound):

    * B can be explained by W only if W itself predicts test error with the claim's sign
      (``weakness``: W against test error, negative and significant); otherwise "bound explained
      by weakness" is not supported (contradicted stays contradicted).
    * B must predict test error among networks trained on the same amount of data and fitted
      as well: the check is repeated on B's partial correlation given the training-set size
      (``bound_given_size``; the bound's own formula falls with n, and so does test error) and
      given the training loss at the stop (``bound_given_fit``, the project's robustness check
      of the common training loss, ``robust_to_fit``). A pooled "predicts" that either partial
      does not reproduce makes the verdict inconclusive: there is then nothing about the
      networks for weakness to explain. Pass None for a partial whose control does not vary.

    ``version=1`` applies the rule as it was before these repairs (``weakness`` and the partials
    are then ignored), so that the chapter can show what each repair moved."""
    if version not in (1, 2):
        raise ValueError(f"C5's rule has versions 1 and 2, not {version!r}")
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

    if version == 1:
        weakness, bound_given_size, bound_given_fit = {"rho": -1.0, "p": 0.0}, None, None
    if weakness is None:
        raise ValueError("pass weakness= (the reading's correlation with test error): the bound can be "
                         "explained by weakness only if weakness predicts test error with the claim's sign")
    predicts = directional("bound predicts test error", bound["rho"], bound["p"], ci(bound), +1, alpha)
    robust = [directional(f"bound predicts test error given {control}", r["rho"], r["p"], ci(r), +1, alpha)
              for control, r in (("the training-set size", bound_given_size),
                                 ("the training loss", bound_given_fit)) if r is not None]
    raw, part = bound["rho"], bound_given_weakness["rho"]
    claim_sign = weakness["p"] < alpha and weakness["rho"] < 0
    if bound_given_weakness["p"] < alpha and np.sign(part) == np.sign(raw):
        explained_state = "contradicted"
    elif bound_given_weakness["p"] >= alpha and abs(part) <= 0.5 * abs(raw) and claim_sign:
        explained_state = "supported"
    else:
        explained_state = "not supported"
    explained = Check("bound explained by weakness", explained_state,
                      {"rho_raw": raw, "rho_given_weakness": part, "p": bound_given_weakness["p"],
                       "weakness_rho": weakness["rho"], "weakness_p": weakness["p"]})
    survives = directional("weakness survives the bound", weakness_given_bound["rho"], weakness_given_bound["p"],
                           ci(weakness_given_bound), -1, alpha)
    checks = (is_bound, predicts, *robust, explained, survives)
    values["networks_used"] = int(bound["n"])
    if is_bound.state != "supported" or predicts.state != "supported" or \
            any(c.state != "supported" for c in robust):
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
                        alpha: float = ALPHA, size: str | None = "train_size", fit: str | None = "train_loss",
                        version: int = 2):
    """C5 on a per-network table: ``(verdicts, correlations)``, one ``pacbayes_link`` verdict per
    weakness reading (``readings``, primary first) and the correlations they rest on.

    Over the networks whose ``bound`` is not ``saturated`` (the rest are counted), per reading W:
    Spearman of B and ``target``, of W and ``target``, of B and W, and the partial correlations
    of B with ``target`` given W and of W with ``target`` given B (``flatlib.stats``, the
    decision p-value the permutation one); ``median_kl`` is the median of column ``kl`` over the
    same networks (over all of them when every bound is saturated). ``correlations`` has one row
    per correlation (x, y, controlling for, rho, ci_low, ci_high, p_perm, n), the raw B-target row
    once. The caller chooses the networks (e.g. those at the common training loss,
    ``flatlib.study.at_target``). ``size`` and ``fit`` name the columns of the training-set size
    and the training loss at the stop: B's partial correlation with ``target`` given each is
    the rule's robustness check (given the size only where the size varies among the networks
    used); None leaves a check out (hand-built tables that test the other branches). ``version``:
    the rule's (``pacbayes_link``); version 1 computes neither partial."""
    import pandas as pd

    if version == 1:
        size = fit = None
    controls = [c for c in (size, fit) if c is not None]
    missing = [c for c in (bound, kl, target, *readings, *controls) if c not in table.columns]
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
    common = dict(median_kl=median_kl, saturated_count=int(full.sum()), certificate=certificate, alpha=alpha,
                  version=version)
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
        correlate(bound, w)
        robust = {"bound_given_size": correlate(bound, target, size) if size is not None
                  and used[size].nunique() > 1 else None,
                  "bound_given_fit": correlate(bound, target, fit) if fit is not None
                  and used[fit].nunique() > 1 else None}
        verdicts[w] = pacbayes_link(raw, given_w, w_given_b, reading=w, weakness=correlate(w, target), **robust,
                                    **common)
    return verdicts, pd.DataFrame(rows, columns=columns)


# C6 ------------------------------------------------------------------------------------------

# The metrics of the regularised-minima rule and the sign of the claimed change, regularised minus
# baseline: sharpness up (raw, then invariant: both on a log10 scale, so a difference is a ratio),
# accuracy, robustness and consistency up, calibration error down.
