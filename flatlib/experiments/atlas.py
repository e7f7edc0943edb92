"""The robustness atlas: a grid of training recipes (environments), networks that differ only in
their seed within each, and the measures' correlations with generalisation within and across
environments.

An environment is one combination of the values of ``AXES``: optimiser, training-set size,
hidden width and batch size. Within an environment the design is the head-to-head's (same data,
same recipe, seeds differ); across environments it is Jiang et al.'s (2020) and Dziugaite et
al.'s (2020): networks that differ in their hyperparameters. The statistics themselves live in
``flatlib.stats`` (``correlation_table``, ``granulated_kendall``, ``sign_errors``) and the
verdict in ``flatlib.claims.atlas``; this module builds the grid and the tidy tables they read.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from flatlib.engine import stats
from flatlib.engine import train as ftrain

# The version of this module's computations (``flatlib.keys``): the atlas's grid and its granulated
# and pooled statistics. Bump it with any change that can change their numbers, and re-record the
# fingerprints.
VERSION = 1
# The name summaries record this VERSION under ("module:flatlib.atlas"), kept wherever the module lives.
VERSION_NAME = "flatlib.atlas"

AXES = ("optimizer", "train_size", "width", "batch_size")


@dataclass(frozen=True)
class Environment:
    """One training recipe of the grid."""

    optimizer: str
    train_size: int
    width: int
    batch_size: int

    @property
    def label(self) -> str:
        return f"{self.optimizer} n={self.train_size} w={self.width} b={self.batch_size}"

    def as_dict(self) -> dict:
        return {"optimizer": self.optimizer, "train_size": self.train_size, "width": self.width,
                "batch_size": self.batch_size}


def grid(optimizers, sizes, widths, batch_sizes) -> list[Environment]:
    """Every combination of the given values, in a fixed order. An empty axis, an unknown
    optimiser, a repeated value or a batch larger than a training set is refused here, with one
    error naming every problem, before anything trains."""
    axes = {"optimizers": list(optimizers), "sizes": list(sizes), "widths": list(widths),
            "batch_sizes": list(batch_sizes)}
    problems = [f"{name} is empty" for name, values in axes.items() if not values]
    problems += [f"{name} repeats a value: {values}" for name, values in axes.items() if len(set(values)) < len(values)]
    unknown = sorted(set(axes["optimizers"]) - set(ftrain.OPTIMIZERS))
    if unknown:
        problems.append(f"unknown optimizer(s) {unknown}; choose from {list(ftrain.OPTIMIZERS)}")
    if axes["sizes"] and axes["batch_sizes"] and max(axes["batch_sizes"]) > min(axes["sizes"]):
        problems.append(f"batch size {max(axes['batch_sizes'])} exceeds the smallest training set "
                        f"n={min(axes['sizes'])}")
    if problems:
        raise ValueError("Invalid atlas grid: " + "; ".join(problems) + ".")
    return [Environment(o, int(n), int(w), int(b)) for o, n, w, b in itertools.product(*axes.values())]


def configs(dataset: str, environment: Environment, seeds: int, lrs: dict, max_epochs: int,
            target_train_loss: float, patience: int | None, first_seed: int = 0, lr_decay: float | None = None,
            lr_decays: int = 2) -> list[ftrain.TrainConfig]:
    """The ``seeds`` networks of one environment: a (width, width) ReLU MLP on one
    class-stratified subset of n training images, trained with the optimiser at ``lrs[optimizer]``
    and stopped, as in the head-to-head, at the first epoch whose full-pass training loss is at
    most ``target_train_loss`` nats, after ``patience`` epochs without improvement, or at
    ``max_epochs``."""
    e = environment
    if e.optimizer not in lrs:
        raise ValueError(f"no learning rate given for {e.optimizer!r}; lrs has {sorted(lrs)}")
    return [ftrain.TrainConfig(dataset=dataset, n=e.train_size, widths=(e.width, e.width), optimizer=e.optimizer,
                               lr=lrs[e.optimizer], batch_size=e.batch_size, epochs=max_epochs,
                               target_train_acc=None, target_train_loss=target_train_loss, patience=patience,
                               seed=seed, lr_decay=lr_decay, lr_decays=lr_decays)
            for seed in range(first_seed, first_seed + seeds)]


def within(table, measures: list[str], target: str = "test_acc", n_resamples: int = 2000, seed: int = 0,
           given: str | None = "train_loss"):
    """One row per (dataset, environment, measure): ``stats.correlation_table`` of the measure
    with ``target`` over the environment's usable networks (status "ok"), with the
    environment's axes as columns and ``p`` set to the permutation p-value (the decision
    p-value, as in the head-to-head) beside the asymptotic ``p_asymptotic``. Where the table has
    the column ``given`` (the training loss at the stop, by default), ``rho_given_fit`` is the
    measure's partial Spearman correlation with ``target`` given it
    (``stats.partial_rank_correlation``; NaN where it is constant or fewer than four networks
    have all three values), the robustness check every correlation table carries."""
    import pandas as pd

    parts = []
    ok = table[table["status"] == "ok"]
    for (dataset, label), group in ok.groupby(["dataset", "environment"], sort=False):
        rows = stats.correlation_table(group, measures, [target], n_resamples=n_resamples, seed=seed,
                                       kendall_too=False)
        rows = rows.rename(columns={"p": "p_asymptotic"}).assign(p=rows["p_perm"])
        rows.insert(0, "dataset", dataset)
        rows.insert(1, "environment", label)
        for i, axis in enumerate(AXES):
            rows.insert(2 + i, axis, group[axis].iloc[0])
        if given is not None and given in group.columns:
            rows["rho_given_fit"] = [_partial(group, measure, target, given)[2] for measure in rows["measure"]]
        parts.append(rows)
    return pd.concat(parts, ignore_index=True)


def across(table, measures: list[str], signs: dict, target: str = "test_acc"):
    """One row per (dataset, measure): Jiang et al.'s granulated Kendall coefficient per axis and
    overall (on environment means), and Dziugaite et al.'s sign errors over pairs of
    environments that differ in one axis (mean, 90th percentile, worst case), each oriented by
    ``signs[measure]`` (+1 where the claim says larger means better generalisation) so that a
    good measure has positive Kendall coefficients and small sign errors."""
    import numpy as np
    import pandas as pd

    rows = []
    ok = table[table["status"] == "ok"]
    for dataset, group in ok.groupby("dataset", sort=False):
        for measure in measures:
            psi = stats.granulated_kendall(group, measure, target, list(AXES), sign=signs[measure])
            errors = stats.sign_errors(group, measure, target, list(AXES), sign=signs[measure])["sign_error"]
            some = len(errors) > 0  # environments left out can leave no pair that differs in one axis
            rows.append({"dataset": dataset, "measure": measure, **{f"psi_{a}": psi[a] for a in AXES},
                         "psi": psi["overall"], "sign_error_mean": float(errors.mean()) if some else np.nan,
                         "sign_error_p90": float(np.percentile(errors, 90)) if some else np.nan,
                         "sign_error_max": float(errors.max()) if some else np.nan, "pairs": int(len(errors))})
    return pd.DataFrame(rows)


def pooled(within):
    """One row per (dataset, measure) of a ``within`` table: the fixed-effect pooled rho over
    environments (``stats.pooled_correlation``) with its interval and p-value, Cochran's Q
    p-value, and the counts of environments where rho is positive, significantly positive and
    significantly negative (decision p-value below 0.05). Where ``within`` has ``rho_given_fit``,
    the same pooling of the partial correlations given the training loss (``given_fit_rho`` with
    ``given_fit_ci_low``/``_high``), on the same counts as the verdict's robustness check."""
    import numpy as np
    import pandas as pd

    rows = []
    for (dataset, measure), part in within.groupby(["dataset", "measure"], sort=False):
        result = stats.pooled_correlation(part["rho"], part["n"])
        significant = part["p"] < 0.05
        row = {"dataset": dataset, "measure": measure, "pooled_rho": result.statistic,
               "ci_low": result.interval.low, "ci_high": result.interval.high, "p": result.pvalue,
               "Q_p": result.q_pvalue, "prediction_low": result.prediction.low,
               "prediction_high": result.prediction.high, "positive": int((part["rho"] > 0).sum()),
               "significant_positive": int((significant & (part["rho"] > 0)).sum()),
               "significant_negative": int((significant & (part["rho"] < 0)).sum()),
               "environments": int(len(part))}
        if "rho_given_fit" in part.columns:
            finite = part[np.isfinite(part["rho_given_fit"].astype(float))]
            given = stats.pooled_correlation(finite["rho_given_fit"], finite["n"]) if len(finite) else None
            row.update({"given_fit_rho": given.statistic if given else np.nan,
                        "given_fit_ci_low": given.interval.low if given else np.nan,
                        "given_fit_ci_high": given.interval.high if given else np.nan})
        rows.append(row)
    return pd.DataFrame(rows)


