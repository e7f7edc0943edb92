"""The machinery every verdict rule shares (``flatlib.claims``, which re-exports it): a sub-claim's
``Check`` and a claim's ``Verdict``, the directional and negligible tests on a correlation, and
the stability of a verdict under resampling with how it is described.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from flatlib.engine import stats
from flatlib.publishing.claim_figures import ALPHA, SMALLEST_EFFECT, STATES, VERDICTS

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
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"{self.claim}'s verdict has no check {name!r} (it has {[c.name for c in self.checks]}); "
                       f"a rule that stops early (e.g. too few networks) leaves later checks out: use state()")

    def state(self, name: str, missing: str = "not reached") -> str:
        """The state of check ``name``, or ``missing`` where the rule stopped before it."""
        return next((c.state for c in self.checks if c.name == name), missing)

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


def headline_verdict(central: Check, sides: list[Check]) -> str:
    if central.state == "supported":
        return "supported" if all(c.state == "supported" for c in sides) else "partly supported"
    return central.state


# C1 ------------------------------------------------------------------------------------------

def first_reaching(alphas, inflation, target: float) -> float | None:
    """The smallest alpha of the grid at which ``inflation`` reaches ``target``, or None."""
    reached = [a for a, v in sorted(zip(alphas, inflation)) if v >= target]
    return float(reached[0]) if reached else None

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
