"""Flattest interpolators of two-layer ReLU networks (claim C7; Vardhan, Taheri & Mazumdar 2026).

The setting of their theorem: inputs x ~ N(0, I_d), targets a sum of single-index models
y = sum_k g_k(<u_k, x>) + noise, and a two-layer *homogeneous* network
f(x) = sum_j a_j relu(<w_j, x>) (no biases) fitted by the squared loss
L = (1 / 2n) sum_i (f(x_i) - y_i)^2.

For this architecture the Hessian trace is exact in closed form. H = (1/n) sum_i grad f_i grad f_i^T
+ (1/n) sum_i r_i Hess f_i, and Hess f_i has a zero diagonal (relu'' = 0 almost everywhere), so

    tr H = (1/n) sum_i ||grad f(x_i)||^2 = sum_j (A_j + B_j),
    A_j = (1/n) sum_i relu(<w_j, x_i>)^2,   B_j = (a_j^2 / n) sum_i 1[<w_j, x_i> > 0] ||x_i||^2,

at every point, not only at an interpolator. The rescaling symmetry (a_j, w_j) -> (a_j / c_j, c_j w_j),
c_j > 0, leaves f unchanged and sends A_j -> c_j^2 A_j, B_j -> B_j / c_j^2, so the trace minimised
over the symmetry is sum_j 2 sqrt(A_j B_j), reached at c_j = (B_j / A_j)^(1/4).

Interpolators of five kinds are trained here (``KINDS``): three meant to generalise (gradient
descent from a small initialisation, SAM, and descent on the loss plus a trace penalty that
searches for the flattest interpolator directly) and two that cannot (fitting shuffled targets;
fitting the training set together with extra points labelled against the target). Each is kept
in ``flatlib.store`` under its full description and the source of this module.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn

from flatlib.engine import train as ftrain
from flatlib.infrastructure import keys, store
from flatlib.infrastructure.provenance import code_version
from flatlib.infrastructure.threads import one_thread

# The version of this module's computations (``flatlib.keys``): the task, the interpolators'
# training (every kind), the traces and their rescaling, the population loss.
VERSION = 1
# The name summaries record this VERSION under ("module:flatlib.interpolators"), kept wherever the module lives.
VERSION_NAME = "flatlib.interpolators"

LINKS = {
    "relu": lambda z: torch.relu(z),
    "tanh": torch.tanh,
    "square": lambda z: z ** 2 - 1,  # the second Hermite polynomial: mean 0 under N(0, 1)
    "cubic": lambda z: z ** 3 - 3 * z,  # the third
}
# The activations the theorem covers (positively homogeneous: s(cz) = c s(z) for c > 0) and why
# others are refused.
HOMOGENEOUS = ("relu",)
NOT_HOMOGENEOUS = {
    "tanh": "tanh(c z) is not c tanh(z): the network has no rescaling symmetry",
    "sigmoid": "sigmoid(c z) is not c sigmoid(z): the network has no rescaling symmetry",
    "gelu": "gelu(c z) is not c gelu(z): the network has no rescaling symmetry",
    "softplus": "softplus(c z) is not c softplus(z): the network has no rescaling symmetry",
}
GENERALISING = ("gd", "sam", "flattest")
NON_GENERALISING = ("shuffled", "adversarial")
KINDS = GENERALISING + NON_GENERALISING
# The approximation-error term of the target: a high-frequency link on the first index, which a
# small network approximates poorly; its weight is the task's ``approximation``.
def HARD_LINK(z):  # noqa: N802 (a constant of the task, named like LINKS)
    return torch.cos(3 * z)


# ----------------------------------------------------------------------------- data

@dataclasses.dataclass(frozen=True)
class Task:
    """A sum of single-index models in ``d`` dimensions: one unit direction per link in
    ``links`` (orthonormal, drawn from ``seed``), label noise of standard deviation ``noise``,
    and ``approximation`` times ``HARD_LINK`` on the first direction."""

    d: int = 10
    links: tuple[str, ...] = ("relu", "tanh")
    noise: float = 0.0
    approximation: float = 0.0
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "links", tuple(self.links))
        problems = []
        unknown = [g for g in self.links if g not in LINKS]
        if unknown:
            problems.append(f"unknown link(s) {unknown}; choose from {sorted(LINKS)}")
        if not 1 <= len(self.links) <= self.d:
            problems.append(f"need between 1 and d = {self.d} links (one index each), got {len(self.links)}")
        if self.noise < 0 or self.approximation < 0:
            problems.append("noise and approximation must be non-negative")
        if problems:
            raise ValueError("Invalid task: " + "; ".join(problems) + ".")

    def directions(self) -> torch.Tensor:
        """The index directions u_k, one orthonormal row per link."""
        gen = torch.Generator().manual_seed(self.seed)
        q, _ = torch.linalg.qr(torch.randn(self.d, len(self.links), generator=gen, dtype=torch.float64))
        return q.T.contiguous()

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """The noiseless target f*(x) = sum_k g_k(<u_k, x>) + approximation cos(3 <u_1, x>)."""
        z = x.double() @ self.directions().T
        out = sum(LINKS[g](z[:, k]) for k, g in enumerate(self.links))
        return out + self.approximation * HARD_LINK(z[:, 0])

    def sample(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` inputs x ~ N(0, I_d) and their noisy targets, drawn from ``seed``."""
        gen = torch.Generator().manual_seed(10_000 + seed)
        x = torch.randn(n, self.d, generator=gen, dtype=torch.float64)
        return x, self.target(x) + self.noise * torch.randn(n, generator=gen, dtype=torch.float64)


