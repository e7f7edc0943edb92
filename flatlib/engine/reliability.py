"""How far a ranking of networks can be trusted: the split-half reliability of a ranking by test
images (Spearman-Brown corrected, with a bootstrap interval), and a measure's agreement with a
target across environments (granulated Kendall, sign errors, partial rank correlations).

Part of ``flatlib.stats``, which re-exports it and whose ``VERSION`` versions its numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from flatlib.engine.correlation import ConfidenceInterval, paired_arrays, partial_rows, partial_spearman, varies

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
            if varies(triple[column], triple[target]) else math.nan
        rows.append({"measure": column, "n": part.n, "rho": rho,
                     "partial_rho": part.statistic, "ci_low": part.interval.low, "ci_high": part.interval.high,
                     "p": part.pvalue, "p_perm": part.permutation_pvalue})
    return pd.DataFrame(rows)


def partial_rank_correlation(x, y, z) -> float:
    """The partial Spearman correlation of ``x`` and ``y`` given ``z`` alone, (r_xy - r_xz r_yz)
    / sqrt((1 - r_xz^2)(1 - r_yz^2)) on ranks, without the resampling of ``partial_spearman``:
    for pooling over many groups, which needs only the statistic and its count (NaN where a
    variable is constant)."""
    x, y = paired_arrays(x, y)
    _, z = paired_arrays(x, z)
    return float(partial_rows(x[None], y[None], z[None])[0])