def labelled(table, plan):
    """``table`` (rows in the order of ``plan``'s configs) with the dataset, the environment's
    label and its axes as the first columns; ``plan`` is a list of (dataset, environment, config)."""
    if len(table) != len(plan):
        raise ValueError(f"the table has {len(table)} rows for {len(plan)} planned networks")
    table = table.copy()
    table.insert(0, "dataset", [dataset for dataset, _, _ in plan])
    table.insert(1, "environment", [env.label for _, env, _ in plan])
    for i, axis in enumerate(AXES):
        table.insert(2 + i, axis, [env.as_dict()[axis] for _, env, _ in plan])
    return table


# An environment in which fewer than this share of the networks reached the common training-loss
# target is left out of the pooled estimates and named (fixed before the re-run at the new recipe).
MIN_AT_TARGET = 0.8


def at_target(table, minimum: float = MIN_AT_TARGET):
    """One row per (dataset, environment): its networks, how many stopped at the training-loss
    target, the share, and ``eligible`` (share >= ``minimum``). Only the networks at the target of
    eligible environments enter the correlations (``usable``)."""
    reached = table.assign(at_target=(table["status"] == "ok") & (table["stopped_by"] == "target_train_loss"))
    out = reached.groupby(["dataset", "environment"], sort=False).agg(
        networks=("at_target", "size"), at_target=("at_target", "sum")).reset_index()
    out["share"] = out["at_target"] / out["networks"]
    out["eligible"] = out["share"] >= minimum
    return out


