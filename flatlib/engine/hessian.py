"""Curvature of the training loss, matrix-free: Hessian-vector products, top eigenvalues
(Lanczos), trace (Hutchinson, Hutch++) and spectral density (stochastic Lanczos quadrature).

The loss is the mean over ``data = (inputs, targets)`` of ``loss(model(x), y)`` (cross-entropy
in nats by default), and ``H`` its Hessian with respect to all trainable parameters, flattened
in ``model.parameters()`` order. ``H`` is never formed: everything multiplies by it.

Products are Pearlmutter's double backward, ``Hv = d/dw <g(w), v>``. When the data fit in
one batch the first-order graph ``g(w)`` is built once and reused by every product (the
fastest formulation measured on CPU, see ``benchmarks/README.md``); with ``batch_size`` set,
each product streams over mini-batches and memory stays bounded by one batch's graph.
The model's ``.grad`` fields and its train/eval mode are left as they were.

References: Pearlmutter (1994); Lanczos (1950), Golub & Van Loan sec. 10.1; Hutchinson (1990);
Meyer, Musco, Musco & Woodruff, "Hutch++" (2021); Ubaru, Chen & Saad, "Fast estimation of
tr(f(A)) via stochastic Lanczos quadrature" (2017); Ghorbani, Krishnan & Xiao (2019).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from flatlib.engine.hessian_diagonal import diagonal, mlp_diagonals, plain_mlp_layers  # noqa: F401 (re-exported)

# The version of this module's computations (``flatlib.keys``): Hessian-vector products, Lanczos
# eigenvalues, traces, the exact diagonal and spectral densities (the measures built on them carry
# versions of their own, bumped with this one when their values move). Bump it with any change that
# can change their numbers, and re-record the fingerprints. A change that moves numbers only by
# float rounding is not a behaviour change and keeps the version: the diagonal of a plain ReLU MLP
# by the batched algorithm (``mlp_diagonals``) moved the canaries' traces by at most 9e-8 relative,
# far inside the fingerprints' tolerance, as another CPU's rounding would.
VERSION = 1
# The name summaries record this VERSION under ("module:flatlib.hessian"), kept wherever the module lives.
VERSION_NAME = "flatlib.hessian"


class HessianOperator:
    """The Hessian of the mean training loss as a linear operator ``v -> H v``.

    ``num_hvps`` counts the products taken, so callers can report cost in HVPs.
    """

    def __init__(self, model: nn.Module, data, loss: Callable = F.cross_entropy,
                 batch_size: int | None = None):
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        first = self.params[0]
        self.device, self.dtype = first.device, first.dtype
        self.num_params = sum(p.numel() for p in self.params)
        inputs, targets = data
        self.inputs = inputs.to(self.device, self.dtype if inputs.is_floating_point() else inputs.dtype)
        self.targets = targets.to(self.device)
        self.n = len(self.targets)
        if self.n == 0:
            raise ValueError("data is empty")
        self.loss = loss
        self.batch_size = self.n if batch_size is None else int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.num_hvps = 0
        self._graph = None  # (flat gradient with graph) when the data fit in one batch

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_params, self.num_params)

    def _batches(self):
        for i in range(0, self.n, self.batch_size):
            yield self.inputs[i:i + self.batch_size], self.targets[i:i + self.batch_size]

    def _flat_grad_with_graph(self, x, y):
        was_training = self.model.training
        self.model.eval()
        try:
            # Weighted so that summing over batches gives the gradient of the mean loss.
            value = self.loss(self.model(x), y) * (len(y) / self.n)
        finally:
            self.model.train(was_training)
        grads = torch.autograd.grad(value, self.params, create_graph=True)
        return torch.cat([g.reshape(-1) for g in grads])

    def _hvp_from(self, flat_grad, v, retain):
        hv = torch.autograd.grad(flat_grad, self.params, grad_outputs=v, retain_graph=retain)
        return torch.cat([h.reshape(-1) for h in hv])

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat vector ``v`` of length ``num_params`` (any device; result on the model's)."""
        v = v.to(self.device, self.dtype).reshape(-1)
        if v.numel() != self.num_params:
            raise ValueError(f"v has {v.numel()} entries; the model has {self.num_params} parameters")
        self.num_hvps += 1
        with torch.enable_grad():
            if self.batch_size >= self.n:
                if self._graph is None:
                    self._graph = self._flat_grad_with_graph(self.inputs, self.targets)
                return self._hvp_from(self._graph, v, retain=True).detach()
            out = torch.zeros(self.num_params, device=self.device, dtype=self.dtype)
            for x, y in self._batches():
                out += self._hvp_from(self._flat_grad_with_graph(x, y), v, retain=False).detach()
            return out

    __matmul__ = matvec


