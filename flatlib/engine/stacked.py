"""Trained MLPs of one architecture measured on the same data as one stacked computation
(``stack``): every member's exact Hessian diagonal (``hessian_diagonals``), its top Hessian
eigenvalue by Lanczos runs side by side (``top_eigenvalues``) and the PAC-Bayes measures' Monte
Carlo draws (``perturbed_errors``), each equal to the loop's member by member up to rounding
(``tests/test_ensemble.py``).

Part of ``flatlib.ensemble``, which re-exports it: its numbers are versioned by that module's
``VERSION``; bump it there with any change here that moves them.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from flatlib.engine import hessian


class EnsembleError(ValueError):
    """Configs that cannot be trained as one ensemble, or models that cannot be stacked."""


@dataclasses.dataclass
class Stack:
    """The weights of M ReLU MLPs of one architecture (``flatlib.models.mlp``), stacked:
    ``weights[l]`` is (M, out, in) and ``biases[l]`` (M, out) for the l-th Linear layer. The
    stacked tensors are copies; the members are left as they are."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]

    @property
    def members(self) -> int:
        return len(self.weights[0])

    @property
    def num_params(self) -> int:
        """Parameters per member."""
        return sum(w[0].numel() + b[0].numel() for w, b in zip(self.weights, self.biases))

    def params(self) -> list[torch.Tensor]:
        """The stacked tensors in each member's ``parameters()`` order (weight, bias per layer)."""
        return [t for pair in zip(self.weights, self.biases) for t in pair]

    def flat(self, tensors) -> torch.Tensor:
        """Per-member tensors in ``params()`` order, flattened to (M, num_params)."""
        return torch.cat([t.reshape(self.members, -1) for t in tensors], dim=1)

    def unflat(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """The inverse of ``flat``: (K, num_params) to tensors in ``params()`` order, K members each."""
        shapes = [t.shape[1:] for t in self.params()]
        pieces = torch.split(flat, [shape.numel() for shape in shapes], dim=1)
        return [piece.reshape(len(flat), *shape) for piece, shape in zip(pieces, shapes)]

    def forward(self, x: torch.Tensor, params=None):
        """Logits (M, N, classes) of every member on the same inputs ``x`` (N, ...)."""
        params = self.params() if params is None else params
        a = x.reshape(len(x), -1)
        for i in range(0, len(params), 2):
            w, b = params[i], params[i + 1]
            if i == 0:  # the inputs are shared: one product with every member's first layer side by side
                z = (a @ w.flatten(0, 1).T).view(len(a), *w.shape[:2]).transpose(0, 1) + b[:, None, :]
            else:
                z = torch.baddbmm(b[:, None, :], a, w.transpose(1, 2))
            if i + 2 == len(params):
                return z
            a = z * (z > 0)  # ReLU, with PyTorch's zero gradient at 0


def stack(models) -> Stack:
    """Stack trained ``flatlib.models.mlp`` networks (``Flatten -> [Linear -> ReLU]* -> Linear``
    with biases, no BatchNorm) of one architecture, device and dtype. Anything else is refused:
    the loop (``flatlib.hessian``) measures it."""
    models = list(models)
    if not models:
        raise EnsembleError("stack needs at least one model")
    linears = [_linear_layers(model, k) for k, model in enumerate(models)]
    frozen = [k for k, model in enumerate(models) if not all(p.requires_grad for p in model.parameters())]
    if frozen:
        raise EnsembleError(f"models {frozen} have frozen parameters (requires_grad=False); flatlib.hessian "
                            "leaves them out of the Hessian and the stacked paths do not: unfreeze them")
    layouts = {k: [(tuple(p.shape), str(p.device), p.dtype) for p in model.parameters()]
               for k, model in enumerate(models)}
    distinct: dict[str, list[int]] = {}
    for k, layout in layouts.items():
        distinct.setdefault(str(layout), []).append(k)
    if len(distinct) > 1:
        raise EnsembleError("the models differ in architecture, device or dtype (shape, device, dtype of each "
                            "parameter): " + "; ".join(f"models {ks}: {v}" for v, ks in distinct.items()))
    layers = range(len(linears[0]))
    return Stack(weights=[torch.stack([ms[j].weight.detach() for ms in linears]) for j in layers],
                 biases=[torch.stack([ms[j].bias.detach() for ms in linears]) for j in layers])


def _linear_layers(model, k):
    layers = hessian.plain_mlp_layers(model)
    if layers is None:
        raise EnsembleError(f"model {k} is not a plain ReLU MLP (Flatten -> [Linear -> ReLU]* -> Linear with "
                            "biases, flatlib.models.mlp without BatchNorm): measure it with flatlib.hessian")
    return layers


def _prepare(models, data):
    """The stack, and ``data = (inputs, targets)`` on its device (inputs in its dtype), refused if empty."""
    st = models if isinstance(models, Stack) else stack(models)
    x, y = data
    w0 = st.weights[0]
    if len(y) == 0 or len(x) != len(y):
        raise ValueError(f"data must be (inputs, targets) of one positive length, got {len(x)} and {len(y)}")
    return st, x.to(w0.device, w0.dtype), y.to(w0.device)


def _positive(name, value):
    if int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@torch.no_grad()
def hessian_diagonals(models, data, batch_size: int | None = 1000) -> torch.Tensor:
    """Every member's exact Hessian diagonal of the mean training cross-entropy, (M, num_params)
    in ``parameters()`` order: row m is ``flatlib.hessian.diagonal(models[m], data, batch_size)``,
    computed by the same function (``hessian.mlp_diagonals``) for all members at once on the
    stacked weights (the batched products may sum in another order than single ones: equal up
    to rounding)."""
    st, inputs, _ = _prepare(models, data)
    batch_size = len(inputs) if batch_size is None else _positive("batch_size", batch_size)
    return hessian.mlp_diagonals(st.weights, st.biases, inputs, batch_size)


def top_eigenvalues(models, data, tol: float = 1e-3, max_iter: int = 200, seed: int = 0) -> list[hessian.EigenResult]:
    """Every member's largest Hessian eigenvalue of the mean training cross-entropy, as
    ``flatlib.hessian.top_eigenvalues(models[m], data, k=1, tol=tol, max_iter=max_iter,
    seed=seed)`` gives it: the same start vector, Lanczos with full reorthogonalisation, and the
    same stopping rule (residual at most ``tol`` times the Ritz value), run for all members side
    by side. Each step takes one double backward through the stacked graph of the members still
    running; when some stop, the graph is rebuilt for the rest. One ``EigenResult`` per member."""
    st, x, y = _prepare(models, data)
    w0 = st.weights[0]
    size = st.num_params
    steps = min(_positive("max_iter", max_iter), size)
    v0 = hessian.random_unit(size, torch.Generator().manual_seed(seed), w0.device, w0.dtype)
    runs = {m: _LanczosRun(v0, steps) for m in range(st.members)}
    results: list[hessian.EigenResult | None] = [None] * st.members
    while runs:
        active = list(runs)
        matvec = _hvp(Stack([w[active] for w in st.weights], [b[active] for b in st.biases]), x, y)
        while len(runs) == len(active):
            products = matvec(torch.stack([runs[m].q for m in active]))
            for row, m in enumerate(active):
                run = runs[m]
                run.step(products[row])
                done = _ritz(run.alphas, run.betas, tol)
                if done[0] or run.invariant() or len(run.alphas) == steps:
                    results[m] = _eigen_result(done, run.basis, size)
                    del runs[m]
    return results


def _hvp(st: Stack, x, y):
    """``V -> (H_m v_m)_m`` for the members of ``st``, the first-order graph built once."""
    params = [t.clone().requires_grad_(True) for t in st.params()]
    with torch.enable_grad():
        logits = st.forward(x, params)
        loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(st.members), reduction="sum") / len(y)  # sum of means
        grad = st.flat(torch.autograd.grad(loss, params, create_graph=True))

    def matvec(v):
        with torch.enable_grad():
            return st.flat(torch.autograd.grad(grad, params, grad_outputs=v, retain_graph=True)).detach()
    return matvec


