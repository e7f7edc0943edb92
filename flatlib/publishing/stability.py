"""How firm each chapter's verdict is: per claim, an adapter from the chapter's own tables to its
rule's inputs, and the bootstrap plan that ``flatlib.claims.stability`` resamples them by.

A verdict on a threshold (C2's central p-value was 0.059 on one CPU type and 0.028 on another)
reads the same as a firm one unless the reader is told how often the same rule, on data like
these, returns each state. Each function here takes what a chapter already has (its per-network
table, in the form it writes to CSV), and returns ``{verdict: share}`` over bootstrap replicates
that resample what the design says is independent: networks (seeds), pairs of seeds, draws, or,
for the atlas, environments and then the networks within each. The rules in ``flatlib.claims``
are called unchanged; an adapter computes their inputs as the chapter does, with fewer inner
resamples (``RESAMPLES``) for the intervals and permutation p-values inside a replicate, so that a
chapter's verdict cell adds seconds, not minutes. C1 has no stability: it is one network and a
deterministic demonstration.
"""
from __future__ import annotations

import numpy as np

from flatlib.engine import stats
from flatlib.experiments import atlas as fatlas
from flatlib.experiments import batchsize, finite, interpolators
from flatlib.experiments import regularised as fregularised
from flatlib.publishing import claims

# Inner resamples (bootstrap interval, permutation p-value) of a correlation inside one replicate:
# the permutation p-value's floor is then 1 / 501, far below the rules' 0.05, and its Monte Carlo
# error near 0.05 about +-0.01.
RESAMPLES = 500
# The same for the bootstrap standard error of an AUC inside a replicate (C7): it feeds only a
# reported check, and 50 replicates know a standard error to about 10 %.
AUC_REPLICATES = 50


def _correlation(x, y, resamples: int, seed: int) -> dict:
    """A rule's correlation input {rho, p, ci_low, ci_high, n} (p: the permutation p-value)."""
    r = stats.spearman(x, y, n_resamples=resamples, seed=seed)
    ci = r.confidence_interval()
    return {"rho": r.statistic, "p": r.permutation_pvalue, "ci_low": ci.low, "ci_high": ci.high, "n": r.n}


# C2, C3 -------------------------------------------------------------------------------------

def head_to_head_verdict(table, dataset: str, primary: dict, resamples: int = RESAMPLES, seed: int = 0):
    """``claims.head_to_head`` on ``table`` (the usable networks, one row each), with
    ``primary`` = {"weakness": column, "sharpness": column, "simplicity": column}, each against
    ``test_acc``."""
    inputs = [_correlation(table[primary[f]], table["test_acc"], resamples, seed)
              for f in ("weakness", "sharpness", "simplicity")]
    given_fit = None
    if "train_loss" in table:  # the rule's robustness check, as the chapter computes it
        r = stats.partial_spearman(table[primary["weakness"]], table["test_acc"], table["train_loss"],
                                   n_resamples=resamples, seed=seed)
        given_fit = {"rho": r.statistic, "p": r.permutation_pvalue, "ci_low": r.interval.low,
                     "ci_high": r.interval.high, "n": r.n}
    return claims.head_to_head(dataset, *inputs, weakness_given_fit=given_fit)


def head_to_head(table, dataset: str, primary: dict, replicates: int = claims.STABILITY_REPLICATES,
                 seed: int = 0, resamples: int = RESAMPLES) -> dict[str, float]:
    """C2 / C3: networks resampled with replacement (each seed is one network)."""
    return claims.stability(lambda t: head_to_head_verdict(t, dataset, primary, resamples, seed), table,
                            replicates, seed, units=("seed",))


# C2+ ----------------------------------------------------------------------------------------