def hvp(model: nn.Module, data, v: torch.Tensor, loss: Callable = F.cross_entropy,
        batch_size: int | None = None) -> torch.Tensor:
    """One Hessian-vector product ``H v`` of the mean loss over ``data``."""
    return HessianOperator(model, data, loss, batch_size).matvec(v)


class DenseOperator:
    """An explicit symmetric matrix behind the same interface as ``HessianOperator``, so the
    estimators below can be checked on matrices with a known spectrum."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix
        self.num_params = matrix.shape[0]
        self.device, self.dtype = matrix.device, matrix.dtype
        self.num_hvps = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.num_hvps += 1
        return self.matrix @ v.to(self.device, self.dtype)

    __matmul__ = matvec


def _operator(model_or_op, data, loss, batch_size):
    if isinstance(model_or_op, (HessianOperator, DenseOperator)):
        return model_or_op
    if data is None:
        raise ValueError("pass data=(inputs, targets) with a model")
    return HessianOperator(model_or_op, data, loss, batch_size)


def random_unit(n, gen, device, dtype):
    v = torch.randn(n, generator=gen, dtype=torch.float64).to(device, dtype)
    return v / v.norm()


def _lanczos(matvec, v0: torch.Tensor, steps: int, stop: Callable | None = None,
             restart: torch.Generator | None = None):
    """Lanczos with full reorthogonalisation. Returns (alphas, betas, Q) where Q's rows are the
    Lanczos vectors; ``stop(alphas, betas)`` may end the iteration early.

    When the Krylov space of ``v0`` is invariant under H (beta ~ 0), the run ends there, which
    is what quadrature needs: v0's spectral measure has only those nodes. With ``restart`` (a
    generator) it goes on instead from a random unit vector orthogonal to every earlier one,
    with coupling beta = 0 recorded, so T stays the projection Q^T H Q (block-diagonal) and
    eigenvalues that v0 cannot see, such as a second copy of a repeated one, are found."""
    n = v0.numel()
    steps = min(steps, n)
    # Grown by doubling: preallocating ``steps`` rows would zero-fill memory never used when
    # Lanczos converges early, which it usually does.
    basis = torch.empty(min(steps, 16), n, device=v0.device, dtype=v0.dtype)
    alphas, betas = [], []
    q = v0 / v0.norm()
    for j in range(steps):
        if j == len(basis):
            basis = torch.cat([basis, torch.empty(min(len(basis), steps - j), n, device=v0.device, dtype=v0.dtype)])
        basis[j] = q
        w = matvec(q)
        alpha = torch.dot(w, q)
        # Two passes of classical Gram-Schmidt against every earlier vector keep Q orthogonal
        # to working precision, which plain three-term recurrence does not.
        for _ in range(2):
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        alphas.append(alpha.item())
        beta = w.norm()
        invariant = beta.item() <= 1e-12 * max(1.0, abs(alpha.item()))
        # On a restart the residual w (of norm at most the threshold) is dropped, so the
        # coupling to the next vector is zero.
        betas.append(0.0 if invariant and restart is not None else beta.item())
        if stop is not None and stop(alphas, betas):
            break
        if not invariant:
            q = w / beta
        elif restart is None or j + 1 == steps:
            break
        else:
            q = random_unit(n, restart, v0.device, v0.dtype)
            for _ in range(2):
                q = q - basis[: j + 1].T @ (basis[: j + 1] @ q)
            q = q / q.norm()
    return alphas, betas, basis[: len(alphas)]


def tridiagonal(alphas, betas, dtype=torch.float64):
    m = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=dtype))
    if m > 1:
        off = torch.tensor(betas[: m - 1], dtype=dtype)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return t


@dataclass
class EigenResult:
    """The ``k`` largest eigenvalues (descending), their Ritz vectors, the residual norms
    ``||H u - theta u||`` bounding each value's error, and the cost in HVPs."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    num_hvps: int
    converged: bool


