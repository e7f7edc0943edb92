"""Regularised minima (claim C6; Mason-Williams, Mason-Williams & Yannakoudakis 2025).

Five training regimes of one network, differing only in regularisation (``REGIMES``), trained
from the same seeds on the same training subset with one fixed epoch budget; then, per network,
what a user of the network would care about, on the full test split: accuracy, calibration
(expected calibration error, negative log-likelihood), accuracy under Gaussian input noise, and
functional consistency (agreement between two seeds of one regime). ``effects`` turns the
per-network table into paired differences against the baseline, which
``flatlib.claims.regularised`` judges by the rule fixed before the published run.

The behaviour of a network on the test split (``network_behaviour``) is kept in the store under
the network's key, its options, this module's ``VERSION`` and the environment class
(``flatlib.keys``), as the measures are, so a re-run computes nothing twice and a behaviour
change (with its bump) never serves a stale number.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from flatlib.engine import models, stats
from flatlib.engine import train as ftrain
from flatlib.experiments import study
from flatlib.infrastructure import executors, keys, store
from flatlib.infrastructure.output import progress as progress_bar
from flatlib.infrastructure.provenance import code_version
from flatlib.infrastructure.threads import one_thread

# The version of this module's computations (``flatlib.keys``): ``behaviour`` of a network, and
# the tables ``consistency``, ``effects`` and ``regime_means`` build from it.
VERSION = 1
# The name summaries record this VERSION under ("module:flatlib.regularised"), kept wherever the module lives.
VERSION_NAME = "flatlib.regularised"

REGIMES = ("baseline", "weight_decay", "augmentation", "sam", "all")
REGULARISED = REGIMES[1:]
# What each regime switches on (the others keep the baseline's zero / off).
SWITCHES = {"baseline": set(), "weight_decay": {"weight_decay"}, "augmentation": {"augment"},
            "sam": {"sam_rho"}, "all": {"weight_decay", "augment", "sam_rho"}}
# Architectures that take the 28x28 images the augmentation shifts (both of flatlib.models).
AUGMENTABLE = ("mlp", "cnn")
# Gaussian input noise, standard deviation in pixel units (images in [0, 1]); fixed before the
# published run. Robustness is the mean test accuracy over these strengths.
NOISE = (0.1, 0.2, 0.4)
ECE_BINS = 15


def check(regimes, weight_decay: float, sam_rho: float, arch: str) -> None:
    """Refuse, before any training, a regime list or regularisation strength the study cannot
    run, with one error that lists the valid choices."""
    problems = []
    unknown = [r for r in regimes if r not in REGIMES]
    if unknown:
        problems.append(f"unknown regime(s) {unknown}; choose from {list(REGIMES)}")
    if "baseline" not in regimes:
        problems.append("the regimes must include 'baseline': every effect is measured against it")
    if len(set(regimes)) != len(regimes):
        problems.append(f"regimes repeat: {list(regimes)}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0) or not (math.isfinite(sam_rho) and sam_rho >= 0):
        problems.append(f"weight_decay and sam_rho must be non-negative numbers, got {weight_decay!r} and {sam_rho!r}")
    uses = set().union(*(SWITCHES.get(r, set()) for r in regimes))
    if "weight_decay" in uses and weight_decay == 0:
        problems.append("a regime with weight decay needs weight_decay > 0 (at 0 it is the baseline)")
    if "sam_rho" in uses and sam_rho == 0:
        problems.append("a regime with SAM needs sam_rho > 0 (at 0 it is the baseline)")
    if "augment" in uses and arch not in AUGMENTABLE:
        augmented = sorted(r for r in regimes if "augment" in SWITCHES.get(r, ()))
        problems.append(f"augmentation shifts 28x28 images; arch {arch!r} cannot take it: use one of "
                        f"{list(AUGMENTABLE)} or drop the regimes {augmented}")
    if problems:
        raise ValueError("Invalid regularised-minima study: " + "; ".join(problems) + ".")


# Converged, the pilot's criterion (fixed with the 90-epoch budget, before the run it chose): the
# mean full-pass training accuracy over the last CONVERGED_WINDOW epochs within CONVERGED_TOLERANCE
# (a fraction: 0.01 is one point) of the mean over the CONVERGED_WINDOW epochs before them.
CONVERGED_WINDOW = 15
CONVERGED_TOLERANCE = 0.01


def converged(history: list[dict], window: int = CONVERGED_WINDOW, tolerance: float = CONVERGED_TOLERANCE) -> bool:
    """Whether a network's training history (``TrainResult.history``) meets the convergence
    criterion above; False with fewer than ``2 * window`` epochs of full-pass training accuracy."""
    acc = [epoch["train_acc"] for epoch in history if "train_acc" in epoch]
    if len(acc) < 2 * window:
        return False
    return abs(float(np.mean(acc[-window:])) - float(np.mean(acc[-2 * window:-window]))) <= tolerance


def converged_networks(configs) -> list[bool]:
    """``converged`` for each config's network, read from the store (train them first)."""
    results = [study.load_network(config) for config in configs]
    missing = [config.seed for config, result in zip(configs, results) if result is None]
    if missing:
        raise LookupError(f"{len(missing)} networks are not in the store (seeds {missing[:5]}...): train them first")
    return [converged(result.history) for result in results]


