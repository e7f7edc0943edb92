"""Comparing a correlation with a value or with another (Fisher's z), two means by Welch's test,
and pooling correlations across studies by inverse-variance weights on Fisher's z.

Part of ``flatlib.stats``, which re-exports it and whose ``VERSION`` versions its numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from flatlib.engine.correlation import SPEARMAN_Z_VARIANCE, ConfidenceInterval

# ----------------------------------------------------------------------------- against a value

def fisher_z_test(rho: float, n: int, value: float) -> float:
    """Two-sided p-value of H0: the population Spearman correlation equals ``value``, from
    Fisher's z with the standard error sqrt(1.06 / (n - 3)) of Spearman's rho (Fieller et al.
    1957): p = 2 P(Z >= |atanh(rho) - atanh(value)| / se). Used to ask whether our rho differs
    from the paper's figure."""
    if n < 4:
        raise ValueError(f"need at least 4 pairs, got {n}")
    if not (-1 < value < 1 and -1 <= rho <= 1):
        raise ValueError(f"rho must be in [-1, 1] and value in (-1, 1), got {rho!r}, {value!r}")
    se = math.sqrt(SPEARMAN_Z_VARIANCE / (n - 3))
    z = math.atanh(max(min(rho, 1 - 1e-15), -1 + 1e-15))
    return float(2 * sps.norm.sf(abs(z - math.atanh(value)) / se))


def fisher_z_two_sample(rho_a: float, n_a: int, rho_b: float, n_b: int) -> float:
    """Two-sided p-value of H0: two Spearman correlations from independent samples of ``n_a``
    and ``n_b`` pairs are equal, from Fisher's z with each one's variance 1.06 / (n - 3)
    (Fieller et al. 1957): p = 2 P(Z >= |atanh(rho_a) - atanh(rho_b)| / sqrt(1.06 / (n_a - 3)
    + 1.06 / (n_b - 3))). Our rho against a published one that is itself an estimate (the
    paper's, from its own networks): unlike :func:`fisher_z_test`, it counts the uncertainty of
    both."""
    if n_a < 4 or n_b < 4:
        raise ValueError(f"need at least 4 pairs in each sample, got {n_a} and {n_b}")
    if not (-1 <= rho_a <= 1 and -1 <= rho_b <= 1):
        raise ValueError(f"correlations must be in [-1, 1], got {rho_a!r} and {rho_b!r}")
    clip = 1 - 1e-15
    z_a, z_b = (math.atanh(max(min(r, clip), -clip)) for r in (rho_a, rho_b))
    se = math.sqrt(SPEARMAN_Z_VARIANCE / (n_a - 3) + SPEARMAN_Z_VARIANCE / (n_b - 3))
    return float(2 * sps.norm.sf(abs(z_a - z_b) / se))


@dataclass(frozen=True)
class WelchResult:
    """Welch's test of the difference of two independent means, each known by its standard
    error and degrees of freedom."""

    difference: float  # a - b
    standard_error: float
    df: float
    pvalue_greater: float  # one-sided, H1: a > b
    pvalue_less: float  # one-sided, H1: a < b


def welch_difference(mean_a: float, se_a: float, df_a: float, mean_b: float, se_b: float, df_b: float) -> WelchResult:
    """The difference a - b of two independent means with standard errors ``se_a``, ``se_b``:
    t = (a - b) / sqrt(se_a^2 + se_b^2) against Student's t with the Welch-Satterthwaite degrees
    of freedom (se_a^2 + se_b^2)^2 / (se_a^4 / df_a + se_b^4 / df_b); for two sample means
    df = n - 1 each and this is scipy's ``ttest_ind(equal_var=False)``."""
    if not all(math.isfinite(v) for v in (mean_a, se_a, df_a, mean_b, se_b, df_b)):
        raise ValueError("welch_difference needs finite means, standard errors and degrees of freedom")
    if se_a < 0 or se_b < 0 or df_a <= 0 or df_b <= 0:
        raise ValueError(f"standard errors must be >= 0 and df > 0, got se {se_a}, {se_b} and df {df_a}, {df_b}")
    variance = se_a ** 2 + se_b ** 2
    difference = mean_a - mean_b
    if variance == 0:  # two exact values: the difference is certain
        return WelchResult(difference, 0.0, math.inf, float(difference <= 0), float(difference >= 0))
    df = variance ** 2 / ((se_a ** 4 / df_a if se_a else 0) + (se_b ** 4 / df_b if se_b else 0))
    t = difference / math.sqrt(variance)
    return WelchResult(difference, math.sqrt(variance), float(df), float(sps.t.sf(t, df)), float(sps.t.cdf(t, df)))