def top_eigenvalues(model, data=None, k: int = 1, tol: float = 1e-3, max_iter: int = 200, seed: int = 0,
                    loss: Callable = F.cross_entropy, batch_size: int | None = None) -> EigenResult:
    """The ``k`` largest (algebraic) eigenvalues of H by Lanczos with full reorthogonalisation.

    Stops when every one of the top ``k`` Ritz values ``theta`` has residual
    ``beta_m |s_m| <= tol * |theta|``; since some eigenvalue lies within the residual of each
    Ritz value, ``tol`` bounds the relative error. A Krylov space that becomes invariant before
    that (H has few distinct eigenvalues) is left by a random restart orthogonal to it, so
    repeated eigenvalues come out as often as they occur. ``model`` may also be a
    ``HessianOperator``.
    """
    op = _operator(model, data, loss, batch_size)
    if not 1 <= k <= op.num_params:
        raise ValueError(f"k must be between 1 and {op.num_params}, got {k}")
    if max_iter < k:
        raise ValueError(f"max_iter={max_iter} Lanczos steps give at most {max_iter} Ritz values, fewer than "
                         f"k={k}; raise max_iter to at least k")
    gen = torch.Generator().manual_seed(seed)
    start = op.num_hvps
    state = {}

    def converged(alphas, betas):
        m = len(alphas)
        if m < k:
            return False
        theta, s = torch.linalg.eigh(tridiagonal(alphas, betas))
        top = torch.arange(m - 1, m - 1 - k, -1)
        res = (betas[-1] * s[-1, top]).abs()
        state.update(theta=theta, s=s, top=top, res=res)
        return bool((res <= tol * theta[top].abs().clamp_min(1e-30)).all())

    v0 = random_unit(op.num_params, gen, op.device, op.dtype)
    alphas, betas, basis = _lanczos(op.matvec, v0, max_iter, stop=converged, restart=gen)
    if "theta" not in state or len(state["theta"]) != len(alphas):
        converged(alphas, betas)
    theta, s, top, res = state["theta"], state["s"], state["top"], state["res"]
    done = bool((res <= tol * theta[top].abs().clamp_min(1e-30)).all()) or len(alphas) == op.num_params
    vectors = (s[:, top].T.to(op.dtype).to(op.device) @ basis)
    return EigenResult(eigenvalues=theta[top].to(op.dtype), eigenvectors=vectors, residuals=res,
                       num_hvps=op.num_hvps - start, converged=done)


def power_iteration(model, data=None, tol: float = 1e-3, max_iter: int = 1000, seed: int = 0,
                    loss: Callable = F.cross_entropy, batch_size: int | None = None) -> EigenResult:
    """The eigenvalue of largest magnitude by plain power iteration, stopping when the Rayleigh
    quotient changes by less than ``tol`` relatively (PyHessian's rule); kept for comparison."""
    op = _operator(model, data, loss, batch_size)
    gen = torch.Generator().manual_seed(seed)
    start = op.num_hvps
    v = random_unit(op.num_params, gen, op.device, op.dtype)
    value, converged = None, False
    for _ in range(max_iter):
        hv = op.matvec(v)
        new = torch.dot(hv, v).item()
        v = hv / hv.norm()
        if value is not None and abs(new - value) <= tol * (abs(value) + 1e-30):
            value, converged = new, True
            break
        value = new
    residual = (op.matvec(v) - value * v).norm().item()
    return EigenResult(eigenvalues=torch.tensor([value], dtype=op.dtype), eigenvectors=v[None],
                       residuals=torch.tensor([residual]), num_hvps=op.num_hvps - start, converged=converged)


@dataclass
class TraceEstimate:
    """An unbiased estimate of tr(H) with its standard error (same units as H's entries, summed)."""

    value: float
    stderr: float
    num_hvps: int
    method: str


def _rademacher(n, count, gen, device, dtype):
    return (torch.randint(0, 2, (count, n), generator=gen) * 2 - 1).to(device, dtype)