def config(regime: str, seed: int, *, dataset: str, n: int, arch: str, widths, lr: float, batch_size: int,
           epochs: int, weight_decay: float, sam_rho: float, momentum: float = 0.9) -> ftrain.TrainConfig:
    """The network of ``regime`` and ``seed``: SGD with momentum for exactly ``epochs`` epochs
    (no early stop, so every regime gets the same budget), on the class-stratified subset of
    ``n`` training images with data seed 0, shared by every network."""
    check([regime] if regime == "baseline" else ["baseline", regime], weight_decay, sam_rho, arch)
    on = SWITCHES[regime]
    return ftrain.TrainConfig(dataset=dataset, n=n, data_seed=0, arch=arch, widths=tuple(widths), optimizer="sgd",
                              lr=lr, momentum=momentum, batch_size=batch_size, epochs=epochs, target_train_acc=None,
                              weight_decay=weight_decay if "weight_decay" in on else 0.0,
                              sam_rho=sam_rho if "sam_rho" in on else 0.0, augment="augment" in on, seed=seed)


# ----------------------------------------------------------------------------- behaviour

def expected_calibration_error(probs, labels, bins: int = ECE_BINS) -> float:
    """ECE (Naeini et al. 2015; Guo et al. 2017): the confidence c = max_y p(y|x) of every
    prediction falls in one of ``bins`` equal-width bins ((m-1)/M, m/M]; ECE = sum over bins of
    (share of predictions in the bin) x |accuracy in the bin - mean confidence in the bin|."""
    probs = torch.as_tensor(probs, dtype=torch.float64)
    labels = torch.as_tensor(labels)
    if probs.ndim != 2 or len(probs) != len(labels) or len(labels) == 0:
        raise ValueError("probs must be (examples x classes) with one label per example")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins!r}")
    confidence, predicted = probs.max(1)
    correct = (predicted == labels.to(predicted.device)).double()
    which = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.double().mean().item() * abs(correct[mask].mean().item() - confidence[mask].mean().item())
    return total


def agreement(a, b) -> float:
    """The fraction of inputs on which two networks predict the same label."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"two prediction vectors of one length are needed, got {a.shape} and {b.shape}")
    return float((a == b).mean())


def noisy(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """``images`` plus Gaussian noise of standard deviation ``sigma`` (pixel units), clipped to
    the valid range [0, 1]; the noise is drawn from ``seed``, the same for every network."""
    gen = torch.Generator().manual_seed(seed)
    return (images + sigma * torch.randn(images.shape, generator=gen, dtype=images.dtype)).clamp(0, 1)


def behaviour(model, test_set, noise=NOISE, bins: int = ECE_BINS, seed: int = 0) -> dict:
    """What a user of ``model`` sees on ``test_set``: accuracy, negative log-likelihood (mean
    cross-entropy, nats), ECE with ``bins`` bins, accuracy under each noise strength
    (``acc_noise_<sigma>``) and their mean ``noise_acc``, and the predicted labels as a string
    of digits (for ``consistency``)."""
    x, y = test_set
    logits = models.predict(model, x).double().cpu()
    out = {"test_acc": (logits.argmax(1) == y).double().mean().item(),
           "nll": F.cross_entropy(logits, y).item(),
           "ece": expected_calibration_error(torch.softmax(logits, 1), y, bins)}
    accs = []
    for sigma in noise:
        acc = (models.predict(model, noisy(x, sigma, seed)).argmax(1).cpu() == y).double().mean().item()
        out[f"acc_noise_{sigma:g}"] = acc
        accs.append(acc)
    out["noise_acc"] = float(np.mean(accs)) if accs else math.nan
    out["predictions"] = "".join(str(int(v)) for v in logits.argmax(1))
    return out


def _behaviour_key(config: ftrain.TrainConfig, noise, bins: int, seed: int) -> str:
    inputs = {"network": config.key(), "noise": [float(s) for s in noise], "bins": bins, "seed": seed}
    return f"behaviour/{keys.digest('behaviour', inputs, {'behaviour': VERSION}, keys.environment())}.json"


def network_behaviour(config: ftrain.TrainConfig, noise=NOISE, bins: int = ECE_BINS, seed: int = 0) -> dict:
    """``behaviour`` of the stored network of ``config`` on the full test split, from the store
    or computed (on one thread) and stored. A network missing from the store is trained."""
    key = _behaviour_key(config, noise, bins, seed)
    entry = store.get_json(key)
    if isinstance(entry, dict) and "test_acc" in entry:
        return {k: v for k, v in entry.items() if k != "code"}  # provenance, not a number
    result = study.trained(config)
    if result.diverged:
        raise ValueError(f"network seed={config.seed} diverged; it has no behaviour to measure")
    with one_thread():
        entry = behaviour(result.model, study.dataset(config.dataset, "test"), noise, bins, seed)
    store.put_json(key, {**entry, "code": code_version(__name__)})
    return entry


def _behaviour_task(config, noise, bins, seed, store_root) -> dict:
    """One network's behaviour, as an executor's worker computes it: into the store at
    ``store_root``, one task at a time per process (training seeds torch's global generator and
    sets the process's thread count, so two tasks in threads of one process would disturb each
    other), under the same lock as ``flatlib.study``'s tasks."""
    with executors.task_environment(store_root):
        network_behaviour(config, noise, bins, seed)
        return executors.receipt()


