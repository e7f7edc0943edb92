"""The PAC-Bayes posterior of a certificate and its bound: a diagonal Gaussian over the weights of
a ReLU network (``Posterior``), its KL to the prior with the best prior scale of a fixed grid,
the bounded cross-entropy, the bound's objectives (quad and classic), their optimisation, and
the certificate itself (a Monte Carlo error with its own confidence term, inverted through kl).

Part of ``flatlib.certificates``, which re-exports it; a kind of certificate is versioned in
``flatlib.certificates.VERSIONS``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flatlib.engine import pacbayes
from flatlib.infrastructure.output import progress as progress_bar

# The prior scales s_P the certificate may choose among, fixed before the certificates that use
# them: 10^(-j/2000) for j = 0..8000, from 1 down to 1e-4 in steps of 0.115 %. The union bound
# over them costs ln 8001 = 9.0 nats; the step is fine because a network has up to a million
# weights and the KL pays for a prior scale off the best one per weight: about P (step/2)^2, under
# half a nat for P = 10^6 (a grid of 13 values cost thousands of nats). History: the grid was
# 0.1 * 10^(-j/2000), j = 0..6000 (13 of those values before it), until exploratory certificates
# with a prior at initialisation (issue 34) chose its top, 0.1, where their widths wanted more; the
# grid is a superset of both earlier ones, so its union bound covers every choice made among them.
PRIOR_SCALES = tuple(10 ** (-j / 2000) for j in range(8001))
DELTA, DELTA_MC = 0.025, 0.01  # Perez-Ortiz et al.'s confidence levels
PMIN = 1e-4  # the bounded cross-entropy's floor on p(y|x)
# The isotropic widths ``starting_scale`` tries for the posterior's start: 10^(-k/4), 1 to 1e-4.
SIGMA_STARTS = tuple(10 ** (-k / 4) for k in range(17))
PRIORS = ("init", "data")
# Where the posterior's means start: at the trained network, or at the prior's centre (for a prior
# at initialisation the network's initial weights, so the optimisation of the bound is the
# training, as Perez-Ortiz et al. train from a data-free prior).
STARTS = ("trained", "prior")
OPTIMIZERS = ("sgd", "adam")
TRAIN_SIZE = 60000  # the training split of MNIST and of Fashion-MNIST (flatlib.data checks the files)


class CertificateError(ValueError):
    """A certificate that cannot be computed as asked, or would not be valid."""


# ----------------------------------------------------------------------------- the posterior

def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The Linear layers of ``model``, an MLP of ``flatlib.models.mlp``'s form (Flatten, then
    Linear layers with a ReLU between each two). The local reparameterisation is exact for it;
    anything else is refused."""
    modules = list(model.children()) if isinstance(model, nn.Sequential) else [model]
    if modules and isinstance(modules[0], nn.Flatten):
        modules = modules[1:]
    ok = bool(modules) and len(modules) % 2 == 1 and all(
        isinstance(m, nn.Linear) if i % 2 == 0 else isinstance(m, nn.ReLU) for i, m in enumerate(modules))
    if not ok or any(m.bias is None for m in modules[::2]):
        raise CertificateError("certificates take a ReLU MLP (flatlib.models.mlp: Flatten, Linear, ReLU, ..., "
                               f"Linear, with biases); got {type(model).__name__} with layers "
                               f"{[type(m).__name__ for m in modules]}")
    return list(modules[::2])


def weight_tensors(model: nn.Module) -> list[torch.Tensor]:
    """weight, bias of every Linear layer, in order, detached copies in float32."""
    return [t.detach().float().clone() for layer in linear_layers(model) for t in (layer.weight, layer.bias)]


def state_tensors(model: nn.Module, state: dict) -> list[torch.Tensor]:
    """The same tensors as ``weight_tensors`` read from a state dict of ``model`` (e.g. its initial one)."""
    names = {id(p): name for name, p in model.named_parameters()}
    out = []
    for layer in linear_layers(model):
        for p in (layer.weight, layer.bias):
            if names[id(p)] not in state:
                raise CertificateError(f"the state dict lacks {names[id(p)]!r}")
            out.append(state[names[id(p)]].detach().float().clone())
    return out


