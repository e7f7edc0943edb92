"""Rank correlations with the uncertainty a reader needs: Spearman and Kendall with their
asymptotic p-values (scipy), a paired percentile-bootstrap confidence interval, and a
permutation p-value; partial rank correlation; a tidy table of every measure against every
target.

Results look like ``scipy.stats`` results (``.statistic``, ``.pvalue``, and
``.confidence_interval()`` as a method), with ``.permutation_pvalue`` and ``.n`` added.
Resampling is seeded, so a chapter's numbers are reproducible to the last digit. Also here:
the equivalence test for "a correlation is negligible" (two one-sided tests on Fisher's z),
the weighted linear trend that the batch-sweep rule uses, and the one formatter of p-values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import stats as sps

# The version of this module's computations (``flatlib.keys``): correlations, p-values, intervals,
# partial correlations and meta-analysis. Bump it with any change that can change their numbers, and
# re-record the fingerprints.
VERSION = 1
# The name summaries record this VERSION under ("module:flatlib.stats"), kept wherever the module lives.
VERSION_NAME = "flatlib.stats"

METHODS = ("spearman", "kendall")


class ConfidenceInterval(NamedTuple):
    low: float
    high: float


@dataclass(frozen=True)
class CorrelationResult:
    method: str
    statistic: float
    pvalue: float
    interval: ConfidenceInterval
    permutation_pvalue: float
    n: int
    confidence_level: float
    n_resamples: int

    def confidence_interval(self, confidence_level: float | None = None) -> ConfidenceInterval:
        """The bootstrap interval, as scipy's ``result.confidence_interval()``. It was computed
        at ``self.confidence_level``; another level needs a new call with that level."""
        if confidence_level is not None and not math.isclose(confidence_level, self.confidence_level):
            raise ValueError(f"this interval is at confidence level {self.confidence_level}; recompute the "
                             f"correlation with confidence_level={confidence_level}")
        return self.interval


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite; drop the rows with NaN or inf first (and say how many)")
    if x.size < 4:
        raise ValueError(f"need at least 4 pairs for a rank correlation, got {x.size}")
    return x, y


def _rank_rows(a: np.ndarray) -> np.ndarray:
    return sps.rankdata(a, axis=-1)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (NaN where a row is constant)."""
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    denom = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(-1) / denom, np.nan)


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _pearson_rows(_rank_rows(x), _rank_rows(y))