def usable(table, minimum: float = MIN_AT_TARGET):
    """``(kept, environments)``: the networks at the training-loss target in the environments where
    at least ``minimum`` of the networks reached it, and ``at_target``'s table (which names the
    environments left out and counts what was left out everywhere)."""
    environments = at_target(table, minimum)
    eligible = set(map(tuple, environments.loc[environments["eligible"], ["dataset", "environment"]].to_numpy()))
    in_eligible = table.apply(lambda row: (row["dataset"], row["environment"]) in eligible, axis=1).astype(bool)
    keep = (table["status"] == "ok") & (table["stopped_by"] == "target_train_loss") & in_eligible
    return table[keep], environments


def fit(table):
    """One row per (dataset, environment): mean epochs, the worst training loss at the stop,
    mean and SD of test accuracy, how many networks reached the loss target, how many
    diverged, and ``networks``; an environment whose ``reached_target`` falls short of
    ``networks`` stopped some networks by patience or the epoch cap."""
    return table.groupby(["dataset", "environment"], sort=False).agg(
        epochs=("epochs", "mean"), worst_train_loss=("train_loss", "max"), test_acc=("test_acc", "mean"),
        test_acc_sd=("test_acc", "std"),
        reached_target=("stopped_by", lambda s: int((s == "target_train_loss").sum())),
        diverged=("status", lambda s: int((s != "ok").sum())), networks=("status", "size"))


def within_partial(table, measure: str, given: list[str], target: str = "test_acc"):
    """One row per (dataset, environment, margin measure ``given``): over the environment's
    usable networks (status "ok") with ``measure``, ``target`` and the given measure all finite,
    Spearman's ``rho`` of ``measure`` with ``target``, its ``partial_rho`` given the other
    measure (``stats.partial_rank_correlation``) and ``n``: the input of
    ``flatlib.claims.beyond_margins``. Column names are passed in, so any measure the table
    carries can be the control."""
    import pandas as pd

    missing = sorted({measure, target, *given, "dataset", "environment", "status"} - set(table.columns))
    if missing:
        raise ValueError(f"columns {missing} are not in the table")
    rows = []
    ok = table[table["status"] == "ok"]
    for (dataset, label), group in ok.groupby(["dataset", "environment"], sort=False):
        for control in given:
            n, rho, partial = _partial(group, measure, target, control)
            rows.append({"dataset": dataset, "environment": label, "measure": measure, "given": control,
                         "n": n, "rho": rho, "partial_rho": partial})
    return pd.DataFrame(rows, columns=["dataset", "environment", "measure", "given", "n", "rho", "partial_rho"])


def _partial(group, measure: str, target: str, control: str):
    """``(n, rho, partial_rho)`` over the rows of ``group`` where the three columns are finite:
    Spearman's rho of ``measure`` with ``target`` and its partial given ``control`` (NaN where
    fewer than four rows remain or a column is constant)."""
    import numpy as np
    from scipy import stats as sps

    part = group[[measure, target, control]].astype(float)
    part = part[np.isfinite(part).all(axis=1)]
    if len(part) < 4 or any(part[c].nunique() < 2 for c in part.columns):
        return len(part), np.nan, np.nan
    return (len(part), float(sps.spearmanr(part[measure], part[target]).statistic),
            stats.partial_rank_correlation(part[measure], part[target], part[control]))