@dataclass
class Posterior:
    """Q = N(means, diag stds^2) over weight, bias of each layer, in order; the prior's centre
    ``prior_means`` (same shapes) and the grid of prior scales it was optimised under."""

    means: list[torch.Tensor]
    stds: list[torch.Tensor]
    prior_means: list[torch.Tensor]
    grid: tuple[float, ...] = PRIOR_SCALES
    history: list[dict] = field(default_factory=list)  # per epoch of ``optimise``
    epoch: int = 0  # the epoch of ``optimise`` this posterior is from (0: its start)

    def kl_by_scale(self, scales) -> "np.ndarray":
        """``kl`` at every prior scale of ``scales`` at once, from three sums: with
        A = sum_i (s_i^2 + (mu_i - p_i)^2), B = sum_i ln s_i and P parameters,
        KL(s_P) = P ln s_P - B + A / (2 s_P^2) - P / 2."""
        a = float(sum(((s.double() ** 2 + (m.double() - p.double()) ** 2).sum()
                       for m, s, p in zip(self.means, self.stds, self.prior_means))))
        b = float(sum(torch.log(s.double()).sum() for s in self.stds))
        count = sum(m.numel() for m in self.means)
        scales = np.asarray(scales, dtype=np.float64)
        return count * np.log(scales) - b + a / (2 * scales ** 2) - count / 2

    def mean_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of the deterministic network at the posterior mean."""
        return _mean_logits(self.means, x)


def gaussian_kl(means, stds, prior_means, prior_scale) -> torch.Tensor:
    """KL(N(means, diag stds^2) || N(prior_means, prior_scale^2 I)) in nats:
    sum_i ln(s_P / s_i) + (s_i^2 + (mu_i - p_i)^2) / (2 s_P^2) - 1/2. ``prior_scale`` may be a
    tensor (differentiable)."""
    s_p = torch.as_tensor(prior_scale, dtype=torch.float64)
    total = torch.zeros((), dtype=torch.float64)
    for m, s, p in zip(means, stds, prior_means):
        m, s, p = m.double(), s.double(), p.double()
        total = total + (torch.log(s_p / s) + (s ** 2 + (m - p) ** 2) / (2 * s_p ** 2) - 0.5).sum()
    return total


def best_prior_scale(means, stds, prior_means) -> torch.Tensor:
    """The s_P minimising ``gaussian_kl`` for fixed Q: s_P^2 = mean_i (s_i^2 + (mu_i - p_i)^2)."""
    total = sum(((s.double() ** 2 + (m.double() - p.double()) ** 2).sum() for m, s, p in zip(means, stds, prior_means)))
    count = sum(m.numel() for m in means)
    return torch.sqrt(total / count)


def _mean_logits(means, x):
    h = x.flatten(1)
    for k in range(0, len(means), 2):
        h = h @ means[k].T + means[k + 1]
        if k + 2 < len(means):
            h = torch.relu(h)
    return h


def stochastic_logits(means, stds, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Logits of every input of ``x`` under its own independent draw of the weights from
    N(means, diag stds^2), by the local reparameterisation (module docstring): per layer the
    pre-activations are drawn as mean h W_mu^T + b_mu plus sqrt(h^2 W_s^2^T + b_s^2) times a
    standard normal."""
    h = x.flatten(1)
    for k in range(0, len(means), 2):
        mean = h @ means[k].T + means[k + 1]
        var = (h * h) @ (stds[k] * stds[k]).T + stds[k + 1] * stds[k + 1]
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        h = mean + torch.sqrt(var) * noise
        if k + 2 < len(means):
            h = torch.relu(h)
    return h


def bounded_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, pmin: float = PMIN) -> torch.Tensor:
    """Mean of -ln max(p(y|x), pmin) / ln(1/pmin): the cross-entropy bounded to [0, 1], the
    differentiable stand-in for the 0-1 error (Perez-Ortiz et al. 2021)."""
    if not 0 < pmin < 1:
        raise CertificateError(f"pmin must lie in (0, 1), got {pmin!r}")
    logp = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    return (-torch.clamp(logp, min=math.log(pmin))).mean() / math.log(1 / pmin)


