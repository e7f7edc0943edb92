"""Certificates in the results store: what defines one (``CertificateSpec``, keyed by its
network, its options and the version of its kind, ``VERSIONS``), computed once and kept, and a
table of them on any executor.

Part of ``flatlib.certificates``, which re-exports it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from flatlib.engine import data as fdata
from flatlib.engine import models
from flatlib.engine import train as ftrain
from flatlib.experiments import study
from flatlib.experiments.posteriors import (
    DELTA,
    DELTA_MC,
    OBJECTIVES,
    OPTIMIZERS,
    PMIN,
    PRIOR_SCALES,
    PRIORS,
    SIGMA_STARTS,
    STARTS,
    TRAIN_SIZE,
    CertificateError,
    Posterior,
    certify,
    check_split,
    estimate,
    optimise,
    state_tensors,
    stochastic_errors,
    weight_tensors,
)
from flatlib.infrastructure import executors, keys, store
from flatlib.infrastructure.output import progress as progress_bar
from flatlib.infrastructure.provenance import code_version
from flatlib.infrastructure.threads import one_thread

# The version of each kind of certificate (``flatlib.keys``), by its prior: bump a kind's with any
# change that can change its certificates (the optimisation, the bound, the Monte Carlo term, the
# grid of prior scales), and re-record the fingerprints.
# 2: the grid of prior scales reaches up to 1 (it stopped at 0.1).
VERSIONS = {"init": 2, "data": 2}
keys.register_kind("certificate", lambda kind: VERSIONS.get(kind))
# ----------------------------------------------------------------------------- in the store

@dataclass(frozen=True)
class CertificateSpec:
    """A certificate of the stored network ``network`` (a ``flatlib.train.TrainConfig``).

    ``prior="init"``: the prior is centred at the network's initial weights, the posterior's
    means start at its trained weights (``start="trained"``) or at the initial weights
    (``start="prior"``: the bound's optimisation trains the stochastic network from its
    initialisation), and the bound's sample is the network's own training subset.
    ``prior="data"``: the network, trained on its subset, is the prior's centre; the bound's
    sample is ``bound_n`` images (default: all) of the training split outside that subset, and
    the posterior starts at the prior. ``objective`` names the relaxation of the bound the
    posterior is optimised on (``OBJECTIVES``). ``passes`` Monte Carlo passes over the bound's
    sample give the certificate; ``test_passes`` over the test split estimate Q's test error."""

    network: ftrain.TrainConfig
    prior: str = "init"
    bound_n: int | None = None
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 250
    sigma_init: float | None = None
    pmin: float = PMIN
    optimizer: str = "sgd"
    momentum: float = 0.95
    sigma_lr: float | None = None
    priors_tried: int = 1
    delta: float = DELTA
    delta_mc: float = DELTA_MC
    passes: int = 1
    test_passes: int = 1
    seed: int = 0
    # Added after certificates were stored, each with the value that keeps the old behaviour as
    # neutral (``flatlib.keys.canonical``), so that no stored certificate is re-keyed.
    objective: str = field(default="quad", metadata={"neutral": "quad"})
    start: str = field(default="trained", metadata={"neutral": "trained"})

    def __post_init__(self):
        problems = []
        if self.prior not in PRIORS:
            problems.append(f"prior must be one of {PRIORS}, got {self.prior!r}")
        if self.network.arch != "mlp":
            problems.append(f"certificates take MLPs (arch 'mlp'), got arch {self.network.arch!r}")
        for name in ("delta", "delta_mc"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < 1):
                problems.append(f"{name} must lie in (0, 1), got {value!r}")
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0 or not (self.sigma_init is None
                                                                              or self.sigma_init > 0):
            problems.append("epochs >= 0, batch_size >= 1, lr > 0 and sigma_init > 0 (or None) are needed")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.objective not in OBJECTIVES:
            problems.append(f"objective must be one of {tuple(OBJECTIVES)}, got {self.objective!r}")
        if self.start not in STARTS:
            problems.append(f"start must be one of {STARTS}, got {self.start!r}")
        elif self.start == "prior" and self.prior != "init":
            problems.append("start='prior' is for prior='init': a data-dependent prior is centred at the trained "
                            "network, where its posterior starts already")
        if not (isinstance(self.priors_tried, int) and self.priors_tried >= 1):
            problems.append(f"priors_tried must be a positive integer, got {self.priors_tried!r}")
        if all(isinstance(getattr(self, k), (int, float)) for k in ("delta", "delta_mc")) and \
                self.delta + self.delta_mc >= 1:
            problems.append(f"delta + delta_mc must stay below 1, got {self.delta + self.delta_mc}")
        if self.bound_n is not None and (isinstance(self.bound_n, bool) or not isinstance(self.bound_n, int)):
            problems.append(f"bound_n must be an integer, got {self.bound_n!r}")
        if self.sigma_lr is not None and not self.sigma_lr > 0:
            problems.append(f"sigma_lr must be positive (or None), got {self.sigma_lr!r}")
        if self.passes < 1 or self.test_passes < 1:
            problems.append("passes and test_passes must be at least 1")
        if not 0 < self.pmin < 1:
            problems.append(f"pmin must lie in (0, 1), got {self.pmin!r}")
        if self.prior == "init" and self.bound_n is not None:
            problems.append("bound_n is for prior='data'; with prior='init' the bound uses the network's own "
                            "training subset")
        if self.prior == "data":
            full = TRAIN_SIZE
            held_out = full - (self.network.n or full)
            if held_out < 1:
                problems.append("prior='data' needs a network trained on part of the training split (n below "
                                f"{full}), so the bound has images the prior never saw")
            elif self.bound_n is not None and not 1 <= self.bound_n <= held_out:
                problems.append(f"bound_n must lie in [1, {held_out}] (the images outside the prior's subset), "
                                f"got {self.bound_n!r}")
        if problems:
            raise CertificateError("Invalid certificate: " + "; ".join(problems) + ".")

    def key(self) -> str:
        inputs = {"network": self.network.key(), **{k: v for k, v in keys.canonical(self).items() if k != "network"},
                  "grid": PRIOR_SCALES}
        version = keys.note(f"certificate:{self.prior}", VERSIONS[self.prior])
        return keys.digest("certificate", inputs, {self.prior: version}, keys.environment())