def behaviour_table(configs, noise=NOISE, bins: int = ECE_BINS, seed: int = 0, executor=None, progress: bool = True):
    """One row of ``behaviour`` per config (in order), the networks' behaviour computed where
    ``executor`` says (``flatlib.executors``; missing entries only) and read from the store. As
    in ``flatlib.study.network_table``, an unknown executor or a store this process cannot
    write to is refused before any work, and an entry that a worker finished but this process
    cannot find in its store (the workers wrote to another one) is an error, not computed
    again here."""
    import pandas as pd
    configs = list(configs)
    executor = executors.chosen(executor)
    executors.validate(executor)
    store.check_writable()
    missing = [c for c in dict.fromkeys(configs) if store.get_json(_behaviour_key(c, noise, bins, seed)) is None]
    if missing and not executors.is_serial(executor):
        root = store.location()
        executors.run_checked(_behaviour_task, [(c, tuple(noise), bins, seed, root) for c in missing],
                              executor, "test-set behaviour", progress)
        for c in missing:
            if store.get_json(_behaviour_key(c, noise, bins, seed)) is None:
                raise study.not_shared(executor, study.NotInStore(
                    f"the test-set behaviour of network seed={c.seed} (key {c.key()})"))
    rows = [network_behaviour(c, noise, bins, seed) for c in progress_bar(configs, "test-set behaviour", progress)]
    return pd.DataFrame(rows)