def complexity(kl, n: int, delta: float = DELTA, grid_size: int = len(PRIOR_SCALES)):
    """(KL + ln(2 sqrt(n) J / delta)) / n: the right-hand side of the kl bound (module docstring),
    with J the number of priors the union bound covers. Maurer's bound needs n >= 8."""
    check_delta(delta, "delta")
    if n < 8:
        raise CertificateError(f"Maurer's bound needs a sample of at least 8 examples, got {n}")
    return (kl + math.log(2 * math.sqrt(n) * grid_size / delta)) / n


KL_TOL = 1e-12


def kl_upper(q: float, c: float) -> float:
    """The largest p with kl(q || p) <= c, rounded up: ``pacbayes.kl_inverse`` bisects to within
    ``KL_TOL`` from below, so adding it makes the value an upper bound, as a certificate must be."""
    return min(1.0, pacbayes.kl_inverse(q, c, KL_TOL) + KL_TOL)


def quad_objective(error, kl, n: int, delta: float = DELTA, grid_size: int = len(PRIOR_SCALES)):
    """Perez-Ortiz et al.'s f_quad, (sqrt(e + c/2) + sqrt(c/2))^2 with c = ``complexity``: an upper
    bound on the kl bound's certificate for an error e in [0, 1], smooth in e and the KL."""
    half = complexity(kl, n, delta, grid_size) / 2
    return (torch.sqrt(error + half) + torch.sqrt(half)) ** 2


def classic_objective(error, kl, n: int, delta: float = DELTA, grid_size: int = len(PRIOR_SCALES)):
    """Perez-Ortiz et al.'s f_classic, e + sqrt(c/2) with c = ``complexity``: the kl bound relaxed
    by Pinsker's inequality (kl(q || p) >= 2 (p - q)^2), McAllester's form; looser than f_quad
    where e is small, and its gradient in the KL does not shrink with e."""
    return error + torch.sqrt(complexity(kl, n, delta, grid_size) / 2)


# The relaxations of the bound the posterior may be optimised on (``optimise``'s ``objective``).
OBJECTIVES = {"quad": quad_objective, "classic": classic_objective}


def check_delta(value: float, name: str) -> None:
    if not (isinstance(value, (int, float)) and 0 < value < 1):
        raise CertificateError(f"{name} is a probability of failure and must lie in (0, 1), got {value!r}")


def check_split(prior_indices: torch.Tensor, bound_indices: torch.Tensor, split: str = "train") -> None:
    """Refuse a prior that was learned on any example the bound is evaluated on: the bound holds
    only for a prior independent of its sample. Indices are positions in the full ``split``."""
    shared = set(map(int, prior_indices.tolist())) & set(map(int, bound_indices.tolist()))
    if shared:
        raise CertificateError(f"the prior was learned on {len(shared)} example(s) of the bound's sample (e.g. "
                               f"{split} index {min(shared)}); a PAC-Bayes prior must not depend on the data "
                               "the bound is evaluated on: learn it on a disjoint part of the split")