def _within_rho(table, measures: list[str], target: str = "test_acc"):
    """``atlas.within``'s columns the atlas rule reads (rho, p, n per dataset, environment and
    measure), without its bootstrap: Spearman's rho as the Pearson correlation of average ranks
    (ties, which resampling makes, handled as scipy does) and scipy's asymptotic p-value (t with
    n - 2 degrees of freedom). The rule's states read rho and n only; p enters its counts."""
    import pandas as pd
    from scipy import stats as sps

    ok = table[table["status"] == "ok"]
    values = ok[measures + [target]].to_numpy(dtype=float)
    keys, rhos, ns = [], [], []
    for (dataset, label), rows in ok.groupby(["dataset", "environment"], sort=False).indices.items():
        block = values[rows]
        whole = np.isfinite(block).all() and len(block) >= 4
        if whole:  # the usual case: every network measured, so one ranking serves every measure
            ranks = sps.rankdata(block, axis=0)
            centred = ranks - ranks.mean(axis=0)
            norms = np.sqrt((centred ** 2).sum(axis=0))
            with np.errstate(invalid="ignore", divide="ignore"):
                block_rho = np.where(norms[:-1] * norms[-1] > 0,
                                     (centred[:, :-1] * centred[:, -1:]).sum(axis=0) / (norms[:-1] * norms[-1]), np.nan)
        for j, measure in enumerate(measures):
            keys.append((dataset, label, measure))
            if whole:
                ns.append(len(block))
                rhos.append(float(block_rho[j]))
                continue
            pair = block[:, [j, -1]]
            pair = pair[np.isfinite(pair).all(axis=1)]
            ns.append(len(pair))
            ranks = sps.rankdata(pair, axis=0)
            spread = ranks.std(axis=0) if len(pair) else np.zeros(2)
            rhos.append(float(np.corrcoef(ranks.T)[0, 1]) if len(pair) >= 4 and (spread > 0).all() else np.nan)
    rho, n = np.array(rhos), np.array(ns, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = rho * np.sqrt((n - 2) / np.maximum(1 - rho * rho, 1e-300))
        p = 2 * sps.t.sf(np.abs(t), n - 2)
    frame = pd.DataFrame(keys, columns=["dataset", "environment", "measure"])
    return frame.assign(rho=rho, n=n.astype(int), p=p)


def atlas_verdict(table, measures: list[str], sharpness: list[str], weakness=claims.ATLAS_WEAKNESS):
    """``claims.atlas`` on the atlas's per-network ``table`` (``atlas_networks.csv``), with the
    rule's robustness check on the partial correlation given the training loss at the stop, as
    the chapter computes it."""
    given_fit = None
    if "train_loss" in table:
        given_fit = fatlas.within_partial(table, weakness[0], ["train_loss"]).dropna(subset=["partial_rho"])
        given_fit = given_fit.assign(rho=given_fit["partial_rho"])
    return claims.atlas(_within_rho(table, measures), sharpness, tuple(weakness), within_given_fit=given_fit)


def atlas(table, measures: list[str], sharpness: list[str], replicates: int = claims.STABILITY_REPLICATES,
          seed: int = 0, weakness=claims.ATLAS_WEAKNESS) -> dict[str, float]:
    """C2+: the two-stage bootstrap, environments drawn with replacement within each dataset,
    then the networks (seeds) within each drawn environment; ``weakness`` as the rule takes it
    (the headline's reading first)."""
    return claims.stability(lambda t: atlas_verdict(t, measures, sharpness, weakness), table, replicates, seed,
                            units=("environment", "seed"), within=("dataset",))


def beyond_margins(table, margins=claims.MARGIN_MEASURES, measure: str = claims.GEOMETRIC_WEAKNESS,
                   replicates: int = claims.STABILITY_REPLICATES, seed: int = 0) -> dict[str, float]:
    """C2+m, on the atlas's per-network table with the margin measures as columns: the atlas's
    two-stage bootstrap."""
    return claims.stability(lambda t: claims.beyond_margins(fatlas.within_partial(t, measure, list(margins)),
                                                            margins, measure),
                            table, replicates, seed, units=("environment", "seed"), within=("dataset",))


# C4 -----------------------------------------------------------------------------------------

def batch_sweep_verdict(table, margin: float, paper: dict | None = None):
    """``claims.batch_sweep`` on the sweep's per-network table (``batch_sweep_networks.csv``)."""
    return claims.batch_sweep(batchsize.regime_differences(table, "test_acc"), margin=margin, paper=paper)


def batch_sweep(table, margin: float, paper: dict | None = None, replicates: int = claims.STABILITY_REPLICATES,
                seed: int = 0) -> dict[str, float]:
    """C4: the seeds resampled within each training-set size; a seed brings both its networks
    (small and large batch), so every gap stays paired."""
    return claims.stability(lambda t: batch_sweep_verdict(t, margin, paper), table, replicates, seed,
                            units=("seed",), within=("n",))


# C5 -----------------------------------------------------------------------------------------

def pacbayes_link_verdict(table, dataset: str, weakness: str = "weakness_open_labels",
                          resamples: int = RESAMPLES, seed: int = 0, version: int = 2):
    """``claims.pacbayes_link_study`` on the chapter's per-network table (``pacbayes_networks.csv``)
    for ``dataset`` and the reading ``weakness``, as the chapter does: over the networks at the
    common training loss, on the certificates with the prior at initialisation (column
    ``certificate``, its KL ``certificate_kl``)."""
    part = table[(table["dataset"] == dataset) & (table["status"] == "ok")
                 & (table["stopped_by"] == "target_train_loss")]
    verdicts, _ = claims.pacbayes_link_study(part, readings=(weakness,), n_resamples=resamples, seed=seed,
                                             version=version)
    return verdicts[weakness]


def pacbayes_link(table, dataset: str, replicates: int = claims.STABILITY_REPLICATES, seed: int = 0,
                  resamples: int = RESAMPLES, version: int = 2) -> dict[str, float]:
    """C5: the networks of ``dataset`` resampled with replacement (each environment's seed is one
    network; the correlations, as in the chapter, pool every environment)."""
    part = table[table["dataset"] == dataset].assign(
        network=lambda t: t["environment"].astype(str) + "/" + t["seed"].astype(str))
    return claims.stability(lambda t: pacbayes_link_verdict(t, dataset, resamples=resamples, seed=seed,
                                                            version=version), part,
                            replicates, seed, units=("network",))


# C6 -----------------------------------------------------------------------------------------

REGULARISED_METRICS = ["log10_top_eigenvalue", "log10_adaptive_sharpness", "test_acc", "ece", "noise_acc"]


def with_pairs(networks, pairs):
    """The chapter's per-network table (``regularised_networks.csv``) with each network's seed
    ``pair`` (``regularised.consistency`` pairs seeds 0 and 1, 2 and 3, ...) and that pair's
    ``consistency`` (from ``regularised_consistency.csv``; NaN for a seed left unpaired)."""
    table = networks.assign(pair=networks["seed"].astype(int) // 2)
    return table.merge(pairs[["dataset", "regime", "pair", "consistency"]], on=["dataset", "regime", "pair"],
                       how="left", validate="many_to_one")


def regularised_verdict(table, resamples: int = RESAMPLES, seed: int = 0):
    """``claims.regularised`` on a ``with_pairs`` table: the paired effects of the chapter
    (``regularised.effects``, regime minus baseline per seed, and per seed pair for consistency)
    and, per dataset, the Spearman correlation of the primary weakness measure with test
    accuracy across every network."""
    import pandas as pd

    # a seed is its pair and its place in the pair, so that two drawn copies of a pair stay apart
    table = table.assign(unit=table["pair"].astype(str) + "/" + (table["seed"].astype(int) % 2).astype(str))
    pairs = table.dropna(subset=["consistency"]).drop_duplicates(["dataset", "regime", "pair"])
    effects = pd.concat([fregularised.effects(table, REGULARISED_METRICS, pair_on="unit"),
                         fregularised.effects(pairs, ["consistency"], pair_on="pair")], ignore_index=True)
    weakness = {d: _correlation(part["weakness_open_labels"], part["test_acc"], resamples, seed)
                for d, part in table.groupby("dataset", sort=False)}
    return claims.regularised(effects, weakness)


def regularised(networks, pairs, replicates: int = claims.STABILITY_REPLICATES, seed: int = 0,
                          resamples: int = RESAMPLES) -> dict[str, float]:
    """C6: seed pairs resampled within each dataset; a pair brings its networks of every regime,
    so every effect stays paired by seed."""
    return claims.stability(lambda t: regularised_verdict(t, resamples, seed), with_pairs(networks, pairs),
                            replicates, seed, units=("pair",), within=("dataset",))


# C7 -----------------------------------------------------------------------------------------

def interpolators_verdict(table, auc_replicates: int = AUC_REPLICATES, seed: int = 0):
    """``claims.flattest_interpolators`` on the interpolators that reached the tolerance
    (``interpolators.csv``, rows with ``interpolated``), through ``interpolators.conditions``."""
    return claims.flattest_interpolators(interpolators.conditions(table, auc_replicates, seed))


def flattest_interpolators(table, replicates: int = claims.STABILITY_REPLICATES, seed: int = 0,
                           auc_replicates: int = AUC_REPLICATES) -> dict[str, float]:
    """C7: seeds resampled with replacement; a seed brings every interpolator trained on its
    training inputs, of every kind and condition."""
    return claims.stability(lambda t: interpolators_verdict(t, auc_replicates, seed), table, replicates, seed,
                            units=("seed",))


# C8 -----------------------------------------------------------------------------------------

def finite_weakness_verdict(tables: dict, structured_rule: str, resamples: int = RESAMPLES, seed: int = 0):
    """``claims.finite_weakness`` from ``tables`` = {"learners": ``finite_learners.csv``,
    "networks": ``finite_networks.csv``}, as the chapter computes its inputs."""
    learners, nets = tables["learners"], tables["networks"]
    exchangeable = learners[learners["rule"] == "exchangeable"]
    minimax = {other: finite.weakest_minus(exchangeable, "worst_case", other) for other in ("shortest", "any")}
    boundary = finite.weakest_minus(learners[learners["rule"] == structured_rule], "accuracy", "shortest")
    return claims.finite_weakness(minimax, boundary,
                                  _correlation(nets["weakness_open_labels"], nets["exact_log2_weakness"], resamples,
                                               seed),
                                  _correlation(nets["exact_log2_weakness"], nets["unseen_acc"], resamples, seed),
                                  _correlation(nets["hamming_radius"], nets["unseen_acc"], resamples, seed))


def finite_weakness(learners, networks, structured_rule: str, replicates: int = claims.STABILITY_REPLICATES,
                    seed: int = 0, resamples: int = RESAMPLES) -> dict[str, float]:
    """C8: the draws resampled within each target rule, and, independently, the networks."""
    return claims.stability(lambda t: finite_weakness_verdict(t, structured_rule, resamples, seed),
                            {"learners": learners, "networks": networks}, replicates, seed,
                            units={"learners": ("draw",), "networks": ("seed",)}, within={"learners": ("rule",)})