def _kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair, from the signs of all pairwise differences."""
    i, j = np.triu_indices(x.shape[-1], k=1)
    sx, sy = np.sign(x[..., j] - x[..., i]), np.sign(y[..., j] - y[..., i])
    denom = np.sqrt((sx != 0).sum(-1) * (sy != 0).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (sx * sy).sum(-1) / denom, np.nan)


_ROWS = {"spearman": _spearman_rows, "kendall": _kendall_rows}


def _chunks(total: int, size: int):
    for start in range(0, total, size):
        yield min(size, total - start)


def _chunk_size(n: int, method: str = "spearman") -> int:
    """Resamples per vectorised chunk, so that one chunk holds about 2 million numbers."""
    return max(1, 2_000_000 // (n * (n if method == "kendall" else 8)))


def _bootstrap(arrays: tuple, rows, n_resamples: int, confidence_level: float, seed: int,
               chunk: int) -> ConfidenceInterval:
    """Percentile bootstrap of the statistic ``rows`` (row-wise over resampled copies of
    ``arrays``, resampled jointly by index). Undefined (non-finite) resamples are dropped."""
    n = arrays[0].size
    rng = np.random.default_rng(seed)
    values = []
    for size in _chunks(n_resamples, chunk):
        idx = rng.integers(0, n, size=(size, n))
        values.append(rows(*(a[idx] for a in arrays)))
    values = np.concatenate(values)
    values = values[np.isfinite(values)]
    if values.size == 0:  # every resample undefined: a constant variable has no interval
        return ConfidenceInterval(math.nan, math.nan)
    alpha = (1 - confidence_level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return ConfidenceInterval(float(low), float(high))


def _permutation(x: np.ndarray, y: np.ndarray, rows, n_resamples: int, seed: int, chunk: int) -> float:
    """(1 + #{|rows(x, permuted y)| >= |rows(x, y)|}) / (1 + n_resamples)."""
    observed = abs(float(rows(x[None], y[None])[0]))
    if not math.isfinite(observed):  # an undefined statistic has no p-value (never the floor)
        return math.nan
    rng = np.random.default_rng(seed)
    exceed = 0
    for size in _chunks(n_resamples, chunk):
        perm = rng.permuted(np.broadcast_to(y, (size, y.size)), axis=1)
        values = np.abs(rows(np.broadcast_to(x, perm.shape), perm))
        # a small tolerance so that ties with the observed value count as "at least as extreme"
        exceed += int((values >= observed - 1e-12).sum())
    return (1 + exceed) / (1 + n_resamples)


def bootstrap_interval(x, y, method: str = "spearman", n_resamples: int = 10000,
                       confidence_level: float = 0.95, seed: int = 0) -> ConfidenceInterval:
    """Paired percentile bootstrap: resample (x_i, y_i) pairs with replacement, recompute the
    correlation, take the central ``confidence_level`` quantiles. Resamples in which x or y is
    constant (correlation undefined) are dropped."""
    x, y = _pair(x, y)
    rows = _ROWS[_check_method(method)]
    return _bootstrap((x, y), rows, n_resamples, confidence_level, seed, _chunk_size(x.size, method))


def permutation_pvalue(x, y, method: str = "spearman", n_resamples: int = 10000, seed: int = 0) -> float:
    """Two-sided Monte Carlo permutation p-value of the correlation under independence:
    (1 + #{|r_perm| >= |r_obs|}) / (1 + n_resamples), which is never 0 and is a valid p-value
    (Phipson & Smyth 2010)."""
    x, y = _pair(x, y)
    rows = _ROWS[_check_method(method)]
    return _permutation(x, y, rows, n_resamples, seed, _chunk_size(x.size, method))


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def _varies(*columns) -> bool:
    """Whether every column takes at least two values (else no rank correlation is defined)."""
    return all(np.unique(np.asarray(c, dtype=float)).size >= 2 for c in columns)


def correlation(x, y, method: str = "spearman", n_resamples: int = 10000,
                confidence_level: float = 0.95, seed: int = 0) -> CorrelationResult:
    """Rank correlation of ``x`` and ``y`` with scipy's asymptotic p-value, a paired bootstrap
    interval and a permutation p-value, each from ``n_resamples`` seeded resamples. A constant
    ``x`` or ``y`` (a saturated bound, say) has no rank correlation: every number is NaN."""
    x, y = _pair(x, y)
    _check_method(method)
    if not _varies(x, y):
        return CorrelationResult(method=method, statistic=math.nan, pvalue=math.nan,
                                 interval=ConfidenceInterval(math.nan, math.nan), permutation_pvalue=math.nan,
                                 n=int(x.size), confidence_level=confidence_level, n_resamples=n_resamples)
    fn = sps.spearmanr if method == "spearman" else sps.kendalltau
    result = fn(x, y)
    return CorrelationResult(
        method=method, statistic=float(result.statistic), pvalue=float(result.pvalue),
        interval=bootstrap_interval(x, y, method, n_resamples, confidence_level, seed),
        permutation_pvalue=permutation_pvalue(x, y, method, n_resamples, seed + 1),
        n=int(x.size), confidence_level=confidence_level, n_resamples=n_resamples)


def spearman(x, y, **kwargs) -> CorrelationResult:
    return correlation(x, y, "spearman", **kwargs)


def kendall(x, y, **kwargs) -> CorrelationResult:
    return correlation(x, y, "kendall", **kwargs)


def _partial_rows(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Partial Spearman correlation of x and y given z, row by row, from the three pairwise
    rank correlations: (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2))."""
    rx, ry, rz = _rank_rows(x), _rank_rows(y), _rank_rows(z)
    xy, xz, yz = _pearson_rows(rx, ry), _pearson_rows(rx, rz), _pearson_rows(ry, rz)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xy - xz * yz) / np.sqrt((1 - xz ** 2) * (1 - yz ** 2))


def partial_spearman(x, y, z, n_resamples: int = 10000, confidence_level: float = 0.95,
                     seed: int = 0) -> CorrelationResult:
    """Spearman correlation of ``x`` and ``y`` with the (rank-linear) effect of ``z`` removed.
    p-value from Student's t with n - 3 degrees of freedom; a paired bootstrap interval over
    (x, y, z) triples; a seeded permutation p-value by Freedman & Lane (1983) on the ranks:
    permute the residuals of the reduced model (ranks of y on 1 and the ranks of z), add them
    back to its fitted values, and recompute the partial correlation of x and that y given z."""
    x, y = _pair(x, y)
    _, z = _pair(x, z)
    r = float(_partial_rows(x[None], y[None], z[None])[0])
    n = x.size
    t = r * np.sqrt((n - 3) / max(1 - r * r, 1e-300))
    pvalue = float(2 * sps.t.sf(abs(t), n - 3))
    interval = _bootstrap((x, y, z), _partial_rows, n_resamples, confidence_level,
                          seed, _chunk_size(n))
    # Freedman-Lane: y* = fitted + permuted residual ey[pi], whose partial correlation with x
    # given z is the correlation of ex with y*'s residual on z, (I - P) y* = ey[pi] - P ey[pi]
    # (P the projection onto 1 and rz, which keeps the fitted values). Without re-residualising
    # it would be Kennedy's (1995) scheme, whose |r| under each permutation is never larger, so
    # its p-values are never larger (too liberal, Anderson & Legendre 1999).
    rx, ry, rz = (sps.rankdata(a) for a in (x, y, z))
    design = np.column_stack([np.ones(n), rz])
    projection = design @ np.linalg.pinv(design)
    ex, ey = rx - projection @ rx, ry - projection @ ry

    def refitted(a, b):
        return _pearson_rows(a, b - b @ projection)

    p_perm = _permutation(ex, ey, refitted, n_resamples, seed + 1, _chunk_size(n)) if math.isfinite(r) \
        else math.nan
    return CorrelationResult(method="partial_spearman", statistic=r, pvalue=pvalue,
                             interval=interval, permutation_pvalue=p_perm, n=int(n),
                             confidence_level=confidence_level, n_resamples=n_resamples)


def correlation_table(frame, columns, targets, n_resamples: int = 10000, confidence_level: float = 0.95,
                      seed: int = 0, kendall_too: bool = True):
    """One row per (measure, target): Spearman rho, its p-value, bootstrap interval and
    permutation p-value, and Kendall's tau with its p-value. Rows with a non-finite value in
    either column are dropped and counted in ``n``."""
    import pandas as pd

    missing = sorted((set(columns) | set(targets)) - set(frame.columns))
    if missing:
        raise ValueError(f"columns {missing} are not in the table; it has {list(frame.columns)}")
    rows = []
    for target in targets:
        for column in columns:
            pair = frame[[column, target]].astype(float)
            pair = pair[np.isfinite(pair).all(axis=1)]
            rho = correlation(pair[column], pair[target], "spearman", n_resamples, confidence_level, seed)
            row = {"measure": column, "target": target, "n": rho.n, "rho": rho.statistic, "p": rho.pvalue,
                   "ci_low": rho.interval.low, "ci_high": rho.interval.high,
                   "p_perm": rho.permutation_pvalue}
            if kendall_too:
                tau = sps.kendalltau(pair[column], pair[target]) if _varies(pair[column], pair[target]) else None
                row.update({"kendall_tau": math.nan if tau is None else float(tau.statistic),
                            "kendall_p": math.nan if tau is None else float(tau.pvalue)})
            rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class DifferenceResult:
    """Mean of paired differences a - b with Student's t interval and paired t-test."""

    mean: float
    pvalue: float
    sd: float
    n: int
    confidence_level: float

    @property
    def standard_error(self) -> float:
        return self.sd / math.sqrt(self.n)

    def confidence_interval(self, confidence_level: float | None = None) -> ConfidenceInterval:
        """Student's t interval with n - 1 degrees of freedom, at ``confidence_level``
        (default: the level the result was made with), as scipy's ``TtestResult``."""
        level = self.confidence_level if confidence_level is None else confidence_level
        half = float(sps.t.ppf(0.5 + level / 2, self.n - 1)) * self.standard_error
        return ConfidenceInterval(self.mean - half, self.mean + half)


def paired_difference(a, b, confidence_level: float = 0.95) -> DifferenceResult:
    """The mean of ``a - b`` over pairs (e.g. seeds shared by two regimes), its Student-t
    confidence interval with n - 1 degrees of freedom, and the two-sided paired t-test
    p-value for a zero mean. Pairs with a non-finite member are an error, not dropped: a
    missing network changes what the interval means."""
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"a and b must pair up, got {a.size} and {b.size} values")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired_difference got non-finite values; drop the whole pair explicitly first")
    d = a - b
    n = d.size
    if n < 2:
        raise ValueError(f"paired_difference needs at least 2 pairs, got {n}")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    se = sd / np.sqrt(n)
    if se > 0:
        pvalue = float(2 * sps.t.sf(abs(mean) / se, n - 1))
    else:
        pvalue = 1.0 if mean == 0 else 0.0
    return DifferenceResult(mean=mean, pvalue=pvalue, sd=sd, n=int(n), confidence_level=confidence_level)