def optimise(model: nn.Module, prior_means: list[torch.Tensor], data, *, init_means=None, init_stds=None,
             epochs: int = 10,
             lr: float = 1e-3, batch_size: int = 250, sigma_init: float = 0.01, pmin: float = PMIN,
             delta: float = DELTA, grid: tuple[float, ...] = PRIOR_SCALES, seed: int = 0, optimizer: str = "sgd",
             momentum: float = 0.95, sigma_lr: float | None = None, objective: str = "quad",
             progress: bool = False) -> Posterior:
    """The posterior minimising ``objective`` (``OBJECTIVES``: f_quad or f_classic) on ``data``
    (the bound's sample, (x, y)), by
    SGD with ``momentum`` (or Adam) on (mu, rho) with s = softplus(rho), one draw per example per
    step (local reparameterisation), ``epochs`` passes in a seeded order; with ``sigma_lr`` the
    widths rho get their own Adam at that rate (Dziugaite & Roy adapt them per coordinate too,
    with RMSprop), which lets them grow in the directions the error does not need. The means start at
    ``init_means`` (default: ``model``'s weights), the standard deviations at ``init_stds``
    (default: ``sigma_init`` everywhere). ``epochs=0`` gives
    that starting posterior unchanged. Of the starting posterior and the one at the end of each
    epoch, the one with the lowest ``estimate`` is returned (its ``epoch`` says which; its
    ``history`` has every epoch's). Deterministic for a given ``seed`` on one thread."""
    linear_layers(model)
    check_delta(delta, "delta")
    if not grid or any(not (s > 0) for s in grid) or list(grid) != sorted(set(grid), reverse=True):
        raise CertificateError(f"the prior-scale grid must be distinct positive values, largest first; got {grid!r}")
    if epochs < 0 or batch_size < 1 or not lr > 0 or not sigma_init > 0:
        raise CertificateError("epochs >= 0, batch_size >= 1, lr > 0 and sigma_init > 0 are needed")
    x, y = data
    n = len(y)
    start = weight_tensors(model) if init_means is None else [t.detach().float().clone() for t in init_means]
    prior_means = [t.detach().float() for t in prior_means]
    if [t.shape for t in start] != [t.shape for t in prior_means]:
        raise CertificateError("the prior's centre and the posterior's means have different shapes")
    means = [t.clone().requires_grad_(True) for t in start]
    if init_stds is None:
        init_stds = [torch.full_like(t, sigma_init) for t in start]
    rhos = [torch.log(torch.expm1(s.detach().float().clamp_min(1e-8))).requires_grad_(True) for s in init_stds]
    if optimizer not in OPTIMIZERS:
        raise CertificateError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if objective not in OBJECTIVES:
        raise CertificateError(f"objective must be one of {tuple(OBJECTIVES)}, got {objective!r}")
    relaxation = OBJECTIVES[objective]
    together = means + rhos if sigma_lr is None else means
    opts = [torch.optim.SGD(together, lr=lr, momentum=momentum) if optimizer == "sgd" else
            torch.optim.Adam(together, lr=lr)]
    if sigma_lr is not None:  # the widths by Adam at their own rate (Dziugaite & Roy use RMSprop)
        opts.append(torch.optim.Adam(rhos, lr=sigma_lr))
    gen = torch.Generator().manual_seed(seed)
    def current():
        with torch.no_grad():
            return Posterior(means=[m.detach().clone() for m in means],
                             stds=[F.softplus(r).detach().clone() for r in rhos], prior_means=prior_means,
                             grid=tuple(grid))

    # The iterate with the lowest estimated bound is kept (the start included): the bound's
    # relaxation can lead the optimiser past the posterior it would certify best.
    best = current()
    best_value, best_epoch = estimate(best, data, n, delta, seed=seed)["bound"], 0
    history = []
    for epoch in progress_bar(range(1, epochs + 1), "posterior", progress, leave=False):
        order = torch.randperm(n, generator=gen)
        total, steps = 0.0, 0
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            stds = [F.softplus(r) for r in rhos]
            error = bounded_cross_entropy(stochastic_logits(means, stds, x[idx], gen), y[idx], pmin)
            scale = best_prior_scale(means, stds, prior_means).clamp(min(grid), max(grid))
            kl = gaussian_kl(means, stds, prior_means, scale)
            loss = relaxation(error.double(), kl, n, delta, len(grid))
            for opt in opts:
                opt.zero_grad()
            loss.backward()
            for opt in opts:
                opt.step()
            total, steps = total + loss.item(), steps + 1
        posterior = current()
        checked = estimate(posterior, data, n, delta, seed=seed)
        history.append({"epoch": epoch, "objective": total / steps, **checked})
        if checked["bound"] < best_value:
            best, best_value, best_epoch = posterior, checked["bound"], epoch
    best.history, best.epoch = history, best_epoch
    return best


def estimate(posterior: Posterior, data, n: int, delta: float = DELTA, seed: int = 0, limit: int = 5000) -> dict:
    """A quick estimate of ``posterior``'s certificate, to choose among posteriors (never to
    report): its error from one draw per example on at most ``limit`` examples of ``data``, the
    least KL over the grid and the kl bound for a sample of ``n``, without the Monte Carlo
    correction."""
    x, y = data
    wrong, draws = stochastic_errors(posterior, (x[:limit], y[:limit]), seed=seed + 7919)
    kl = float(posterior.kl_by_scale(posterior.grid).min())
    return {"error": wrong / draws, "kl": kl,
            "bound": kl_upper(wrong / draws, complexity(kl, n, delta, len(posterior.grid)))}