def consistency(table, by=("dataset", "regime")):
    """Functional consistency: within each group of ``by``, the seeds in order are paired
    (first with second, third with fourth, ...) and each pair's ``agreement`` on the test set is
    one row; disjoint pairs keep the rows independent. Pairs are numbered from 0 within a group,
    so pair k of two regimes shares its seeds and can be compared paired. With an odd number of
    seeds the last one is left out of this metric."""
    import pandas as pd
    rows = []
    for cell, group in table.sort_values("seed", kind="stable").groupby(list(by), sort=False):
        preds = group["predictions"].tolist()
        seeds = group["seed"].tolist()
        for k in range(len(preds) // 2):
            a, b = preds[2 * k], preds[2 * k + 1]
            rows.append({**dict(zip(by, cell)), "pair": k, "seeds": f"{seeds[2 * k]},{seeds[2 * k + 1]}",
                         "consistency": agreement(list(a), list(b))})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- effects

def effects(table, metrics, baseline: str = "baseline", pair_on: str = "seed", by: str = "dataset",
            alpha: float = 0.05, cells: int | None = None):
    """Per group of ``by`` (the dataset) and regularised regime, and per metric, the mean
    paired difference regime minus ``baseline`` over the units ``pair_on`` (seeds, or the pairs
    of ``consistency``) with its Student-t interval at level 1 - alpha/C, where C is the number
    of (group, regime) cells compared (or ``cells``, for a part of a larger design): a Bonferroni
    correction over the cells, per metric. A unit missing in either regime is an error, not
    dropped."""
    import pandas as pd
    groups = list(table.groupby(by, sort=False))
    regimes = [r for r in table["regime"].unique() if r != baseline]
    if baseline not in set(table["regime"]):
        raise ValueError(f"the table has no {baseline!r} regime to compare with")
    cells = len(groups) * len(regimes) if cells is None else cells
    level = 1 - alpha / max(cells, 1)
    rows = []
    for key, group in groups:
        lacking = sorted({baseline, *regimes} - set(group["regime"]))
        if lacking:
            raise ValueError(f"{by}={key} has no networks of regime(s) {lacking}; every {by} needs every regime")
        wide = group.pivot(index=pair_on, columns="regime", values=list(metrics))
        for regime in regimes:
            for metric in metrics:
                a, b = wide[(metric, regime)].to_numpy(dtype=float), wide[(metric, baseline)].to_numpy(dtype=float)
                if np.isnan(a).any() or np.isnan(b).any():
                    raise ValueError(f"{metric}: {by}={key} has a {pair_on} missing in {regime!r} or {baseline!r}")
                d = stats.paired_difference(a, b, confidence_level=level)
                ci = d.confidence_interval()
                rows.append({by: key, "regime": regime, "metric": metric, "regularised": float(a.mean()),
                             "baseline": float(b.mean()), "difference": d.mean, "ci_low": ci.low,
                             "ci_high": ci.high, "p": d.pvalue, "units": d.n, "level": level})
    return pd.DataFrame(rows)


def converged_effects(table, metrics, flag: str = "converged", baseline: str = "baseline", by: str = "dataset",
                      alpha: float = 0.05):
    """``effects`` on the networks that converged (``table[flag]`` true), cell by cell: each
    regime against ``baseline`` on the seeds whose networks of both converged, at the
    Bonferroni level of the full design (every cell of ``table``), so that only the networks
    change, not the correction. A robustness check of the verdict on networks that met the
    convergence criterion; a cell with fewer than two such seeds is an error."""
    import pandas as pd
    seeds = _converged_seeds(table, flag, baseline, by)
    short = {cell: len(kept) for cell, kept in seeds.items() if len(kept) < 2}
    if short:
        raise ValueError("too few seeds whose regime and baseline networks both converged for a paired interval "
                         "(at least 2): " + ", ".join(f"{d}/{r} {k}" for (d, r), k in short.items()))
    parts = [effects(table[(table[by] == key) & table["regime"].isin([baseline, regime]) & table["seed"].isin(kept)],
                     metrics, baseline=baseline, by=by, alpha=alpha, cells=len(seeds))
             for (key, regime), kept in seeds.items()]
    return pd.concat(parts, ignore_index=True)


def converged_pairs(table, flag: str = "converged", baseline: str = "baseline", by: str = "dataset") -> dict:
    """Per cell ``(dataset, regime)``: how many seeds have both that regime's and the baseline's
    network converged (``table[flag]``), the units ``converged_effects`` pairs on."""
    return {cell: len(kept) for cell, kept in _converged_seeds(table, flag, baseline, by).items()}


def _converged_seeds(table, flag, baseline, by) -> dict:
    """Per cell ``(group, regime)``: the seeds whose network of that regime and of ``baseline`` both converged."""
    regimes = [r for r in table["regime"].unique() if r != baseline]
    seeds = {}
    for key, group in table.groupby(by, sort=False):
        done = group.pivot(index="seed", columns="regime", values=flag).astype(bool)
        for regime in regimes:
            seeds[(key, regime)] = list(done.index[done[regime] & done[baseline]])
    return seeds


def regime_means(table, metrics, by=("dataset", "regime"), confidence_level: float = 0.95):
    """Per group, every metric's mean with its 95 % Student-t interval over the networks (or
    pairs): long format, one row per group and metric."""
    import pandas as pd
    from scipy import stats as sps
    rows = []
    for cell, group in table.groupby(list(by), sort=False):
        for metric in metrics:
            v = group[metric].to_numpy(dtype=float)
            half = (float(sps.t.ppf(0.5 + confidence_level / 2, len(v) - 1)) * v.std(ddof=1) / math.sqrt(len(v))
                    if len(v) > 1 else math.nan)
            rows.append({**dict(zip(by, cell)), "metric": metric, "mean": float(v.mean()),
                         "ci_low": float(v.mean() - half), "ci_high": float(v.mean() + half), "n": len(v)})
    return pd.DataFrame(rows)