class _LanczosRun:
    """One member's Lanczos iteration, advanced one product at a time: the steps of
    ``hessian._lanczos`` (full reorthogonalisation by classical Gram-Schmidt twice, the basis grown
    by doubling), so that the products of many members can be taken together."""

    def __init__(self, v0, steps):
        self.q = v0 / v0.norm()
        self.steps = steps
        self.buffer = torch.empty(min(steps, 16), len(v0), device=v0.device, dtype=v0.dtype)
        self.alphas, self.betas = [], []

    @property
    def basis(self):
        return self.buffer[: len(self.alphas)]

    def step(self, w):
        j = len(self.alphas)
        if j == len(self.buffer):
            grow = torch.empty(min(len(self.buffer), self.steps - j), self.buffer.shape[1],
                               device=self.buffer.device, dtype=self.buffer.dtype)
            self.buffer = torch.cat([self.buffer, grow])
        self.buffer[j] = self.q
        alpha = torch.dot(w, self.q)
        past = self.buffer[: j + 1]
        for _ in range(2):
            w = w - past.T @ (past @ w)
        beta = w.norm()
        self.alphas.append(alpha.item())
        self.betas.append(beta.item())
        if not self.invariant():
            self.q = w / beta

    def invariant(self) -> bool:
        return self.betas[-1] <= 1e-12 * max(1.0, abs(self.alphas[-1]))