@torch.no_grad()
def stochastic_errors(posterior: Posterior, data, passes: int = 1, seed: int = 0,
                      batch_size: int = 4096) -> tuple[int, int]:
    """(errors, draws): ``passes`` passes over ``data``, every example under its own independent
    draw from the posterior; errors counts the misclassified draws."""
    if passes < 1:
        raise CertificateError(f"passes must be at least 1, got {passes!r}")
    x, y = data
    gen = torch.Generator().manual_seed(seed)
    wrong = 0
    for _ in range(passes):
        for i in range(0, len(y), batch_size):
            logits = stochastic_logits(posterior.means, posterior.stds, x[i:i + batch_size], gen)
            wrong += int((logits.argmax(1) != y[i:i + batch_size]).sum())
    return wrong, passes * len(y)


@dataclass(frozen=True)
class Certificate:
    bound: float  # the certificate: an upper bound on the expected test error of Q
    prior_scale: float  # the grid's s_P that gives it
    kl: float  # KL(Q || P) at that scale, nats
    error_mc: float  # Monte Carlo estimate of Q's error on the bound's sample
    error_upper: float  # its upper confidence bound (delta_mc)
    draws: int  # weight draws (one example each) behind error_mc
    n: int  # size of the bound's sample
    delta: float
    delta_mc: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def certify(posterior: Posterior, data, passes: int = 1, delta: float = DELTA, delta_mc: float = DELTA_MC,
            grid: tuple[float, ...] | None = None, seed: int = 0, priors: int = 1) -> Certificate:
    """The certificate of ``posterior`` on the bound's sample ``data`` (module docstring), valid
    with probability at least 1 - delta - delta_mc. ``grid`` may only repeat the grid the
    posterior was optimised under: a grid chosen after seeing the posterior is refused (the union
    bound would not cover the choice). ``priors``: how many prior centres were tried on this
    sample before this one was kept; the union bound then covers all of them (J x priors)."""
    if not (isinstance(priors, int) and priors >= 1):
        raise CertificateError(f"priors counts the prior centres tried and must be a positive integer, got {priors!r}")
    check_delta(delta, "delta")
    check_delta(delta_mc, "delta_mc")
    if delta + delta_mc >= 1:
        raise CertificateError(f"delta + delta_mc must stay below 1, got {delta + delta_mc}")
    if grid is not None and tuple(grid) != tuple(posterior.grid):
        raise CertificateError(f"the prior-scale grid is fixed before the posterior is optimised; this posterior "
                               f"was optimised under {posterior.grid}, so a certificate over {tuple(grid)} would "
                               "not be valid")
    wrong, draws = stochastic_errors(posterior, data, passes, seed)
    error_mc = wrong / draws
    error_upper = kl_upper(error_mc, math.log(1 / delta_mc) / draws)
    n, size = len(data[1]), len(posterior.grid)
    # the bound grows with the KL and nothing else depends on the scale: the best scale has the least KL
    kls = posterior.kl_by_scale(posterior.grid)
    best = int(np.argmin(kls))
    kl = float(kls[best])
    bound = kl_upper(error_upper, complexity(kl, n, delta, size * priors))
    return Certificate(bound=bound, prior_scale=float(posterior.grid[best]), kl=kl, error_mc=error_mc,
                       error_upper=error_upper, draws=draws, n=n, delta=delta, delta_mc=delta_mc)


def over_posteriors_tried(entry: dict, tries: int) -> float:
    """The certificate of ``entry`` (a ``certificate`` result) when ``tries`` posteriors were
    evaluated on the same sample before this one was reported: the PAC-Bayes term already holds for
    every posterior at once, but the Monte Carlo term of one chosen among them pays a union bound,
    kl^{-1}(kl^{-1}(e_mc, ln(tries / delta_mc) / m), c). ``tries=1`` gives the certificate itself."""
    if not (isinstance(tries, int) and tries >= 1):
        raise CertificateError(f"tries counts the posteriors evaluated and must be a positive integer, got {tries!r}")
    upper = kl_upper(entry["error_mc"], math.log(tries / entry["delta_mc"]) / entry["draws"])
    return kl_upper(upper, complexity(entry["kl"], entry["n"], entry["delta"],
                                      len(PRIOR_SCALES) * entry.get("priors_tried", 1)))
