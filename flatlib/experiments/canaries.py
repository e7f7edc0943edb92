"""The canaries of ``flatlib.fingerprints``: the fixed inputs (a tiny network trained on 256 MNIST
images, seeded random tables, a 5-bit domain) and one canary per versioned computation, each
naming the versions it guards. Importing this module registers them; ``fingerprints`` imports it
when it computes them.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from flatlib.experiments.fingerprints import CANARIES, Canary, canary

# ------------------------------------------------------------------------------ fixed inputs

def _config(**changes):
    from flatlib.engine import train

    base = dict(dataset="mnist", n=256, widths=(16,), optimizer="sgd", lr=0.05, batch_size=32, epochs=4,
                target_train_acc=None, seed=0)
    return train.TrainConfig(**{**base, **changes})


@functools.cache
def canary_network():
    """The canary network: 784-16-10, SGD, 30 epochs on 256 MNIST images (fitted, so that the
    bounds are not saturated at 1 and move with their inputs)."""
    from flatlib.engine import train

    return train.train(_config(epochs=30))


def _data():
    from flatlib.engine import data

    return data.load("mnist", "train", n=256, seed=0)


def _norm(tensors) -> float:
    return math.sqrt(sum(float((t.detach().double() ** 2).sum()) for t in tensors))


def _trained(result) -> dict:
    """What a trained network's fingerprint holds: its outcome, its last recorded training loss,
    and the size of its weights and of their move from initialisation (which scales with the
    learning rate, so a 0.1 % change of it shows as 0.1 %)."""
    state = result.model.state_dict()
    last = result.history[-1] if result.history else {}
    out = {"status": result.status, "stopped_by": result.stopped_by, "epochs": len(result.history),
           "weight_norm": _norm(state.values()),
           "displacement": _norm(state[k] - result.initial_state[k] for k in state)}
    if "train_loss" in last:
        out["train_loss"] = last["train_loss"]
    if "restored_epoch" in last:
        out["restored_epoch"] = last["restored_epoch"]
    return out


# ------------------------------------------------------------------------------------ canaries

@canary("data", "module:flatlib.data")
def _data_canary():
    from flatlib.engine import data

    out = {}
    for name in ("mnist", "fashion_mnist"):
        subset = data.load(name, "train", n=100, seed=3)
        unseen = data.complement(subset, n=50, seed=1)
        out[f"{name}_indices"] = int((subset.indices.long() * torch.arange(1, 101)).sum())
        out[f"{name}_unseen_indices"] = int(unseen.indices.long().sum())
        out[f"{name}_pixels"] = float(subset.images.double().sum())
        out[f"{name}_labels"] = int(subset.labels.long().sum())
        out[f"{name}_subsample"] = int(data.subsample(subset, 20, seed=2).indices.long().sum())
    return out


@canary("models", "module:flatlib.models")
def _models_canary():
    from flatlib.engine import models

    out = {}
    for arch, widths in (("mlp", (16, 8)), ("cnn", (4, 8, 16))):
        torch.manual_seed(0)
        model = models.build(arch, widths)
        out[f"{arch}_weights"] = _norm(model.parameters())
        with torch.no_grad():
            out[f"{arch}_logits"] = float(model(torch.ones(2, 1, 28, 28)).double().sum())
    return out


_TRAINING = {  # name -> the config's changes from ``_config``: every optimiser, family and exit
    "sgd_epoch_cap": {},
    "sgd_target_acc": {"target_train_acc": 0.9, "epochs": 50},
    "adam_target_loss": {"optimizer": "adam", "lr": 0.003, "target_train_loss": 0.3, "epochs": 50},
    "sgd_patience": {"lr": 0.5, "target_train_loss": 1e-9, "patience": 2, "epochs": 60},
    "sgd_lr_decay": {"lr": 0.5, "target_train_loss": 1e-9, "patience": 2, "lr_decay": 0.1, "lr_decays": 1,
                     "epochs": 60},
    "diverged": {"lr": 200.0},
    "cnn": {"arch": "cnn", "widths": (4, 16), "epochs": 2},
    "augment": {"augment": True, "epochs": 2},
    "sam": {"sam_rho": 0.05, "epochs": 2},
    "weight_decay": {"weight_decay": 0.01, "epochs": 2},
}


@canary("training", "module:flatlib.train", "module:flatlib.models", "module:flatlib.data")
def _training_canary():
    from flatlib.engine import train

    out = {}
    for name, changes in _TRAINING.items():
        out.update({f"{name}.{k}": v for k, v in _trained(train.train(_config(**changes))).items()})
    return out


@canary("ensemble", "module:flatlib.ensemble", "module:flatlib.train", "module:flatlib.models", "module:flatlib.data")
def _ensemble_canary():
    from flatlib.engine import ensemble

    configs = [_config(seed=seed, target_train_loss=0.05, patience=2, epochs=8) for seed in (1, 2)]
    results = ensemble.train_ensemble(configs)
    out = {f"member{i}.{k}": v for i, r in enumerate(results) for k, v in _trained(r).items()}
    models = [canary_network().model, train_model(seed=3)]
    data = _data()
    x, y = data.images[:128], data.labels[:128]
    out["diagonals"] = float(ensemble.hessian_diagonals(models, (x, y)).double().sum())
    out["top_eigenvalues"] = [float(r.eigenvalues.reshape(-1)[0]) for r in ensemble.top_eigenvalues(models, (x, y))]
    out["perturbed_errors"] = ensemble.perturbed_errors(models, (x, y), 0.05, samples=4).sum(1).tolist()
    return out


def train_model(seed: int):
    from flatlib.engine import train

    return train.train(_config(seed=seed)).model


@canary("study_rows", "module:flatlib.study")
def _rows_canary():
    from flatlib.engine import data
    from flatlib.experiments import study

    result = canary_network()
    row = study.table_row(result.model, _data(), data.load("mnist", "test", n=1000), [], {})
    return {k: row[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")}


def _measure_canary(name: str):
    def compute():
        from flatlib.engine import measures

        measure = measures.lookup(name)
        extra = {"init": canary_network().initial_state} if measure.needs_init else {}
        return {"value": measure(canary_network().model, _data(), **extra)}
    return compute


def register_measures() -> None:
    from flatlib.engine import measures

    for name, measure in {**measures.MEASURES, **measures.EXTRAS}.items():
        if name in measures.MEASURES or measure.family == "diagnostic":  # a variant is its base's code
            CANARIES[f"measure:{name}"] = Canary(f"measure:{name}", (f"measure:{name}",), _measure_canary(name))


@canary("hessian", "module:flatlib.hessian")
def _hessian_canary():
    from flatlib.engine import hessian

    model, data = canary_network().model, _data()
    top = hessian.top_eigenvalues(model, data, k=2)
    density = hessian.spectral_density(model, data, probes=2, steps=12)
    return {"top2": [float(v) for v in top.eigenvalues],
            "power": float(hessian.power_iteration(model, data).eigenvalues[0]),
            "hutchinson": hessian.trace(model, data, probes=8, method="hutchinson").value,
            "hutch++": hessian.trace(model, data, probes=9, method="hutch++").value,
            "diagonal": float(hessian.diagonal(model, data).double().sum()),
            "density_mean": float((density.grid * density.density).sum() / density.density.sum()),
            "hvp": float(hessian.hvp(model, data, torch.ones(sum(p.numel() for p in model.parameters()))).sum())}


@canary("reparam", "module:flatlib.reparam")
def _reparam_canary():
    from flatlib.engine import reparam

    model = canary_network().model
    return {"alpha_scale": _norm(reparam.alpha_scale(model, 0, 10.0).parameters()),
            "neuron_scale": _norm(reparam.random_neuron_scale(model, seed=1).parameters()),
            "permute": float(next(reparam.random_permute(model, seed=1).parameters()).detach().double()[:, 0].sum())}


@canary("pacbayes", "module:flatlib.pacbayes")
def _pacbayes_canary():
    from flatlib.engine import pacbayes

    result = canary_network()
    bound = pacbayes.gaussian_bound(result.model, _data(), result.initial_state, samples=5)
    magnitude = pacbayes.gaussian_bound(result.model, _data(), result.initial_state, "magnitude", samples=5)
    return {"magnitude": [magnitude.bound, magnitude.sigma, magnitude.kl, magnitude.error_mc],
            "kl_inverse": pacbayes.kl_inverse(0.1, 0.5), "mcallester": pacbayes.mcallester(0.1, 20.0, 1000, 0.05),
            "bound": [bound.bound, bound.sigma, bound.kl, bound.error_mc],
            "per_sigma": [list(map(float, row)) for row in bound.per_sigma],
            "sharpness_sigma": pacbayes.sharpness_sigma(result.model, _data(), samples=3)}


@canary("stats", "module:flatlib.stats")
def _stats_canary():
    from flatlib.engine import stats

    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    z = y + rng.normal(size=30)
    rho = stats.spearman(x, y, n_resamples=199, seed=1)
    # weak given z, so that the permutation scheme shows (Freedman-Lane against Kennedy's)
    partial = stats.partial_spearman(x, z + 0.3 * rng.normal(size=30), z, n_resamples=999, seed=1)
    pooled = stats.pooled_correlation([0.3, 0.5, -0.1], [20, 30, 25])
    return {"spearman": [rho.statistic, rho.pvalue, rho.permutation_pvalue, *rho.confidence_interval()],
            "kendall": stats.kendall(x, y, n_resamples=199, seed=1).statistic,
            "partial": [partial.statistic, partial.pvalue, partial.permutation_pvalue, *partial.confidence_interval()],
            "pooled": [pooled.statistic, pooled.pvalue, pooled.q, pooled.tau2],
            "fisher_z": stats.fisher_z_test(0.3, 100, 0.5),
            "trend": stats.weighted_trend([1, 2, 3, 4], [0.5, 0.3, 0.2, 0.1], [0.1, 0.1, 0.05, 0.05]).slope}


@canary("certificates", "certificate:init", "certificate:data")
def _certificates_canary():
    from flatlib.experiments import certificates

    out = {}
    for prior, extra in (("init", {}), ("data", {"bound_n": 500})):
        spec = certificates.CertificateSpec(_config(), prior=prior, epochs=1, sigma_init=0.01, test_passes=1, **extra)
        entry = certificates.compute(spec)
        out.update({f"{prior}.{k}": entry[k] for k in ("bound", "kl", "error_mc", "prior_scale",
                                                       "stochastic_test_error")})
    return out


@canary("regularised", "module:flatlib.regularised")
def _regularised_canary():
    from flatlib.engine import data
    from flatlib.experiments import regularised

    test = data.load("mnist", "test", n=1000)
    entry = regularised.behaviour(canary_network().model, (test.images, test.labels))
    return {k: v for k, v in entry.items() if k != "predictions"} | {"predictions": entry["predictions"][:100]}


@canary("landscape", "module:flatlib.landscape")
def _landscape_canary():
    from flatlib.experiments import landscape

    result, data = canary_network(), _data()
    direction = landscape.random_direction(result.model, seed=1)
    line = landscape.slice_1d(result.model, data, direction, torch.linspace(-1, 1, 5))
    path = landscape.interpolate(result.model, result.initial_state, result.model.state_dict(), data,
                                 torch.linspace(0, 1, 3))
    return {"slice": [float(v) for v in line.loss], "path": [float(v) for v in path.loss]}


@canary("interpolators", "module:flatlib.interpolators")
def _interpolators_canary():
    from flatlib.experiments import interpolators

    task = interpolators.Task(d=4, links=("relu",))
    out = {}
    for kind in ("gd", "flattest"):
        fit = interpolators.Fit(task=task, kind=kind, n=12, width=16, steps=300, penalty_steps=50)
        row = interpolators.row(fit)
        out.update({f"{kind}.{k}": row[k] for k in ("train_loss", "steps", "trace", "min_trace", "test_loss")
                    if k in row})
    return out


@canary("finite", "module:flatlib.finite")
def _finite_canary():
    from flatlib.experiments import finite

    table = finite.compare(bits=5, rule="parity2", train_size=8, max_arity=2, draws=3, seed=0)
    numeric = table.select_dtypes("number")
    return {"columns": sorted(numeric.columns), "sums": [float(v) for v in numeric.sum()],
            "network": float(sum(p.detach().double().sum() for p in finite.train_network(
                finite.task(5, "parity2", 8), widths=(8,), max_epochs=50).parameters()))}


@canary("atlas", "module:flatlib.atlas")
def _atlas_canary():
    import pandas as pd

    from flatlib.experiments import atlas

    rng = np.random.default_rng(0)
    plan = [("mnist", env, None) for env in atlas.grid(["sgd", "adam"], [500, 1000], [16], [32]) for _ in range(6)]
    table = atlas.labelled(pd.DataFrame({"status": ["ok"] * len(plan), "test_acc": rng.uniform(0.8, 0.9, len(plan)),
                                         "m": rng.normal(size=len(plan))}), plan)
    table["m"] += 20 * table["test_acc"]
    within = atlas.within(table, ["m"], n_resamples=199)
    across = atlas.across(table, ["m"], {"m": 1})
    pooled = atlas.pooled(within)
    return {"within": within[["rho", "p"]].to_numpy().tolist(),
            "across": across.drop(columns=["dataset", "measure"]).to_numpy().tolist(),
            "pooled": pooled.drop(columns=["dataset", "measure"]).to_numpy().tolist()}


@canary("batchsize", "module:flatlib.batchsize")
def _batchsize_canary():
    import pandas as pd

    from flatlib.experiments import batchsize

    rng = np.random.default_rng(0)
    rows = [{"n": n, "seed": s, "regime": r, "gap": rng.normal(0.01 * (r == "large"), 0.005)}
            for n in (1000, 2000) for s in range(4) for r in batchsize.REGIMES]
    table = batchsize.regime_differences(pd.DataFrame(rows), "gap")
    return {"sizes": [batchsize.large_batch_size(n) for n in (1000, 20000, 60000)],
            "differences": table.to_numpy().tolist()}