# ----------------------------------------------------------------------------- network

class TwoLayer(nn.Module):
    """f(x) = sum_j a_j relu(<w_j, x>): a two-layer ReLU network without biases, positively
    homogeneous in each unit's (a_j, w_j)."""

    def __init__(self, d: int, width: int, init_scale: float = 1e-2, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(init_scale * torch.randn(width, d, generator=gen, dtype=torch.float64) / math.sqrt(d))
        self.a = nn.Parameter(init_scale * torch.randn(width, generator=gen, dtype=torch.float64) / math.sqrt(width))

    def forward(self, x):
        return torch.relu(x @ self.w.T) @ self.a


def check(d: int, width: int, n: int, activation: str = "relu") -> None:
    """Refuse a network that cannot interpolate ``n`` points (fewer parameters than samples:
    width (d + 1) < n) with the smallest width that can, and a non-homogeneous activation
    with the reason."""
    if activation not in HOMOGENEOUS:
        why = NOT_HOMOGENEOUS.get(activation, "it is not positively homogeneous")
        raise ValueError(f"activation {activation!r} is refused: {why}; the theorem is about homogeneous "
                         f"networks, use one of {list(HOMOGENEOUS)}")
    if width < 1 or d < 1 or n < 1:
        raise ValueError(f"d, width and n must be positive, got d={d}, width={width}, n={n}")
    if width * (d + 1) < n:
        raise ValueError(f"a width-{width} network in d = {d} has {width * (d + 1)} parameters, fewer than the "
                         f"{n} samples it must interpolate; use width >= {math.ceil(n / (d + 1))}")


def loss(model, x, y) -> torch.Tensor:
    """The training loss (1 / 2n) sum_i (f(x_i) - y_i)^2."""
    return 0.5 * ((model(x) - y) ** 2).mean()


def unit_terms(model: TwoLayer, x) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit j, A_j = (1/n) sum_i relu(<w_j, x_i>)^2 and B_j = (a_j^2 / n) sum_i
    1[<w_j, x_i> > 0] ||x_i||^2: tr H = sum_j (A_j + B_j) (module docstring)."""
    pre = x @ model.w.T
    act = torch.relu(pre)
    A = (act ** 2).mean(0)
    B = model.a ** 2 * ((pre > 0).double() * (x ** 2).sum(1, keepdim=True)).mean(0)
    return A, B


def trace(model: TwoLayer, x) -> float:
    """The exact trace of the training-loss Hessian (any targets: the residual term has zero trace)."""
    with torch.no_grad():
        A, B = unit_terms(model, x)
        return float((A + B).sum())


def min_rescaled_trace(model: TwoLayer, x) -> float:
    """min over the rescalings c > 0 of the trace: sum_j 2 sqrt(A_j B_j)."""
    with torch.no_grad():
        A, B = unit_terms(model, x)
        return float(2 * torch.sqrt(A * B).sum())


def rescaled(model: TwoLayer, c) -> TwoLayer:
    """The same function with unit j rescaled: a_j / c_j, c_j w_j."""
    c = torch.as_tensor(c, dtype=torch.float64).reshape(-1)
    if not bool((c > 0).all()):
        raise ValueError("rescaling factors must be positive")
    new = TwoLayer(model.w.shape[1], model.w.shape[0])
    with torch.no_grad():
        new.w.copy_(model.w * c[:, None])
        new.a.copy_(model.a / c)
    return new


def flattest_rescaling(model: TwoLayer, x, limit: float = 1e6) -> torch.Tensor:
    """c_j = (B_j / A_j)^(1/4), the rescaling at which the trace is smallest (clamped to
    [1/limit, limit] for units with A_j or B_j zero, whose term vanishes only in the limit)."""
    with torch.no_grad():
        A, B = unit_terms(model, x)
        tiny = torch.finfo(torch.float64).tiny
        return ((B.clamp_min(tiny) / A.clamp_min(tiny)) ** 0.25).clamp(1 / limit, limit)


# ----------------------------------------------------------------------------- interpolators

@dataclasses.dataclass(frozen=True)
class Fit:
    """One interpolator: how it was trained (``kind``, its task, n, width, seed and optimiser
    settings)."""

    task: Task
    kind: str
    n: int = 100
    width: int = 100
    seed: int = 0
    lr: float = 0.1
    momentum: float = 0.9
    steps: int = 20000
    tol: float = 1e-6  # interpolated: training loss at most tol times the mean squared target
    init_scale: float = 1e-2
    sam_rho: float = 0.005
    trace_penalty: float = 0.01
    penalty_steps: int = 5000
    adversarial_points: int = 100

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; choose from {list(KINDS)}")
        check(self.task.d, self.width, self.n + (self.adversarial_points if self.kind == "adversarial" else 0))
        if self.sam_rho < 0 or self.trace_penalty < 0:
            raise ValueError("sam_rho and trace_penalty must be non-negative")

    def key(self) -> str:
        versions = {"interpolators": VERSION}
        return f"interpolators/{keys.digest('interpolator', keys.canonical(self), versions, keys.environment())}.pt"


def training_set(fit: Fit) -> tuple[torch.Tensor, torch.Tensor]:
    """The n points every kind of one task and seed shares: inputs and noisy targets."""
    return fit.task.sample(fit.n, fit.seed)


def _fitted_data(fit: Fit):
    """What the network of ``fit`` is trained on, and the targets it must interpolate on the
    training inputs (the shuffled kind interpolates its own, shuffled, targets)."""
    x, y = training_set(fit)
    gen = torch.Generator().manual_seed(20_000 + fit.seed)
    if fit.kind == "shuffled":
        y = y[torch.randperm(len(y), generator=gen)]
        return x, y, y
    if fit.kind == "adversarial":
        extra = torch.randn(fit.adversarial_points, fit.task.d, generator=gen, dtype=torch.float64)
        return torch.cat([x, extra]), torch.cat([y, -fit.task.target(extra)]), y
    return x, y, y


def train(fit: Fit) -> dict:
    """Train the interpolator ``fit`` describes by full-batch gradient descent with momentum
    (SAM for kind "sam"; for "flattest", first ``penalty_steps`` steps on the loss plus
    ``trace_penalty`` times the trace at each unit's best rescaling, sum_j 2 sqrt(A_j B_j), the
    penalty falling linearly to zero, then plain descent, and the result rescaled to its
    flattest point), until the training loss is at most ``tol`` times the mean squared target,
    for at most ``steps`` steps after any penalty phase. Returns the weights and the outcome;
    kept in the store."""
    cached = store.get_torch(fit.key())
    if cached is not None:
        return {k: v for k, v in cached.items() if k != "code"}  # provenance, not a result
    with one_thread():  # as flatlib.train: the same fit gives the same weights whatever the core count
        result = _train(fit)
    store.put_torch(fit.key(), {**result, "code": code_version(__name__)})
    return result


def _train(fit: Fit) -> dict:
    x_fit, y_fit, y_own = _fitted_data(fit)
    x, _ = training_set(fit)
    model = TwoLayer(fit.task.d, fit.width, fit.init_scale, seed=fit.seed)
    opt = torch.optim.SGD(model.parameters(), lr=fit.lr, momentum=fit.momentum)
    threshold = fit.tol * float((y_fit ** 2).mean())
    penalty_steps = fit.penalty_steps if fit.kind == "flattest" else 0
    status, step = "steps ran out", 0
    for step in range(1, penalty_steps + fit.steps + 1):
        opt.zero_grad()
        value = loss(model, x_fit, y_fit)
        if not torch.isfinite(value):
            status = "diverged"
            break
        if value.item() <= threshold and (fit.kind != "flattest" or step > penalty_steps):
            status = "interpolated"
            break
        if fit.kind == "flattest" and step <= penalty_steps:
            A, B = unit_terms(model, x_fit)  # the trace at the unit's best rescaling, 2 sqrt(A B)
            value = value + fit.trace_penalty * (1 - step / penalty_steps) * 2 * torch.sqrt(A * B + 1e-12).sum()
        value.backward()
        if fit.kind == "sam":
            ftrain.sam_step(model, lambda: loss(model, x_fit, y_fit), opt, fit.sam_rho)
        else:
            opt.step()
    with torch.no_grad():
        own_loss = float(loss(model, x, y_own))
    if fit.kind == "flattest":  # the same function at its flattest rescaling: the trace it was searched for
        model = rescaled(model, flattest_rescaling(model, x))
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "status": status,
            "steps": step, "train_loss": own_loss, "fitted_loss": float(loss(model, x_fit, y_fit).detach()),
            "interpolated": status == "interpolated"}


def network(fit: Fit, result: dict) -> TwoLayer:
    model = TwoLayer(fit.task.d, fit.width)
    model.load_state_dict(result["state"])
    return model


def population_loss(model: TwoLayer, task: Task, samples: int = 10000, seed: int = 999) -> float:
    """The mean squared error against the noiseless target on ``samples`` fresh inputs, halved as
    the training loss is (so the label noise does not enter)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, task.d, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        return float(0.5 * ((model(x) - task.target(x)) ** 2).mean())


def row(fit: Fit) -> dict:
    """One interpolator's row: outcome, population loss, its trace on the training inputs, the
    trace minimised over rescalings, and the population loss of the zero function (the scale
    against which a population loss is small)."""
    result = train(fit)
    model = network(fit, result)
    x, _ = training_set(fit)
    return {"kind": fit.kind, "seed": fit.seed, "noise": fit.task.noise, "approximation": fit.task.approximation,
            "generalising_kind": fit.kind in GENERALISING, "status": result["status"], "steps": result["steps"],
            "interpolated": result["interpolated"], "train_loss": result["train_loss"],
            "population_loss": population_loss(model, fit.task),
            "zero_function_loss": population_loss(TwoLayer(fit.task.d, 1, init_scale=0.0), fit.task),
            "trace": trace(model, x), "min_trace": min_rescaled_trace(model, x)}


def per_seed_separation(table, value: str = "min_trace") -> dict:
    """The separation counted per training set: the runs of one seed share their training
    inputs, so they are not independent. A seed separates when every generalising interpolator
    of it has a smaller ``value`` than every non-generalising one; under no link between
    flatness and kind, each seed would do so with probability at most 1/2, so the one-sided
    sign-test p-value is P(Binomial(seeds, 1/2) >= separating seeds) (scipy's binomtest).
    Seeds lacking either group are not counted."""
    from scipy import stats as sps
    separating = seeds = 0
    for _, runs in table.groupby("seed"):
        good, bad = runs.loc[runs["generalising_kind"], value], runs.loc[~runs["generalising_kind"], value]
        if len(good) and len(bad):
            seeds += 1
            separating += int(good.max() < bad.min())
    p = float(sps.binomtest(separating, seeds, 0.5, alternative="greater").pvalue) if seeds else math.nan
    return {"seeds": seeds, "separating": separating, "p": p}


def _auc(g: np.ndarray, o: np.ndarray) -> float:
    """P(g < o) over all pairs, a tie counting a half."""
    return float(((g[:, None] < o[None, :]) + 0.5 * (g[:, None] == o[None, :])).mean())


def separation(values_generalising, values_other) -> dict:
    """How well a flatness value separates the two groups: the AUC, P(a generalising
    interpolator is flatter than a non-generalising one) with ties counting a half, and the
    one-sided Mann-Whitney p-values for "generalising flatter" and for the reverse (scipy)."""
    from scipy import stats as sps
    g, o = np.asarray(values_generalising, dtype=float), np.asarray(values_other, dtype=float)
    if len(g) == 0 or len(o) == 0:
        return {"auc": math.nan, "p_flatter": math.nan, "p_sharper": math.nan, "n_generalising": len(g),
                "n_other": len(o)}
    auc = _auc(g, o)
    return {"auc": auc, "p_flatter": float(sps.mannwhitneyu(g, o, alternative="less").pvalue),
            "p_sharper": float(sps.mannwhitneyu(g, o, alternative="greater").pvalue),
            "n_generalising": len(g), "n_other": len(o)}


def auc_standard_error(table, value: str = "min_trace", replicates: int = 200, seed: int = 0) -> float:
    """The bootstrap standard error of ``separation``'s AUC of ``value`` (generalising kinds
    against the others) over the interpolators of ``table`` (one condition; ``seed`` and
    ``generalising_kind`` columns), resampling whole seeds (``stats.cluster_bootstrap``): the
    runs of one seed share their training inputs, so the seed is the unit. Replicates lacking
    either group are left out; NaN if fewer than two remain."""
    from flatlib.engine import stats

    seeds, kind = table["seed"].to_numpy(), table["generalising_kind"].to_numpy(bool)
    values = table[value].to_numpy(float)
    clusters = [(values[(seeds == s) & kind], values[(seeds == s) & ~kind]) for s in np.unique(seeds)]
    if not clusters:
        return math.nan

    def auc(drawn):
        good, bad = np.concatenate([g for g, _ in drawn]), np.concatenate([b for _, b in drawn])
        return _auc(good, bad) if good.size and bad.size else math.nan

    aucs = stats.cluster_bootstrap(clusters, auc, replicates, seed)
    aucs = aucs[np.isfinite(aucs)]
    return float(np.std(aucs, ddof=1)) if aucs.size >= 2 else math.nan


def conditions(table, replicates: int = 200, seed: int = 0) -> list[dict]:
    """The input of ``flatlib.claims.flattest_interpolators``: one dict per (``noise``,
    ``approximation``) condition of ``table`` (the interpolators that reached the tolerance, with
    ``generalising_kind``, ``trace``, ``min_trace``, ``kind`` and ``relative_loss``): the
    ``separation`` of the minimised trace with its ``auc_se`` (``auc_standard_error``,
    ``replicates`` replicates), the ``raw_attack`` (the generalising kinds' raw trace against
    the others' minimised trace) and the trace-penalised interpolators' median relative
    population loss ``flattest_relative_loss``."""
    out = []
    for (noise, approx), part in table.groupby(["noise", "approximation"]):
        good, bad = part[part["generalising_kind"]], part[~part["generalising_kind"]]
        sep = separation(good["min_trace"], bad["min_trace"])
        sep["auc_se"] = auc_standard_error(part, "min_trace", replicates, seed)
        flattest = part.loc[part["kind"] == "flattest", "relative_loss"]
        out.append({"noise": noise, "approximation": approx, "separation": sep,
                    "raw_attack": separation(good["trace"], bad["min_trace"]),
                    "flattest_relative_loss": float(flattest.median()) if len(flattest) else math.nan})
    return out