def _ritz(alphas, betas, tol):
    """(converged, theta, s, residual) of the top Ritz pair, as hessian.top_eigenvalues (k=1)."""
    theta, s = torch.linalg.eigh(hessian.tridiagonal(alphas, betas))
    residual = abs(betas[-1] * s[-1, -1].item())
    return residual <= tol * max(abs(theta[-1].item()), 1e-30), theta, s, residual


def _eigen_result(done, basis, size):
    converged, theta, s, residual = done
    steps = len(theta)
    vector = s[:, -1].to(basis.dtype).to(basis.device) @ basis
    return hessian.EigenResult(eigenvalues=theta[-1:].to(basis.dtype), eigenvectors=vector[None],
                               residuals=torch.tensor([residual], dtype=torch.float64), num_hvps=steps,
                               converged=bool(converged) or steps == size)


@torch.no_grad()
def perturbed_errors(models, data, std, samples: int, seed: int = 0, max_bytes: int | None = None) -> torch.Tensor:
    """(M, samples) training error rates (float64) of every member at ``w_m + std_m * xi_s``: row m
    counts the images ``flatlib.pacbayes``' sampler finds misclassified for ``models[m]`` with this
    ``std``, ``samples`` and ``seed`` (``_Sampler(models[m], data, samples, seed).errors(std[m])``,
    which returns float32), up to rounding of the logits. ``std`` is a scalar, a (num_params,) vector
    for every member, (M, 1) for one scale per member, or (M, num_params).

    The draws ``xi_s`` are the sampler's: standard normal in the members' dtype from one CPU
    generator seeded with ``seed``, the same for every member (members of one study share the
    measure's seed). As many perturbed networks as fit in ``max_bytes`` of weights go through the
    stacked forward together (at least one draw per pass; the activations, about
    ``len(data) * sum(widths)`` numbers per perturbed network, come on top): by default 32 MiB on CPU,
    where larger passes fall out of the caches, and 512 MiB on a GPU."""
    st, x, y = _prepare(models, data)
    w0 = st.weights[0]
    samples = _positive("samples", samples)
    count, size = st.members, st.num_params
    w = st.flat(st.params())
    std = torch.as_tensor(std, dtype=w0.dtype).to(w0.device)
    if std.shape not in ((), (size,), (count, 1), (count, size)):
        raise ValueError(f"std has shape {tuple(std.shape)}; give a scalar, ({size},), ({count}, 1) or "
                         f"({count}, {size}) for {count} members of {size} parameters")
    std = std.expand(count, size)
    if max_bytes is None:
        max_bytes = (32 if w0.device.type == "cpu" else 512) * 2 ** 20
    per_pass = max(1, max_bytes // (count * size * w0.element_size()))
    gen = torch.Generator().manual_seed(seed)
    errors = torch.empty(count, samples, dtype=torch.float64)
    for start in range(0, samples, per_pass):
        draws = torch.stack([torch.randn(size, generator=gen, dtype=w0.dtype)
                             for _ in range(min(per_pass, samples - start))]).to(w0.device)  # (k, P)
        perturbed = (w[None] + std[None] * draws[:, None]).flatten(0, 1)  # (k * M, P), draw-major
        logits = st.forward(x, st.unflat(perturbed))
        wrong = (logits.argmax(2) != y).double().mean(1).view(len(draws), count)
        errors[:, start:start + len(draws)] = wrong.T.cpu()
    return errors
