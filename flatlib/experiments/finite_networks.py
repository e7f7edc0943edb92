"""Networks on the finite domain of ``flatlib.finite``: the labels a trained network leaves open,
its exact weakness, and a table of networks with their measures beside the learners' scores.

Part of ``flatlib.finite``, which re-exports it and whose ``VERSION`` versions its numbers.
"""
from __future__ import annotations

import math

import numpy as np

from flatlib.experiments.finite_domain import Task, mean_hamming_radius

# ----------------------------------------------------------------------------- networks

def network_hypothesis(probs: np.ndarray, tau: float = 0.1) -> np.ndarray:
    """The labels a network leaves open at each input: a boolean inputs x labels array, True
    where p(y|x) >= ``tau`` (its top label always counts, as in ``weakness_open_labels``)."""
    probs = np.asarray(probs, dtype=float)
    open_ = probs >= tau
    open_[np.arange(len(probs)), probs.argmax(1)] = True
    return open_


def exact_log2_weakness(probs: np.ndarray, tau: float = 0.1, inputs: np.ndarray | None = None) -> float:
    """log2 of the number of full labellings of the domain compatible with the network's
    hypothesis (``network_hypothesis``): the sum over inputs (``inputs``, default all) of
    log2 of the number of labels it leaves open there."""
    open_ = network_hypothesis(probs, tau)
    if inputs is not None:
        open_ = open_[inputs]
    return float(np.log2(open_.sum(1)).sum())


def train_network(t: Task, widths=(32, 32), seed: int = 0, lr: float = 0.01, max_epochs: int = 3000,
                  target_loss: float = 0.01):
    """A ReLU MLP (``flatlib.models.mlp``, 2 outputs) trained on the training set of ``t`` by
    full-batch Adam until its training cross-entropy is at most ``target_loss`` nats or for
    ``max_epochs`` steps; ``seed`` sets the initialisation. On one CPU thread, so the same
    arguments give the same weights."""
    import torch
    import torch.nn.functional as F

    from flatlib.engine import models
    from flatlib.infrastructure.threads import one_thread

    with one_thread():
        torch.manual_seed(seed)
        model = models.mlp(tuple(widths), in_features=t.bits, num_classes=2)
        x = torch.as_tensor(t.x[t.train], dtype=torch.float32)
        y = torch.as_tensor(t.y[t.train], dtype=torch.long)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        for _ in range(max_epochs):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            if loss.item() <= target_loss:
                break
            loss.backward()
            opt.step()
        return model.eval()


# Measures of the registry that apply to a network on bit strings (the bounds are left out: at a
# few dozen training points they are vacuous).
NETWORK_MEASURES = ("weakness_open_labels", "weakness_input_volume", "top_eigenvalue", "hessian_trace",
                    "hessian_trace_min_rescaling", "epsilon_sharpness", "adaptive_sharpness", "relative_flatness",
                    "simplicity_description_length", "simplicity_l2")


def network_table(t: Task, networks: int, widths=(32, 32), tau: float = 0.1, probe_n: int = 32,
                  first_seed: int = 0, progress: bool = False):
    """One row per network (seeds ``first_seed, ...``) trained on ``t``: training and unseen
    accuracy, the exact log2 weakness of its hypothesis on the unseen inputs
    (``exact_log2_weakness`` at ``tau``, the literal reading) and per unseen input, the
    geometric reading ``hamming_radius`` (``mean_hamming_radius`` of its predicted labels from
    the training inputs), and every measure of
    ``NETWORK_MEASURES`` on its training set, ``weakness_open_labels`` on a fixed random sample
    of ``probe_n`` unseen inputs (the estimate the book uses on MNIST)."""
    import pandas as pd
    import torch

    from flatlib.engine import measures, models
    from flatlib.infrastructure.output import progress as progress_bar

    unseen = t.unseen
    rng = np.random.default_rng(0)
    probe_idx = np.sort(rng.choice(unseen, min(probe_n, len(unseen)), replace=False))
    x_all = torch.as_tensor(t.x, dtype=torch.float32)
    train = (x_all[t.train], torch.as_tensor(t.y[t.train], dtype=torch.long))
    rows = []
    for seed in progress_bar(range(first_seed, first_seed + networks), "networks", progress):
        model = train_network(t, widths, seed)
        probs = torch.softmax(models.predict(model, x_all).double(), 1).numpy()
        predicted = probs.argmax(1)
        row = {"seed": seed, "train_acc": float((predicted[t.train] == t.y[t.train]).mean()),
               "unseen_acc": float((predicted[unseen] == t.y[unseen]).mean()),
               "exact_log2_weakness": exact_log2_weakness(probs, tau, unseen),
               "hamming_radius": mean_hamming_radius(predicted, t.train)}
        row["exact_per_input"] = row["exact_log2_weakness"] / len(unseen)
        for name in NETWORK_MEASURES:
            options = {"probe": x_all[probe_idx], "tau": tau} if name == "weakness_open_labels" else {}
            row[name] = measures.MEASURES[name](model, train, **options)
        rows.append(row)
    return pd.DataFrame(rows)


def learner_summary(table, scores=("accuracy", "worst_case", "bennett", "bennett_strict", "log2_weakness",
                                   "hamming_radius")):
    """One row per (rule, learner) of a ``compare`` table (with a ``rule`` column): the mean of
    each score over draws and its 95 % Student-t half-width (``<score>_pm``)."""
    import pandas as pd
    from scipy import stats as sps

    rows = []
    for (rule, learner), part in table.groupby(["rule", "learner"], sort=False):
        row = {"rule": rule, "learner": learner, "draws": len(part)}
        for s in scores:
            values = part[s].to_numpy(float)
            half = float(sps.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))) \
                if len(values) > 1 else math.nan
            row[s], row[f"{s}_pm"] = float(values.mean()), half
        rows.append(row)
    return pd.DataFrame(rows)


def weakest_minus(table, score: str, other: str) -> dict:
    """The paired difference, over the draws of a ``compare`` table, of ``score`` between the
    weakest learner and ``other``: mean, 95 % Student-t interval and p (``stats.paired_difference``)."""
    from flatlib.engine import stats

    wide = table.pivot(index="draw", columns="learner", values=score)
    d = stats.paired_difference(wide["weakest"], wide[other])
    ci = d.confidence_interval()
    return {"mean": d.mean, "ci_low": float(ci.low), "ci_high": float(ci.high), "p": d.pvalue, "draws": d.n}