@dataclass(frozen=True)
class PooledResult:
    """A fixed-effect pooled correlation over groups (Fisher z, inverse-variance weights),
    Cochran's Q test of whether the groups share one correlation, and the random-effects view:
    the DerSimonian-Laird between-group variance ``tau2`` (on the z scale) and the prediction
    interval for the correlation in a new group (Higgins, Thompson & Spiegelhalter 2009)."""

    statistic: float
    pvalue: float
    interval: ConfidenceInterval
    q: float
    q_pvalue: float
    tau2: float
    prediction: ConfidenceInterval
    groups: int
    n: int

    def confidence_interval(self) -> ConfidenceInterval:
        return self.interval


def fisher_z(rhos, ns) -> tuple[np.ndarray, np.ndarray]:
    """Fisher's z of Spearman correlations and its variance 1.06 / (n - 3), with |rho| clipped
    at 1 - 1/n: with few pairs a rank correlation of exactly +-1 is common, and its z would be
    infinite and outweigh every other group."""
    rhos, ns = np.asarray(rhos, dtype=float), np.asarray(ns, dtype=float)
    limit = 1 - 1 / ns
    return np.arctanh(np.clip(rhos, -limit, limit)), SPEARMAN_Z_VARIANCE / (ns - 3)


def pooled_correlation(rhos, ns, confidence_level: float = 0.95) -> PooledResult:
    """Pool Spearman correlations measured in separate groups (environments) of ``ns`` networks:
    z_g = atanh(rho_g) (``fisher_z``) with variance v_g = 1.06 / (n_g - 3), the weighted mean z
    with weights w_g = 1 / v_g, its standard error 1 / sqrt(sum w), a two-sided z test of
    rho = 0 and the interval tanh(z +- q se). Heterogeneity: Cochran's Q = sum w (z_g - z)^2
    against chi^2 with groups - 1 degrees of freedom. Random effects: tau2 = max(0, (Q - (k - 1))
    / (sum w - sum w^2 / sum w)) (DerSimonian & Laird 1986), the random-effects mean z* with
    weights 1 / (v_g + tau2), and the prediction interval tanh(z* +- t_{k-2} sqrt(tau2 + se*^2))
    for a new group (needs k >= 3 groups; NaN otherwise). Groups with a non-finite rho are left
    out."""
    rhos, ns = np.asarray(rhos, dtype=float).ravel(), np.asarray(ns, dtype=float).ravel()
    if rhos.shape != ns.shape:
        raise ValueError(f"give one n per rho, got {rhos.size} rhos and {ns.size} ns")
    if not np.isfinite(ns).all() or (ns < 4).any():
        raise ValueError("every group needs a finite count of at least 4 pairs")
    keep = np.isfinite(rhos)
    rhos, ns = rhos[keep], ns[keep]
    if rhos.size == 0:
        raise ValueError("no group has a finite correlation to pool")
    z, v = fisher_z(rhos, ns)
    w = 1 / v
    mean = float((w * z).sum() / w.sum())
    se = float(1 / np.sqrt(w.sum()))
    half = float(sps.norm.ppf(0.5 + confidence_level / 2)) * se
    k = rhos.size
    q = float((w * (z - mean) ** 2).sum())
    q_p = float(sps.chi2.sf(q, k - 1)) if k > 1 else math.nan
    tau2 = max(0.0, (q - (k - 1)) / float(w.sum() - (w ** 2).sum() / w.sum())) if k > 1 else math.nan
    if k >= 3:
        w_star = 1 / (v + tau2)
        mean_star = float((w_star * z).sum() / w_star.sum())
        spread = float(sps.t.ppf(0.5 + confidence_level / 2, k - 2)) * math.sqrt(tau2 + 1 / w_star.sum())
        prediction = ConfidenceInterval(math.tanh(mean_star - spread), math.tanh(mean_star + spread))
    else:
        prediction = ConfidenceInterval(math.nan, math.nan)
    return PooledResult(statistic=math.tanh(mean), pvalue=float(2 * sps.norm.sf(abs(mean) / se)),
                        interval=ConfidenceInterval(math.tanh(mean - half), math.tanh(mean + half)),
                        q=q, q_pvalue=q_p, tau2=tau2, prediction=prediction, groups=int(k), n=int(ns.sum()))
