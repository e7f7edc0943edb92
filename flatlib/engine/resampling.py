"""Resampling a table by its units (networks, seeds, images), within strata, for the stability of
a verdict: one resampled table, a seeded series of them, and a cluster bootstrap of a statistic.

Part of ``flatlib.stats``, which re-exports it and whose ``VERSION`` versions its numbers.
"""
from __future__ import annotations

import numpy as np

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