def samples(spec: CertificateSpec):
    """(prior's data, bound's sample) of ``spec`` as ``flatlib.data.Dataset``s; the prior's data
    is None for a prior at initialisation. Refuses overlapping ones (``check_split``)."""
    subset = fdata.load(spec.network.dataset, "train", n=spec.network.n, seed=spec.network.data_seed)
    if spec.prior == "init":
        return None, subset
    bound = fdata.complement(subset, n=spec.bound_n, seed=spec.seed)
    check_split(subset.indices, bound.indices)
    return subset, bound


def starting_scale(start, prior_means, data, n: int, delta: float = DELTA, candidates=SIGMA_STARTS,
                   seed: int = 0) -> float:
    """The isotropic posterior width to start the optimisation from: the candidate whose
    posterior N(start, s^2 I) has the lowest ``estimate``. Only a starting point: the posterior
    may depend on the data, the prior may not."""
    values = {sigma: estimate(Posterior(start, [torch.full_like(t, sigma) for t in start], prior_means), data, n,
                              delta, seed)["bound"] for sigma in candidates}
    return float(min(values, key=values.get))


def compute(spec: CertificateSpec, progress: bool = False) -> dict:
    """The certificate of ``spec``, computed here (on one thread) from the stored network
    (trained first if the store lacks it).

    The posterior starts at the means of ``CertificateSpec`` with the isotropic width
    ``sigma_init`` (None: ``starting_scale``) and is optimised for ``epochs`` epochs; both the
    starting and the optimised posterior are certified, each with delta_mc / 2 (a union bound
    over the two Monte Carlo estimates; the PAC-Bayes bound holds for every posterior at once), and
    the lower certificate is kept, so optimising never makes the certificate worse. Returns the
    ``Certificate``'s fields, which posterior gave it, the other's certificate, the stochastic and
    posterior-mean test errors, the network's own test error, the sizes and the history."""
    result = study.trained(spec.network)
    if result.diverged:
        raise CertificateError(f"network seed={spec.network.seed} diverged; it has no certificate")
    prior_data, bound = samples(spec)
    bound_data = (bound.images, bound.labels)
    test = study.dataset(spec.network.dataset, "test")
    with one_thread():
        model = result.model.float().cpu()
        trained_weights = weight_tensors(model)
        prior_means = state_tensors(model, result.initial_state) if spec.prior == "init" else trained_weights
        start = prior_means if spec.start == "prior" else trained_weights
        sigma = spec.sigma_init
        if sigma is None:
            sigma = starting_scale(start, prior_means, bound_data, len(bound), spec.delta, seed=spec.seed)
        settings = dict(init_means=start, lr=spec.lr, batch_size=spec.batch_size, sigma_init=sigma,
                        pmin=spec.pmin, delta=spec.delta, seed=spec.seed, optimizer=spec.optimizer,
                        momentum=spec.momentum, sigma_lr=spec.sigma_lr, objective=spec.objective)
        posteriors = {"start": optimise(model, prior_means, bound_data, epochs=0, **settings)}
        if spec.epochs > 0:
            posteriors["optimised"] = optimise(model, prior_means, bound_data, epochs=spec.epochs, progress=progress,
                                               **settings)
        delta_mc = spec.delta_mc / len(posteriors)
        candidates = {name: certify(q, bound_data, spec.passes, spec.delta, delta_mc, seed=spec.seed + 1,
                                    priors=spec.priors_tried) for name, q in posteriors.items()}
        chosen = min(candidates, key=lambda name: candidates[name].bound)
        posterior, cert = posteriors[chosen], candidates[chosen]
        wrong, draws = stochastic_errors(posterior, (test.images, test.labels), spec.test_passes, seed=spec.seed + 2)
        with torch.no_grad():
            mean_error = (posterior.mean_logits(test.images).argmax(1) != test.labels).double().mean().item()
            network_error = (models.predict(model, test.images).argmax(1) != test.labels).double().mean().item()
    return {**cert.as_dict(), "posterior": chosen, "sigma_start": sigma,
            "start_bound": candidates["start"].bound,
            "optimised_bound": candidates["optimised"].bound if "optimised" in candidates else None,
            "epoch": posterior.epoch, "stochastic_test_error": wrong / draws, "test_draws": draws,
            "mean_test_error": mean_error, "network_test_error": network_error,
            "confidence": 1 - spec.delta - spec.delta_mc, "priors_tried": spec.priors_tried,
            "prior_n": 0 if prior_data is None else len(prior_data), "bound_n": len(bound),
            "prior_indices_sha256": None if prior_data is None else _indices_hash(prior_data.indices),
            "bound_indices_sha256": _indices_hash(bound.indices),
            "history": posterior.history}