# Fieller, Hartley & Pearson (1957): var(atanh(rho_s)) is about 1.06 / (n - 3) for Spearman's rho.
SPEARMAN_Z_VARIANCE = 1.06


@dataclass(frozen=True)
class EquivalenceResult:
    """Two one-sided tests (TOST) that a Spearman correlation lies inside (-bound, +bound)."""

    statistic: float
    bound: float
    pvalue: float  # the larger of the two one-sided p-values; small = equivalent to zero
    power: float  # the chance of concluding equivalence at ``alpha`` if the true rho were 0
    n: int
    alpha: float


def spearman_equivalence(rho: float, n: int, bound: float = 0.2, alpha: float = 0.05) -> EquivalenceResult:
    """Is |rho| < ``bound``? Two one-sided tests on Fisher's z = atanh(rho), with the standard
    error sqrt(1.06 / (n - 3)) of Spearman's rho (Fieller et al. 1957):

        p_low  = P(Z >= (z + atanh(bound)) / se)   for H0: rho <= -bound
        p_high = P(Z <= (z - atanh(bound)) / se)   for H0: rho >= +bound

    and the TOST p-value is max(p_low, p_high) (Schuirmann 1987). ``power`` is the chance of
    rejecting both at ``alpha`` when the true rho is 0: 2 Phi(atanh(bound)/se - z_{1-alpha}) - 1,
    or 0 when that is negative. A small p-value is evidence that the correlation is negligible;
    a large one with low power is absence of evidence, not evidence of absence."""
    if not 0 < bound < 1:
        raise ValueError(f"bound must be in (0, 1), got {bound!r}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
    if n < 4:
        raise ValueError(f"need at least 4 pairs, got {n}")
    if not -1 <= rho <= 1:
        raise ValueError(f"rho must be in [-1, 1], got {rho!r}")
    se = math.sqrt(SPEARMAN_Z_VARIANCE / (n - 3))
    z, zb = math.atanh(max(min(rho, 1 - 1e-15), -1 + 1e-15)), math.atanh(bound)
    p_low = float(sps.norm.sf((z + zb) / se))
    p_high = float(sps.norm.cdf((z - zb) / se))
    power = max(0.0, 2 * float(sps.norm.cdf(zb / se - sps.norm.ppf(1 - alpha))) - 1)
    return EquivalenceResult(statistic=float(rho), bound=bound, pvalue=max(p_low, p_high), power=power,
                             n=int(n), alpha=alpha)


@dataclass(frozen=True)
class TrendResult:
    """Weighted least-squares line through points with known standard errors."""

    slope: float
    intercept: float
    slope_se: float
    pvalue_decreasing: float  # one-sided, H1: slope < 0
    pvalue_increasing: float  # one-sided, H1: slope > 0
    n: int


def weighted_trend(x, y, se) -> TrendResult:
    """The line y = a + b x fitted by weighted least squares with weights 1 / se^2, treating
    the standard errors ``se`` of the points as known (so the slope's standard error is
    sqrt(1 / sum w (x - xbar_w)^2) and its test is a z test, as for a meta-regression).
    One-sided p-values for a decreasing and an increasing trend."""
    x, y, se = (np.asarray(a, dtype=float).ravel() for a in (x, y, se))
    if not (x.shape == y.shape == se.shape):
        raise ValueError(f"x, y and se must have one value per point, got {x.size}, {y.size}, {se.size}")
    if x.size < 2 or np.unique(x).size < 2:
        raise ValueError("a trend needs at least two distinct x values")
    if not (np.isfinite(x).all() and np.isfinite(y).all() and np.isfinite(se).all() and (se > 0).all()):
        raise ValueError("x, y must be finite and every se finite and positive")
    w = 1 / se ** 2
    xbar, ybar = (w * x).sum() / w.sum(), (w * y).sum() / w.sum()
    sxx = (w * (x - xbar) ** 2).sum()
    slope = float((w * (x - xbar) * (y - ybar)).sum() / sxx)
    slope_se = float(math.sqrt(1 / sxx))
    z = slope / slope_se
    return TrendResult(slope=slope, intercept=float(ybar - slope * xbar), slope_se=slope_se,
                       pvalue_decreasing=float(sps.norm.cdf(z)), pvalue_increasing=float(sps.norm.sf(z)),
                       n=int(x.size))


def format_pvalue(p: float, n_resamples: int | None = None) -> str:
    """A p-value as a reader should see it: two significant figures, and a Monte Carlo
    p-value at its floor 1 / (n_resamples + 1) as a bound, never a value: the smallest power of
    ten 1e-k at or above the floor, "< 1e-4" (10,000 resamples) or, when the floor is that power
    itself, "≤ 1e-4" (9,999 resamples)."""
    if p is None or not math.isfinite(p):
        return "n/a"
    if n_resamples is not None and p <= 1 / (n_resamples + 1) * (1 + 1e-9):
        # in integers, so that a floor that is exactly a power of ten is recognised as one
        k = len(str(int(n_resamples) + 1)) - 1
        return f"{'≤' if int(n_resamples) + 1 == 10 ** k else '<'} 1e-{k}"
    return f"{p:.2g}"


def p_text(p: float, n_resamples: int | None = None) -> str:
    """A p-value for prose: "p = 0.015", or "p < 1e-4" (or "p ≤ 1e-4") at the Monte Carlo
    floor (:func:`format_pvalue`)."""
    shown = format_pvalue(p, n_resamples)
    return f"p {shown}" if shown[0] in "<≤" else f"p = {shown}"


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


# ----------------------------------------------------------------------------- reliability

@dataclass(frozen=True)
class ReliabilityResult:
    """How reliably a test set ranks networks by accuracy."""

    split_half: float  # Spearman between the two halves' rankings, mean over splits
    reliability: float  # Spearman-Brown corrected to the full test set: 2 r / (1 + r)
    interval: ConfidenceInterval  # bootstrap over test images, of ``reliability``
    ceiling: float  # sqrt(max(reliability, 0)): the largest correlation a perfect measure could show
    splits: int
    n_resamples: int

    def confidence_interval(self) -> ConfidenceInterval:
        return self.interval


def _split_half(correct: np.ndarray, splits: int, rng: np.random.Generator, networks=None) -> float:
    """The mean over ``splits`` random halvings of the test images of the Spearman correlation
    between the networks' accuracies on the two halves (of the networks ``networks``, with
    repeats, when given)."""
    images = correct.shape[1]
    half = images // 2
    rows = slice(None) if networks is None else networks
    rs = []
    for _ in range(splits):
        order = rng.permutation(images)
        a, b = order[:half], order[half: 2 * half]
        rs.append(sps.spearmanr(correct[:, a].mean(1)[rows], correct[:, b].mean(1)[rows]).statistic)
    return float(np.nanmean(rs))


def _spearman_brown(r: float) -> float:
    return 2 * r / (1 + r) if r > -1 else -math.inf


def ranking_reliability(correct, splits: int = 50, n_resamples: int = 200, confidence_level: float = 0.95,
                         seed: int = 0) -> ReliabilityResult:
    """The reliability of the ranking of networks by test accuracy, from ``correct`` (networks x
    test images, 1 where a network labels an image correctly). The test images are split in
    random halves ``splits`` times; each split gives every network an accuracy on each half, and
    the Spearman correlation of the two rankings, averaged over splits, is the split-half
    reliability r, corrected to the full test set by Spearman-Brown, 2 r / (1 + r). Its interval
    is a percentile bootstrap (``n_resamples`` replicates, seeded), each a resample of the
    networks with ``splits // 10`` fresh random halvings of the images: with few networks that is the larger
    uncertainty. (Resampling the test images instead is biased upward: in the resampled world
    each network's observed accuracy, noise included, is its true one, so the noise counts as
    signal; ``tests/test_stats_atlas.py`` shows it.) The
    correlation of any measure with test accuracy is attenuated by the accuracy's unreliability:
    it cannot exceed about sqrt(reliability) (Spearman 1904), the ``ceiling`` reported."""
    correct = np.asarray(correct, dtype=float)
    if correct.ndim != 2 or correct.shape[0] < 4 or correct.shape[1] < 4:
        raise ValueError(f"correct must be networks x test images with at least 4 of each, got {correct.shape}")
    rng = np.random.default_rng(seed)
    r = _split_half(correct, splits, rng)
    reliability = _spearman_brown(r)
    boot = []
    for _ in range(n_resamples):
        networks = rng.integers(0, correct.shape[0], correct.shape[0])
        boot.append(_spearman_brown(_split_half(correct, max(1, splits // 10), rng, networks)))
    tail = (1 - confidence_level) / 2 * 100
    low, high = np.nanpercentile(boot, [tail, 100 - tail]) if n_resamples else (math.nan, math.nan)
    return ReliabilityResult(split_half=r, reliability=float(reliability),
                             interval=ConfidenceInterval(float(low), float(high)),
                             ceiling=math.sqrt(max(reliability, 0.0)), splits=splits, n_resamples=n_resamples)


# ----------------------------------------------------------------------------- across environments

def _environment_means(frame, measure: str, target: str, axes: list[str]):
    missing = sorted({measure, target, *axes} - set(frame.columns))
    if missing:
        raise ValueError(f"columns {missing} are not in the table")
    if not axes:
        raise ValueError("give at least one hyperparameter axis")
    finite = frame[np.isfinite(frame[[measure, target]].astype(float)).all(axis=1)]
    return finite.groupby(list(axes))[[measure, target]].mean().reset_index()


def kendall_tau_a(x, y) -> float:
    """Kendall's tau-a: (concordant - discordant pairs) / (all pairs), ties counting zero, as in
    Jiang et al.'s eq. 3 (scipy's default, tau-b, rescales for ties)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2:
        return math.nan
    i, j = np.triu_indices(x.size, k=1)
    return float((np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])).mean())


def granulated_kendall(frame, measure: str, target: str, axes: list[str], sign: int = 1) -> dict:
    """Jiang et al. (2020), "Fantastic generalization measures", eq. 3-5, on environment means:
    the networks of each environment (one combination of the values of ``axes``) are averaged
    (networks with a non-finite measure or target left out), then for each axis i and each
    combination of the other axes' values, Kendall's tau-a between the measure and ``target``
    over the environments that differ in axis i only; psi_i is the mean of these over the
    combinations, and ``overall`` (Psi) the mean of psi_i over the axes that vary (an axis with
    one value has no psi_i: NaN). ``sign`` orients the result so that +1 means the measure ranks
    environments the way the claim says it should (sign=-1 for a measure claimed to fall as the
    target rises). Returns {axis: psi_i, ..., "overall": Psi}."""
    means = _environment_means(frame, measure, target, axes)
    result = {}
    for axis in axes:
        others = [a for a in axes if a != axis]
        groups = means.groupby(others) if others else [((), means)]
        taus = [kendall_tau_a(group[measure], group[target]) for _, group in groups if len(group) >= 2]
        result[axis] = sign * float(np.mean(taus)) if taus else math.nan
    varying = [result[a] for a in axes if math.isfinite(result[a])]
    result["overall"] = float(np.mean(varying)) if varying else math.nan
    return result


def sign_errors(frame, measure: str, target: str, axes: list[str], sign: int = 1):
    """Dziugaite et al. (2020), "In search of robust measures of generalization": for every pair
    of environments that differ in exactly one of ``axes``, the sign error is the fraction of
    network pairs (one network from each environment, every combination) whose difference in
    the measure, times ``sign``, disagrees in sign with their difference in ``target`` (a tie in
    either counts one half). 0 = the measure always orders the two environments' networks
    correctly, 0.5 = a coin, 1 = always wrong. Networks with a non-finite measure or target are
    left out. Returns one row per pair: the axis, the two environments, and ``sign_error``; its
    maximum is the measure's worst case."""
    import pandas as pd

    missing = sorted({measure, target, *axes} - set(frame.columns))
    if missing:
        raise ValueError(f"columns {missing} are not in the table")
    finite = frame[np.isfinite(frame[[measure, target]].astype(float)).all(axis=1)]
    envs = {key if isinstance(key, tuple) else (key,): group for key, group in finite.groupby(list(axes))}
    keys = sorted(envs)
    rows = []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            differ = [axis for axis, u, v in zip(axes, a, b) if u != v]
            if len(differ) != 1:
                continue
            ma, ga = envs[a][measure].to_numpy(float), envs[a][target].to_numpy(float)
            mb, gb = envs[b][measure].to_numpy(float), envs[b][target].to_numpy(float)
            product = sign * np.sign(ma[:, None] - mb[None, :]) * np.sign(ga[:, None] - gb[None, :])
            error = float(np.where(product == 0, 0.5, product < 0).mean())
            rows.append({"axis": differ[0], "environment_a": a, "environment_b": b, "sign_error": error})
    return pd.DataFrame(rows, columns=["axis", "environment_a", "environment_b", "sign_error"])


def partial_table(frame, columns, target: str, given: str, n_resamples: int = 10000,
                  confidence_level: float = 0.95, seed: int = 0):
    """One row per measure: its Spearman rho with ``target`` and its partial Spearman
    correlation given ``given`` (``partial_spearman``: bootstrap interval, t and permutation
    p-values). Rows with a non-finite value are dropped and counted in ``n``."""
    import pandas as pd

    missing = sorted((set(columns) | {target, given}) - set(frame.columns))
    if missing:
        raise ValueError(f"columns {missing} are not in the table")
    rows = []
    for column in columns:
        triple = frame[[column, target, given]].astype(float)
        triple = triple[np.isfinite(triple).all(axis=1)]
        part = partial_spearman(triple[column], triple[target], triple[given], n_resamples, confidence_level, seed)
        rho = float(sps.spearmanr(triple[column], triple[target]).statistic) \
            if _varies(triple[column], triple[target]) else math.nan
        rows.append({"measure": column, "n": part.n, "rho": rho,
                     "partial_rho": part.statistic, "ci_low": part.interval.low, "ci_high": part.interval.high,
                     "p": part.pvalue, "p_perm": part.permutation_pvalue})
    return pd.DataFrame(rows)


def partial_rank_correlation(x, y, z) -> float:
    """The partial Spearman correlation of ``x`` and ``y`` given ``z`` alone, (r_xy - r_xz r_yz)
    / sqrt((1 - r_xz^2)(1 - r_yz^2)) on ranks, without the resampling of ``partial_spearman``:
    for pooling over many groups, which needs only the statistic and its count (NaN where a
    variable is constant)."""
    x, y = _pair(x, y)
    _, z = _pair(x, z)
    return float(_partial_rows(x[None], y[None], z[None])[0])


# ----------------------------------------------------------------------------- resampling a table

def resample(table, units, within=(), rng: np.random.Generator | None = None):
    """One hierarchical bootstrap replicate of ``table`` (a pandas frame, one row per network).

    Each group of the ``within`` columns (a dataset, a training-set size: strata that the design
    fixes) is kept. Inside it, stage 1 draws with replacement as many values of ``units[0]`` as
    the group has (an environment, a seed); inside each drawn copy, stage 2 draws as many values
    of ``units[1]`` as that copy has, and so on: with one unit the cluster bootstrap, with two
    the two-stage bootstrap that resamples at both stages (Davison & Hinkley 1997, sec. 3.8).
    Every row of a drawn unit comes along, so what the design pairs (the two regimes of one seed)
    stays paired. Each drawn copy is relabelled ``"<value>#<k>"`` (k: its place in the draw) so
    that two copies of one unit stay two units to whatever groups by that column afterwards."""
    import pandas as pd

    units, within = list(units), list(within)
    if not units:
        raise ValueError("name at least one column to resample (a unit: seed, environment, draw)")
    missing = sorted(set(units + within) - set(table.columns))
    if missing:
        raise ValueError(f"columns {missing} are not in the table; it has {list(table.columns)}")
    rng = np.random.default_rng() if rng is None else rng
    codes = [pd.factorize(table[u])[0] for u in units]
    values = [table[u].to_numpy() for u in units]
    positions, labels = [], [[] for _ in units]

    def draw(rows: np.ndarray, level: int, path: tuple):
        if level == len(units):
            positions.append(rows)
            for labelled, label in zip(labels, path):
                labelled.append(np.full(rows.size, label, dtype=object))
            return
        present = np.unique(codes[level][rows])
        for k, code in enumerate(rng.choice(present, size=present.size, replace=True)):
            chosen = rows[codes[level][rows] == code]
            draw(chosen, level + 1, path + (f"{values[level][chosen[0]]}#{k}",))

    groups = table.groupby(within, sort=False).indices.values() if within else [np.arange(len(table))]
    for rows in groups:
        draw(np.asarray(rows), 0, ())
    out = table.iloc[np.concatenate(positions)].reset_index(drop=True)
    for unit, labelled in zip(units, labels):
        out[unit] = np.concatenate(labelled)
    return out


def bootstrap_tables(tables, plan: dict, replicates: int, seed: int = 0):
    """``replicates`` bootstrap replicates of ``tables`` (a mapping name -> frame), each frame
    resampled by :func:`resample` with ``plan[name] = (units, within)``, independently of the
    others, from one seeded generator: the same seed gives the same replicates."""
    if replicates < 1:
        raise ValueError(f"replicates must be at least 1, got {replicates!r}")
    unknown = sorted(set(tables) ^ set(plan))
    if unknown:
        raise ValueError(f"give one resampling plan (units, within) per table; mismatched: {unknown}")
    rng = np.random.default_rng(seed)
    for _ in range(replicates):
        yield {name: resample(frame, *plan[name], rng=rng) for name, frame in tables.items()}


def cluster_bootstrap(clusters: list, statistic, replicates: int, seed: int = 0) -> np.ndarray:
    """``statistic`` over ``replicates`` cluster-bootstrap replicates: each draws
    ``len(clusters)`` clusters (any objects: one seed's values, say) with replacement and passes
    the drawn list to ``statistic``, which returns a number. The light form of :func:`resample`
    for a statistic computed many times inside another resampling."""
    if not clusters:
        raise ValueError("cluster_bootstrap needs at least one cluster")
    rng = np.random.default_rng(seed)
    k = len(clusters)
    return np.array([statistic([clusters[i] for i in rng.integers(0, k, k)]) for _ in range(replicates)], dtype=float)
