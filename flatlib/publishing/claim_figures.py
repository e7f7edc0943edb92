"""The claims under test as data (``flatlib.claims``, which re-exports it): the states a sub-claim
can take, the paper's figures and claims (``CLAIMS``, ``paper``), and the version of each
claim's verdict rule (``RULE_VERSIONS``, registered with ``flatlib.keys``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

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
# C5 at 2: the sign of weakness and the partials given the size and the fit (rules_bounds.pacbayes_link).
RULE_VERSIONS = {cid: 1 for cid in CLAIMS} | {"C5": 2}
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
