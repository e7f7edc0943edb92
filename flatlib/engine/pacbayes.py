"""PAC-Bayes bounds on the test error of a Gaussian posterior around the trained weights.

``kl_bernoulli`` and ``kl_inverse`` (the Langford-Seeger bound: the largest p with
kl(q || p) <= c) are exact up to a stated tolerance; ``mcallester`` is the looser square-root
form. ``gaussian_bound`` bounds the error of the stochastic network Q = N(w, diag(s^2)) with
the prior P = N(w0, diag(s0^2)) centred at the network's *initial* weights w0:

* isotropic: s = s0 = sigma for every parameter;
* magnitude-aware (after Jiang et al. 2020): s_i = sigma |w_i| + eps for the posterior and
  s0_i = sigma rms(w0 of the tensor holding i) + eps for the prior. (A prior scaled by each
  |w0_i| is also data-independent, but it is so narrow wherever the initial weight happened to
  be near zero that the bound is vacuous for every network we tried.)

Why the prior is valid: w0 is drawn from the initialisation distribution with the network's
seed before any data is seen, and the sigma grid is fixed in advance, so P depends on nothing
the bound's sample (the training subset) determines; the data order, also seeded, does not
enter P. Choosing the best sigma afterwards costs a union bound over the K grid points.

The empirical error of Q is estimated from ``samples`` weight draws, each evaluated on the
whole training subset; it is replaced by its own upper confidence bound
kl^{-1}(e_mc, ln(K / delta_mc) / samples) (Langford & Caruana 2002). With probability at least
1 - delta - delta_mc over the training sample and the draws, for every sigma in the grid

    err(Q) <= kl^{-1}( e_up, (KL(Q || P) + ln(2 sqrt(n) K / delta)) / n )     (Maurer 2004).

How the draws are evaluated (``_Sampler``): each draw is made once and every sigma of the grid
is evaluated on it; where the network's first layer is a Linear on the input (the MLPs), its
output under noise is assembled from one or two products of the data with the draw that no sigma
changes, so each further sigma costs only the later layers. The perturbed weights are the same,
bit for bit; the logits agree with a plain forward pass at the perturbed weights up to rounding.

References: Langford & Seeger (2001); McAllester (1999); Maurer (2004); Dziugaite & Roy (2017);
Jiang, Neyshabur, Mobahi, Krishnan & Bengio, "Fantastic generalization measures" (2020).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

# The version of this module's computations (``flatlib.keys``): the kl-inverse, the bounds and the
# weight-noise sampler (the bound measures carry versions of their own). Bump it with any change
# that can change their numbers, and re-record the fingerprints.
VERSION = 1
# The name summaries record this VERSION under ("module:flatlib.pacbayes"), kept wherever the module lives.
VERSION_NAME = "flatlib.pacbayes"

DEFAULT_SIGMAS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
# The most memory a sampler keeps between calls (``_Sampler``): its draws, and apart from them the
# first layer's per-draw products; what does not fit is made again at each call.
KEEP_BYTES = 256 * 2 ** 20


def kl_bernoulli(q: float, p: float) -> float:
    """kl(q || p) = q ln(q/p) + (1-q) ln((1-q)/(1-p)) in nats, with 0 ln 0 = 0."""
    if not (0 <= q <= 1 and 0 <= p <= 1):
        raise ValueError(f"q and p must lie in [0, 1], got {q}, {p}")
    out = 0.0
    for a, b in ((q, p), (1 - q, 1 - p)):
        if a > 0:
            if b <= 0:
                return math.inf
            out += a * math.log(a / b)
    return out


def kl_inverse(q: float, c: float, tol: float = 1e-12) -> float:
    """The largest p in [q, 1] with kl(q || p) <= c, by bisection to within ``tol`` (the
    returned p is never below the true value by more than tol, and never above it)."""
    if c < 0:
        raise ValueError(f"c must be non-negative, got {c}")
    if not 0 <= q <= 1:
        raise ValueError(f"q must lie in [0, 1], got {q}")
    lo, hi = q, 1.0
    if kl_bernoulli(q, hi) <= c:
        return 1.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if kl_bernoulli(q, mid) <= c:
            lo = mid
        else:
            hi = mid
    return lo


def mcallester(q: float, kl: float, n: int, delta: float) -> float:
    """q + sqrt((KL + ln(2 sqrt(n) / delta)) / (2 n)): the Pinsker-relaxed form of the same
    bound (it can exceed 1, so it keeps ranking networks after the kl form saturates)."""
    return q + math.sqrt((kl + math.log(2 * math.sqrt(n) / delta)) / (2 * n))


def _flat(state) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in state])


def _gaussian_kl(mean_q, std_q, mean_p, std_p) -> float:
    """KL(N(mean_q, diag std_q^2) || N(mean_p, diag std_p^2))."""
    var_q, var_p = std_q ** 2, std_p ** 2
    return float((torch.log(std_p / std_q) + (var_q + (mean_q - mean_p) ** 2) / (2 * var_p) - 0.5).sum())


def _posterior_std(kind: str, sigma: float, w: torch.Tensor, eps: float) -> torch.Tensor:
    """The posterior's standard deviations (float64, like ``w``): sigma, or sigma |w_i| + eps."""
    return torch.full_like(w, sigma) if kind == "isotropic" else sigma * w.abs() + eps


