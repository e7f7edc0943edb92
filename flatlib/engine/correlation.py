"""Rank correlations with the uncertainty a reader needs: Spearman and Kendall with their
asymptotic p-values (scipy), a paired percentile-bootstrap confidence interval, and a
permutation p-value; partial rank correlation; a tidy table of every measure against every
target.

Results look like ``scipy.stats`` results (``.statistic``, ``.pvalue``, and
``.confidence_interval()`` as a method), with ``.permutation_pvalue`` and ``.n`` added.
Resampling is seeded, so a chapter's numbers are reproducible to the last digit. Also here:
the equivalence test for "a correlation is negligible" (two one-sided tests on Fisher's z),
the weighted linear trend that the batch-sweep rule uses, and the one formatter of p-values.

Part of ``flatlib.stats``, which re-exports it and whose ``VERSION`` versions its numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import stats as sps

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


def paired_arrays(x, y) -> tuple[np.ndarray, np.ndarray]:
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
    x, y = paired_arrays(x, y)
    rows = _ROWS[_check_method(method)]
    return _bootstrap((x, y), rows, n_resamples, confidence_level, seed, _chunk_size(x.size, method))


def permutation_pvalue(x, y, method: str = "spearman", n_resamples: int = 10000, seed: int = 0) -> float:
    """Two-sided Monte Carlo permutation p-value of the correlation under independence:
    (1 + #{|r_perm| >= |r_obs|}) / (1 + n_resamples), which is never 0 and is a valid p-value
    (Phipson & Smyth 2010)."""
    x, y = paired_arrays(x, y)
    rows = _ROWS[_check_method(method)]
    return _permutation(x, y, rows, n_resamples, seed, _chunk_size(x.size, method))


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def varies(*columns) -> bool:
    """Whether every column takes at least two values (else no rank correlation is defined)."""
    return all(np.unique(np.asarray(c, dtype=float)).size >= 2 for c in columns)


def correlation(x, y, method: str = "spearman", n_resamples: int = 10000,
                confidence_level: float = 0.95, seed: int = 0) -> CorrelationResult:
    """Rank correlation of ``x`` and ``y`` with scipy's asymptotic p-value, a paired bootstrap
    interval and a permutation p-value, each from ``n_resamples`` seeded resamples. A constant
    ``x`` or ``y`` (a saturated bound, say) has no rank correlation: every number is NaN."""
    x, y = paired_arrays(x, y)
    _check_method(method)
    if not varies(x, y):
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


def partial_rows(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
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
    x, y = paired_arrays(x, y)
    _, z = paired_arrays(x, z)
    r = float(partial_rows(x[None], y[None], z[None])[0])
    n = x.size
    t = r * np.sqrt((n - 3) / max(1 - r * r, 1e-300))
    pvalue = float(2 * sps.t.sf(abs(t), n - 3))
    interval = _bootstrap((x, y, z), partial_rows, n_resamples, confidence_level,
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
                tau = sps.kendalltau(pair[column], pair[target]) if varies(pair[column], pair[target]) else None
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


# Significance levels a reader compares p-values with: a p-value is never rounded onto one.
_THRESHOLDS = (0.001, 0.01, 0.05, 0.1)


def format_pvalue(p: float, n_resamples: int | None = None) -> str:
    """A p-value as a reader should see it: two significant figures (more where two would round
    it onto a significance level: 0.0499, not 0.05), and a Monte Carlo
    p-value at its floor 1 / (n_resamples + 1) as a bound, never a value: the smallest power of
    ten 1e-k at or above the floor, "< 1e-4" (10,000 resamples) or, when the floor is that power
    itself, "≤ 1e-4" (9,999 resamples)."""
    if p is None or not math.isfinite(p):
        return "n/a"
    if n_resamples is not None and p <= 1 / (n_resamples + 1) * (1 + 1e-9):
        # in integers, so that a floor that is exactly a power of ten is recognised as one
        k = len(str(int(n_resamples) + 1)) - 1
        return f"{'≤' if int(n_resamples) + 1 == 10 ** k else '<'} 1e-{k}"
    shown, digits = f"{p:.2g}", 2
    while float(shown) in _THRESHOLDS and p != float(shown) and digits < 6:  # 0.0499 is not 0.05
        digits += 1
        shown = f"{p:.{digits}g}"
    return shown


def p_text(p: float, n_resamples: int | None = None) -> str:
    """A p-value for prose: "p = 0.015", or "p < 1e-4" (or "p ≤ 1e-4") at the Monte Carlo
    floor (:func:`format_pvalue`)."""
    shown = format_pvalue(p, n_resamples)
    return f"p {shown}" if shown[0] in "<≤" else f"p = {shown}"