def _indices_hash(indices: torch.Tensor) -> str:
    """The SHA-256 of a sample's positions in the full split (sorted, int64): which images it is."""
    return hashlib.sha256(torch.sort(indices.long()).values.numpy().tobytes()).hexdigest()


def _key(spec: CertificateSpec) -> str:
    return f"certificates/{spec.key()}.json"


def _stored(spec: CertificateSpec) -> bool:
    entry = store.get_json(_key(spec))
    return isinstance(entry, dict) and "bound" in entry


def certificate(spec: CertificateSpec, progress: bool = False) -> dict:
    """``compute(spec)``, from the store if it is there, else computed and stored."""
    if _stored(spec):
        return {k: v for k, v in store.get_json(_key(spec)).items() if k != "code"}  # provenance, not a number
    entry = compute(spec, progress)
    store.put_json(_key(spec), {**entry, "code": code_version(__name__)})
    return entry


def _task(spec: CertificateSpec, store_root: str) -> dict:
    """One certificate as an executor's worker computes it: into the store at ``store_root``
    (``executors.task_environment``); returns ``executors.receipt()``."""
    with executors.task_environment(store_root):
        certificate(spec)
        return executors.receipt()


def certificate_table(specs, executor=None, progress: bool = True):
    """One row per spec (in order): ``certificate``'s numbers (the history left out), the
    missing ones computed where ``executor`` says (``flatlib.executors``) and read from the
    store."""
    import pandas as pd
    specs = list(specs)
    executor = executors.chosen(executor)
    executors.validate(executor)
    store.check_writable()
    missing = [s for s in dict.fromkeys(specs) if not _stored(s)]
    if missing and not executors.is_serial(executor):
        root = store.location()
        executors.run_checked(_task, [(s, root) for s in missing], executor, "certificates", progress)
        unseen = [s for s in missing if not _stored(s)]
        if unseen:
            raise executors.ExecutorError(
                f"{len(unseen)} certificate(s) are not in the store {store.location()} although their tasks on "
                f"{executors.describe(executor)} finished: the workers wrote to a store this process cannot see. "
                "Put $FLATLIB_CACHE on a filesystem every worker mounts at the same path, or in a bucket "
                "(s3://bucket/prefix) every worker reaches with the same endpoint and credentials.")
    rows = []
    for spec in progress_bar(specs, "certificates", progress):
        entry = certificate(spec)
        rows.append({k: v for k, v in entry.items() if k != "history"})
    return pd.DataFrame(rows)