def _error(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) != y).double().mean().item()


class _FirstLinear:
    """A network's first layer when it is an ``nn.Linear`` on the (flattened) input, split from
    the layers after it. With the noise std = sigma a + c (isotropic: a = 1, c = 0; magnitude:
    a = |w|, c = eps), its pre-activation at the weights (W + S * Xi, b + s_b * xi_b) is

        x W^T + b  +  sigma (x (A * Xi)^T + a_b * xi_b)  +  c (x Xi^T + xi_b),

    so each draw needs one product with x (isotropic) or two (magnitude) that no sigma changes,
    and each sigma only the later, much cheaper layers. The perturbed weights of those layers are
    the generic path's, bit for bit; the first layer's output equals its output up to the rounding
    of a reordered sum (an argmax can flip only at a near-tie of two logits)."""

    def __init__(self, first: nn.Linear, rest: nn.Sequential, h: torch.Tensor, w_model: torch.Tensor):
        rows, cols = first.weight.shape
        self.rest, self.h, self.shape = rest, h, (rows, cols)
        self.has_bias = first.bias is not None
        self.size = rows * cols + (rows if self.has_bias else 0)  # where the later layers' weights start
        weight = w_model[:rows * cols].view(rows, cols)
        bias = w_model[rows * cols:self.size] if self.has_bias else None
        self.clean = F.linear(h, weight, bias)
        self.abs_weight, self.abs_bias = weight.abs(), None if bias is None else bias.abs()
        self.names = [name for name, _ in rest.named_parameters()]
        self.shapes = [p.shape for p in rest.parameters()]

    def products(self, kind: str, xi: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(x Xi^T + xi_b,) for "isotropic"; (x (|W| * Xi)^T + |b| * xi_b, x Xi^T + xi_b) for "magnitude"."""
        rows, cols = self.shape
        xi_w = xi[:rows * cols].view(rows, cols)
        xi_b = xi[rows * cols:self.size] if self.has_bias else None
        plain = F.linear(self.h, xi_w, xi_b)
        if kind == "isotropic":
            return (plain,)
        return F.linear(self.h, self.abs_weight * xi_w, None if xi_b is None else self.abs_bias * xi_b), plain

    def logits(self, products, sigma: float, eps: float, rest_flat: torch.Tensor) -> torch.Tensor:
        pre = torch.add(self.clean, products[0], alpha=sigma)
        if len(products) == 2:
            pre = pre.add_(products[1], alpha=eps)
        params = dict(zip(self.names, (piece.view(shape) for piece, shape in
                                       zip(torch.split(rest_flat, [s.numel() for s in self.shapes]), self.shapes))))
        return functional_call(self.rest, params, (pre,))

    def product_bytes(self, kind: str) -> int:
        return (1 if kind == "isotropic" else 2) * self.h.shape[0] * self.shape[0] * self.h.element_size()


def _first_linear(model, x: torch.Tensor, w_model: torch.Tensor) -> _FirstLinear | None:
    """The split of ``_FirstLinear`` where it is exact, else None: ``model`` is a plain
    ``nn.Sequential`` whose first module with parameters is an ``nn.Linear``, with only
    ``nn.Flatten`` or ``nn.Identity`` before it, no parameter shared with a later module, and no
    forward hooks on the model or that layer (``flatlib.models.mlp``, with or without BatchNorm;
    not the CNN)."""
    if type(model) is not nn.Sequential:
        return None
    layers = list(model)
    k = next((i for i, layer in enumerate(layers) if any(True for _ in layer.parameters())), None)
    if k is None or type(layers[k]) is not nn.Linear or any(type(m) not in (nn.Flatten, nn.Identity)
                                                            for m in layers[:k]):
        return None
    first, rest = layers[k], nn.Sequential(*layers[k + 1:])
    own = [first.weight] + ([first.bias] if first.bias is not None else [])
    if [id(p) for p in model.parameters()] != [id(p) for p in own + list(rest.parameters())]:
        return None
    if any(m._forward_hooks or m._forward_pre_hooks for m in (model, first)):
        return None
    h = x
    for layer in layers[:k]:
        h = layer(h)
    return _FirstLinear(first, rest, h, w_model) if h.dim() == 2 else None


class _Sampler:
    """Error rates of the network at w + std * xi for seeded standard-normal draws xi; the
    same draws for every std (common random numbers), so errors vary smoothly with sigma.

    The draws are made by one CPU generator seeded with ``seed``, ``samples`` calls of
    ``torch.randn(P, dtype=model dtype)`` in a row, whatever is asked; a sampler keeps them for
    its next calls when they fit in ``keep_bytes``. ``errors_at`` evaluates every sigma of a grid
    on each draw in turn and, where ``_first_linear`` finds the split, through ``_FirstLinear``:
    for a grid the per-draw products are made once and used for every sigma; for one sigma at a
    time (a bisection) they are worth making only if kept, so they are kept when they fit in
    ``keep_bytes`` (``samples`` x one or two n x width matrices), and otherwise the generic forward
    runs."""

    def __init__(self, model, data, samples: int, seed: int, keep_bytes: int | None = None):
        self.model = model
        self.names = [n for n, _ in model.named_parameters()]
        self.shapes = [p.shape for p in model.parameters()]
        first = next(model.parameters())
        self.w = _flat(model.parameters())
        x, y = data
        self.x, self.y = x.to(first.device, first.dtype), y.to(first.device)
        self.samples, self.seed = samples, seed
        self.keep_bytes = KEEP_BYTES if keep_bytes is None else keep_bytes
        self.dtype, self.device = first.dtype, first.device
        self.w_model = self.w.to(first.device, first.dtype)  # draws are made in the model's precision
        self._kept_draws = None
        self._kept_products = {}

    @functools.cached_property
    def first(self) -> _FirstLinear | None:
        """The first-layer split (``_first_linear``), made at its first use."""
        with torch.no_grad():
            return _first_linear(self.model, self.x, self.w_model)

    def _params(self, flat):
        out, i = {}, 0
        for name, shape in zip(self.names, self.shapes):
            out[name] = flat[i:i + shape.numel()].reshape(shape).to(self.device, self.dtype)
            i += shape.numel()
        return out

    @torch.no_grad()
    def error_at(self, flat: torch.Tensor) -> float:
        was_training = self.model.training
        self.model.eval()
        try:
            logits = functional_call(self.model, self._params(flat), (self.x,))
        finally:
            self.model.train(was_training)
        return _error(logits, self.y)

    def _draws(self):
        if self._kept_draws is not None:
            yield from self._kept_draws
            return
        gen = torch.Generator().manual_seed(self.seed)
        size = self.w.numel()
        kept = [] if self.samples * size * self.w_model.element_size() <= self.keep_bytes else None
        for _ in range(self.samples):
            xi = torch.randn(size, generator=gen, dtype=self.dtype).to(self.device)
            if kept is not None:
                kept.append(xi)
            yield xi
        self._kept_draws = kept

    def errors(self, std: torch.Tensor) -> torch.Tensor:
        """The ``samples`` error rates at w + ``std`` * xi (float32), by the generic forward."""
        std = std.to(self.device, self.dtype)
        return torch.tensor([self.error_at(self.w_model + std * xi) for xi in self._draws()])

    @torch.no_grad()
    def errors_at(self, kind: str, sigmas, eps: float = 1e-3, first_layer: bool = True) -> list[torch.Tensor]:
        """For each sigma, what ``errors(_posterior_std(kind, sigma, w, eps))`` returns; the draws
        outside, the sigmas inside. ``first_layer=False`` forces the generic forward."""
        stds = [_posterior_std(kind, sigma, self.w, eps).to(self.device, self.dtype) for sigma in sigmas]
        split = self.first if first_layer else None
        keep = split is not None and self.samples * split.product_bytes(kind) <= self.keep_bytes
        if len(sigmas) == 1 and not keep:
            split = None
        rows = [[] for _ in sigmas]
        was_training = self.model.training
        self.model.eval()
        try:
            for i, xi in enumerate(self._draws()):
                if split is None:
                    for row, std in zip(rows, stds):
                        row.append(self.error_at(self.w_model + std * xi))
                    continue
                if keep:
                    kept = self._kept_products.setdefault(kind, [])
                    if i == len(kept):
                        kept.append(split.products(kind, xi))
                    products = kept[i]
                else:
                    products = split.products(kind, xi)
                start = split.size
                for row, sigma, std in zip(rows, sigmas, stds):
                    rest = self.w_model[start:] + std[start:] * xi[start:]
                    row.append(_error(split.logits(products, sigma, eps, rest), self.y))
        finally:
            self.model.train(was_training)
        return [torch.tensor(row) for row in rows]


@dataclass(frozen=True)
class BoundResult:
    bound: float  # the kl-inverse bound at the best sigma
    mcallester: float  # the square-root bound at the same sigma
    sigma: float
    kl: float
    error_mc: float  # Monte Carlo error of the posterior on the training subset
    error_upper: float  # its upper confidence bound
    n: int
    per_sigma: list  # (sigma, kl, error_mc, error_upper, bound) for every grid point


def _stds(kind: str, sigma: float, w: torch.Tensor, w0_rms: torch.Tensor, eps: float):
    prior = torch.full_like(w, sigma) if kind == "isotropic" else sigma * w0_rms + eps
    return _posterior_std(kind, sigma, w, eps), prior


def gaussian_bound(model, data, init, kind: str = "isotropic", sigmas=DEFAULT_SIGMAS, samples: int = 50,
                   delta: float = 0.05, delta_mc: float = 0.01, eps: float = 1e-3, seed: int = 0) -> BoundResult:
    """The PAC-Bayes bound of the module docstring, minimised over the ``sigmas`` grid.
    ``init``: the initial state dict (or parameter list) of the network, the prior's centre;
    ``kind``: "isotropic" or "magnitude"."""
    if kind not in ("isotropic", "magnitude"):
        raise ValueError(f"kind must be 'isotropic' or 'magnitude', got {kind!r}")
    if not sigmas or min(sigmas) <= 0:
        raise ValueError("sigmas must be a non-empty grid of positive values")
    if samples < 1:
        raise ValueError(f"samples must be positive, got {samples}")
    params = dict(model.named_parameters())
    if isinstance(init, dict):
        missing = sorted(set(params) - set(init))
        if missing:
            raise ValueError(f"init lacks the parameters {missing}; pass the network's initial state dict")
        init = [init[name] for name in params]
    w0 = _flat(init)
    w0_rms = torch.cat([torch.full((t.numel(),), t.detach().double().pow(2).mean().sqrt().item(), dtype=torch.float64)
                        for t in init])
    sampler = _Sampler(model, data, samples, seed, keep_bytes=0)  # one pass over the draws: nothing to keep
    if w0.numel() != sampler.w.numel():
        raise ValueError(f"init has {w0.numel()} values; the model has {sampler.w.numel()} parameters")
    n, k = len(sampler.y), len(sigmas)
    rows = []
    for sigma, errors in zip(sigmas, sampler.errors_at(kind, sigmas, eps)):
        std, std0 = _stds(kind, sigma, sampler.w, w0_rms, eps)
        kl = _gaussian_kl(sampler.w, std, w0, std0)
        error_mc = errors.mean().item()
        error_upper = kl_inverse(error_mc, math.log(k / delta_mc) / samples)
        bound = kl_inverse(error_upper, (kl + math.log(2 * math.sqrt(n) * k / delta)) / n)
        rows.append((sigma, kl, error_mc, error_upper, bound))
    best = min(rows, key=lambda r: (r[4], mcallester(r[3], r[1], n, delta / k)))
    sigma, kl, error_mc, error_upper, bound = best
    return BoundResult(bound=bound, mcallester=mcallester(error_upper, kl, n, delta / k), sigma=sigma, kl=kl,
                       error_mc=error_mc, error_upper=error_upper, n=n, per_sigma=rows)


def sharpness_sigma(model, data, kind: str = "isotropic", drop: float = 0.1, samples: int = 10,
                    eps: float = 1e-3, lo: float = 1e-6, hi: float = 10.0, iters: int = 15, seed: int = 0) -> float:
    """The noise scale sigma at which the mean training accuracy under Gaussian weight noise
    (std sigma, or sigma |w_i| + eps for ``kind="magnitude"``) has dropped by ``drop`` from
    the noiseless accuracy, by bisection in log sigma over seeded draws (Jiang et al. 2020's
    "pacbayes.flatness" and "pacbayes.mag.flatness" report 1 / sigma^2)."""
    if kind not in ("isotropic", "magnitude"):
        raise ValueError(f"kind must be 'isotropic' or 'magnitude', got {kind!r}")
    sampler = _Sampler(model, data, samples, seed)
    clean = 1 - sampler.error_at(sampler.w)

    def dropped(sigma):
        return clean - (1 - sampler.errors_at(kind, [sigma], eps)[0].mean().item()) >= drop

    if dropped(lo):
        return lo
    if not dropped(hi):
        return hi
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if dropped(mid) else (mid, hi)
    return math.sqrt(lo * hi)