def trace(model, data=None, probes: int = 30, method: str = "hutch++", seed: int = 0,
          loss: Callable = F.cross_entropy, batch_size: int | None = None) -> TraceEstimate:
    """tr(H) from ``probes`` Hessian-vector products.

    ``hutchinson``: mean of z^T H z over Rademacher z; stderr = sample std / sqrt(probes).
    ``hutch++``: a third of the products sketch the top of the spectrum, Q = orth(H S), whose
    part tr(Q^T H Q) is computed exactly (a second third); the last third estimates the rest,
    tr((I - QQ^T) H (I - QQ^T)), by Hutchinson. The stderr is that of the last term given Q.
    """
    if method not in ("hutch++", "hutchinson"):
        raise ValueError(f"method must be 'hutch++' or 'hutchinson', got {method!r}")
    op = _operator(model, data, loss, batch_size)
    gen = torch.Generator().manual_seed(seed)
    start = op.num_hvps
    n = op.num_params
    if method == "hutchinson":
        if probes < 2:
            raise ValueError("hutchinson needs at least 2 probes for a standard error")
        samples = torch.stack([torch.dot(z, op.matvec(z)) for z in _rademacher(n, probes, gen, op.device, op.dtype)])
        value, stderr = samples.mean().item(), (samples.std() / math.sqrt(probes)).item()
        return TraceEstimate(value, stderr, op.num_hvps - start, method)
    if probes < 6:
        raise ValueError("hutch++ needs at least 6 probes (a third each for sketch, exact part and residual)")
    sketch = probes // 3
    residual_probes = probes - 2 * sketch
    s = _rademacher(n, sketch, gen, op.device, op.dtype)
    hs = torch.stack([op.matvec(col) for col in s], dim=1)
    q, _ = torch.linalg.qr(hs)
    hq = torch.stack([op.matvec(col) for col in q.T], dim=1)
    exact_part = torch.trace(q.T @ hq).item()
    g = _rademacher(n, residual_probes, gen, op.device, op.dtype).T
    g = g - q @ (q.T @ g)
    hg = torch.stack([op.matvec(col) for col in g.T], dim=1)
    hg = hg - q @ (q.T @ hg)
    samples = (g * hg).sum(0)
    value = exact_part + samples.mean().item()
    stderr = (samples.std() / math.sqrt(residual_probes)).item() if residual_probes > 1 else float("nan")
    return TraceEstimate(value, stderr, op.num_hvps - start, method)


@dataclass
class SpectralDensity:
    """A smoothed eigenvalue density of H: ``density`` on ``grid`` integrates to one. ``nodes``
    and ``weights`` (one row per probe) are the raw quadrature, whose weights sum to one per row;
    a probe that stopped early is padded with zero-weight copies of its largest node."""

    grid: torch.Tensor
    density: torch.Tensor
    nodes: torch.Tensor
    weights: torch.Tensor
    num_hvps: int

    def moment(self, power: int = 1) -> tuple[float, float]:
        """The quadrature estimate of (1/P) tr(H^power) and its standard error over probes."""
        per_probe = (self.weights * self.nodes ** power).sum(1)
        return per_probe.mean().item(), (per_probe.std() / math.sqrt(len(per_probe))).item()


def spectral_density(model, data=None, probes: int = 5, steps: int = 60, grid_size: int = 1000,
                     width: float | None = None, seed: int = 0, loss: Callable = F.cross_entropy,
                     batch_size: int | None = None) -> SpectralDensity:
    """Stochastic Lanczos quadrature: ``steps`` Lanczos iterations from each of ``probes``
    random unit vectors give nodes theta_i and weights (e1^T s_i)^2; the density is their
    average convolved with a Gaussian of standard deviation ``width`` (default: 1 % of the
    spectrum's range), renormalised on the grid."""
    op = _operator(model, data, loss, batch_size)
    gen = torch.Generator().manual_seed(seed)
    start = op.num_hvps
    nodes, weights = [], []
    for _ in range(probes):
        alphas, betas, _ = _lanczos(op.matvec, random_unit(op.num_params, gen, op.device, op.dtype), steps)
        theta, s = torch.linalg.eigh(tridiagonal(alphas, betas))
        nodes.append(theta)
        weights.append(s[0] ** 2)
    # A probe whose Lanczos run stopped early (invariant subspace) is padded with zero-weight
    # copies of its own largest node: a padding value such as 0 would enter the grid's range.
    longest = max(len(n) for n in nodes)
    nodes = torch.stack([torch.cat([n, n[-1].repeat(longest - len(n))]) for n in nodes])
    weights = torch.stack([F.pad(w, (0, longest - len(w))) for w in weights])
    lo, hi = nodes.min().item(), nodes.max().item()
    sigma = width if width is not None else max(0.01 * (hi - lo), 1e-12)
    grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_size, dtype=torch.float64)
    kernel = torch.exp(-0.5 * ((grid[:, None] - nodes.reshape(-1)[None, :]) / sigma) ** 2)
    density = (kernel * weights.reshape(-1)[None, :]).sum(1) / probes
    density = density / torch.trapezoid(density, grid)
    return SpectralDensity(grid=grid, density=density, nodes=nodes, weights=weights, num_hvps=op.num_hvps - start)


