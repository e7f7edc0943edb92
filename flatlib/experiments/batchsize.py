"""The small-batch versus large-batch comparison of claim C4 (Keskar et al. 2017; Bennett 2026).

Networks come in pairs: at each training-set size ``n`` and seed, one network is trained with
the small batch and one with the large batch, sharing the seed (so the initial weights, the
training subset and everything else but the batch size). :func:`regime_differences` turns a
per-network table into per-``n`` paired differences (small minus large) with Student-t
intervals, which ``flatlib.claims.batch_sweep`` judges by the rule fixed before the published
run.
"""
from __future__ import annotations

import math

from flatlib.engine import stats

# The version of this module's computations (``flatlib.keys``): the batch-size sweep's configs and
# gap statistics. Bump it with any change that can change their numbers, and re-record the
# fingerprints.
VERSION = 1
# The name summaries record this VERSION under ("module:flatlib.batchsize"), kept wherever the module lives.
VERSION_NAME = "flatlib.batchsize"

REGIMES = ("small", "large")


def large_batch_size(n: int, fraction: float = 0.1, floor: int = 500) -> int:
    """Keskar et al.'s large batch: ``fraction`` of the training set, at least ``floor``
    examples, at most the whole training set."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if floor < 1 or n < 1:
        raise ValueError(f"floor and n must be at least 1, got floor={floor!r}, n={n!r}")
    return int(min(n, max(floor, math.floor(fraction * n))))


def paired(table, value: str):
    """Per ``n``, the per-seed values of ``value`` for both regimes, aligned on seed, as a
    frame indexed by (n, seed) with columns ``small`` and ``large``. A seed present in only one
    regime is an error: the pairing is the design."""
    missing = sorted({"n", "seed", "regime", value} - set(table.columns))
    if missing:
        raise ValueError(f"table lacks column(s) {missing}")
    wide = table.pivot_table(index=["n", "seed"], columns="regime", values=value, aggfunc="first")
    unknown = sorted(set(wide.columns) - set(REGIMES))
    if unknown:
        raise ValueError(f"regime must be one of {REGIMES}, found {unknown}")
    wide = wide.reindex(columns=list(REGIMES))
    unpaired = wide[wide.isna().any(axis=1)]
    if len(unpaired):
        raise ValueError(f"{len(unpaired)} (n, seed) cell(s) lack a network in one regime: "
                         f"{list(unpaired.index)[:5]}")
    return wide


def regime_differences(table, value: str, confidence_level: float = 0.95):
    """One row per ``n``: the mean of ``value`` in each regime, the mean paired difference
    small - large, its Student-t interval and paired t-test p-value, the number of pairs."""
    import pandas as pd

    wide = paired(table, value)
    rows = []
    for n, cell in wide.groupby(level="n"):
        d = stats.paired_difference(cell["small"], cell["large"], confidence_level)
        rows.append({"n": int(n), "small": float(cell["small"].mean()), "large": float(cell["large"].mean()),
                     "difference": d.mean, "se": d.standard_error, "ci_low": d.confidence_interval().low,
                     "ci_high": d.confidence_interval().high, "p": d.pvalue, "pairs": d.n})
    return pd.DataFrame(rows).set_index("n")


def gap_changes(gaps):
    """Every change of the gap between two sizes, from a ``regime_differences`` table: one row per
    pair of sizes ``n_from`` < ``n_to`` with ``change`` = gap(n_to) - gap(n_from), its standard
    error and Welch's one-sided p-values for a rise and for a fall (``stats.welch_difference``;
    the sizes train different networks, so their gaps are independent, each with ``pairs`` - 1
    degrees of freedom). A gap that shrinks monotonically has no significant rise anywhere."""
    import itertools

    import pandas as pd

    missing = sorted({"difference", "se", "pairs"} - set(gaps.columns))
    if missing:
        raise ValueError(f"gaps lacks column(s) {missing}; pass a regime_differences table")
    rows = []
    for a, b in itertools.combinations(sorted(gaps.index), 2):
        first, second = gaps.loc[a], gaps.loc[b]
        w = stats.welch_difference(float(second["difference"]), float(second["se"]), float(second["pairs"]) - 1,
                                   float(first["difference"]), float(first["se"]), float(first["pairs"]) - 1)
        rows.append({"n_from": int(a), "n_to": int(b), "change": w.difference, "se": w.standard_error, "df": w.df,
                     "p_rise": w.pvalue_greater, "p_fall": w.pvalue_less})
    return pd.DataFrame(rows, columns=["n_from", "n_to", "change", "se", "df", "p_rise", "p_fall"])


def against_figures(gaps, figures: dict):
    """Our gap beside a published one at each size where both exist: one row per ``n`` of
    ``figures`` (n -> the published gap, a fraction like ``difference``) found in ``gaps``, with
    our gap, its interval, the difference ours minus theirs and the one-sample t-test p-value of
    "ours equals theirs" (Student's t with ``pairs`` - 1 degrees of freedom; the published figure
    comes without an uncertainty, so it is taken as exact)."""
    import pandas as pd
    from scipy import stats as sps

    rows = []
    for n, theirs in sorted(figures.items()):
        if n not in gaps.index:
            continue
        ours = gaps.loc[n]
        gap = float(ours["difference"]) - theirs
        p = (float(2 * sps.t.sf(abs(gap) / float(ours["se"]), float(ours["pairs"]) - 1)) if ours["se"] > 0
             else float(gap == 0))
        rows.append({"n": int(n), "ours": float(ours["difference"]), "ci_low": float(ours["ci_low"]),
                     "ci_high": float(ours["ci_high"]), "paper": float(theirs),
                     "difference": gap, "p": p})
    return pd.DataFrame(rows, columns=["n", "ours", "ci_low", "ci_high", "paper", "difference", "p"])
