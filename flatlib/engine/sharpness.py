"""The sharpness measures of ``flatlib.measures``: the top Hessian eigenvalue, the Hessian trace
(exact from the diagonal, or estimated) and its minimum over layer rescalings, worst-case
sharpness in a box (epsilon and adaptive), and relative flatness. A larger value means sharper.
Each is versioned in the registry (``version=``).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from flatlib.engine import hessian, models, reparam
from flatlib.engine.measure_registry import register

# ----------------------------------------------------------------------------- sharpness

@register("top_eigenvalue", "sharpness", invariant=False)
def top_eigenvalue(model, data, tol: float = 1e-3, seed: int = 0, batch_size: int | None = None) -> float:
    """lambda_max(H): the largest eigenvalue of the Hessian of the mean training cross-entropy
    (nats), by Lanczos to relative tolerance ``tol``. The primary sharpness measure (Keskar et
    al. 2017; Bennett 2026). Larger = sharper."""
    return hessian.top_eigenvalues(model, data, k=1, tol=tol, seed=seed, batch_size=batch_size).eigenvalues[0].item()


# hessian_trace (exact) and hessian_trace_min_rescaling both need the exact diagonal; a table
# computes them one after the other on the same network and data, so it is computed once.
# model -> (stamp of what it was computed from, diagonal); weak, so it goes with the model.
_DIAGONALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tensor_stamp(tensors, batch_size):
    """What a diagonal depends on: the very tensors (weakly referenced, so a freed tensor whose
    memory is reused never matches), their storage, shape and in-place version counter."""
    return batch_size, [(weakref.ref(t), t.data_ptr(), t.shape, t.dtype, t.device, t._version) for t in tensors]


def same_stamp(stamp, tensors, batch_size) -> bool:
    size, entries = stamp
    return size == batch_size and len(entries) == len(tensors) and all(
        ref() is t and (ptr, shape, dtype, device, version) == (t.data_ptr(), t.shape, t.dtype, t.device, t._version)
        for (ref, ptr, shape, dtype, device, version), t in zip(entries, tensors))


def exact_diagonal(model, data, batch_size: int | None = 1000) -> torch.Tensor:
    """``hessian.diagonal(model, data, batch_size)``, computed once per network and data: the
    result is reused while the model's parameters and the data are the same tensors, unmodified
    (an in-place update such as an optimiser step or ``load_state_dict`` bumps a tensor's
    version and forces a recomputation). Treat the returned tensor as read-only."""
    inputs, targets = data
    tensors = [*model.parameters(), inputs, targets]
    cached = _DIAGONALS.get(model)
    if cached is not None and same_stamp(cached[0], tensors, batch_size):
        return cached[1]
    diag = hessian.diagonal(model, data, batch_size=batch_size)
    _DIAGONALS[model] = (tensor_stamp(tensors, batch_size), diag)
    return diag


@register("hessian_trace", "sharpness", invariant=False)
def hessian_trace(model, data, method: str = "exact", probes: int = 100, seed: int = 0,
                  batch_size: int | None = 1000) -> float:
    """tr(H) of the mean training cross-entropy. ``method="exact"`` sums the exact diagonal
    (``hessian.diagonal``; ReLU networks of Linear/Conv2d layers, about C gradients);
    ``"hutchinson"`` estimates it with ``probes`` Rademacher probes for any network (see
    benchmarks/README.md for why not Hutch++). Larger = sharper."""
    if method == "exact":
        return exact_diagonal(model, data, batch_size=batch_size).sum().item()
    if method == "hutchinson":
        return hessian.trace(model, data, probes=probes, method="hutchinson", seed=seed, batch_size=batch_size).value
    raise ValueError(f"method must be 'exact' or 'hutchinson', got {method!r}")


@dataclass(frozen=True)
class RescaledTrace:
    """The Hessian trace minimised over per-unit rescalings: ``value`` = min over ``log_scales``
    (one tensor per hidden layer) of tr(H) after ``reparam.neuron_scale`` by ``exp(log_scales)``;
    ``trace`` = the exact trace before rescaling; ``sweeps`` = coordinate-descent sweeps taken."""

    value: float
    trace: float
    log_scales: list
    sweeps: int


def _unit_blocks(model, diag):
    """Collapse the Hessian diagonal onto units: for weight layer l, ``M[l][j, k]`` sums the
    diagonal entries of the weights from unit k of hidden layer l-1 (all inputs for l = 0,
    all positions of a flattened channel map, all kernel taps) into unit j of layer l, and
    ``bias[l][j]`` the bias entry of unit j."""
    layers = reparam.weight_layers(model)
    chunks, i = {}, 0
    for p in model.parameters():
        chunks[id(p)] = diag[i:i + p.numel()].reshape(p.shape).double()
        i += p.numel()
    blocks, biases = [], []
    for l, layer in enumerate(layers):
        d = chunks[id(layer.weight)]
        out = d.shape[0]
        units_in = 1 if l == 0 else layers[l - 1].weight.shape[0]
        blocks.append(d.reshape(out, units_in, -1).sum(-1))
        biases.append(chunks[id(layer.bias)] if layer.bias is not None else torch.zeros(out, dtype=torch.float64))
    return blocks, biases


def min_trace_over_rescaling(model, data, max_log_scale: float = 15.0, rtol: float = 1e-12,
                             max_sweeps: int = 10000, batch_size: int | None = 1000) -> RescaledTrace:
    """Minimise tr(H) over the per-unit positive rescalings of a ReLU network.

    Scaling hidden unit j by exp(u_j) (``reparam.neuron_scale``) multiplies the diagonal
    Hessian entry of a weight from unit k into unit j by exp(2 (u_k - u_j)) (inputs and
    logits have u = 0) and that of unit j's bias by exp(-2 u_j), so with the exact diagonal
    D (``hessian.diagonal``, D >= 0)

        T(u) = sum_l sum_jk M_l[j,k] exp(2 (u_{l-1,k} - u_{l,j})) + sum_l sum_j b_l[j] exp(-2 u_{l,j}),

    a convex function of u. Units of one layer never share a weight, so for a whole layer at
    once T is sum_j B_j exp(-2 u_j) + A_j exp(2 u_j) + const, minimised in closed form at
    u_j = log(B_j / A_j) / 4 (incoming mass B_j = outgoing mass A_j). Exact block coordinate
    descent over layers converges to the minimum; each u is kept in [-max_log_scale,
    max_log_scale], which only binds for units whose incoming or outgoing mass is zero
    (their contribution is then below exp(-2 max_log_scale) of its size)."""
    blocks, biases = _unit_blocks(model, exact_diagonal(model, data, batch_size=batch_size).detach().cpu())
    hidden = len(blocks) - 1
    u = [torch.zeros(b.shape[0], dtype=torch.float64) for b in blocks[:-1]]

    def scale_in(l):  # exp(2 u) of the units layer l reads from
        return torch.ones(1, dtype=torch.float64) if l == 0 else torch.exp(2 * u[l - 1])

    def scale_out(l):  # exp(-2 u) of the units layer l writes to
        return torch.ones(blocks[l].shape[0], dtype=torch.float64) if l == hidden else torch.exp(-2 * u[l])

    def total():
        return sum(float(scale_out(l) @ (blocks[l] @ scale_in(l) + biases[l])) for l in range(len(blocks)))

    trace = current = total()
    sweeps = 0
    while sweeps < max_sweeps:
        sweeps += 1
        for h in range(hidden):
            incoming = blocks[h] @ scale_in(h) + biases[h]
            outgoing = blocks[h + 1].T @ scale_out(h + 1)
            tiny = torch.finfo(torch.float64).tiny
            u[h] = (0.25 * (torch.log(incoming.clamp_min(tiny)) - torch.log(outgoing.clamp_min(tiny)))
                    ).clamp(-max_log_scale, max_log_scale)
        previous, current = current, total()
        if previous - current <= rtol * max(current, tiny):
            break
    return RescaledTrace(current, trace, u, sweeps)


@register("hessian_trace_min_rescaling", "sharpness", invariant=True)
def hessian_trace_min_rescaling(model, data, batch_size: int | None = 1000) -> float:
    """min over positive per-unit rescalings S of tr(H) at the rescaled weights, from the
    exact Hessian diagonal (``min_trace_over_rescaling``; cf. the symmetry-aware flatness of
    Vardhan, Taheri & Mazumdar 2026). Every point of a rescaling orbit has the same minimum,
    so it is invariant to ``alpha_scale``, ``neuron_scale`` and ``permute``. Larger = sharper."""
    return min_trace_over_rescaling(model, data, batch_size=batch_size).value


def _flat_params(model):
    names = [n for n, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    shapes = [p.shape for p in model.parameters()]
    return names, shapes, flat


def _unflatten(names, shapes, flat):
    out, i = {}, 0
    for name, shape in zip(names, shapes):
        out[name] = flat[i:i + shape.numel()].reshape(shape)
        i += shape.numel()
    return out


def worst_case_in_box(model, data, radius: torch.Tensor, steps: int = 10) -> tuple[float, float]:
    """max over |delta_i| <= radius_i of L(w + delta), by sign-gradient ascent on u = delta / radius
    from u = 0 with step 1/4, projected onto [-1, 1]. Returns (L(w), the maximum found).

    Ascent runs in the box's own coordinates u, so for an elementwise-relative box the whole
    path is unchanged by any positive diagonal rescaling of w (the adaptive measures'
    invariance holds for the search, not only for the exact maximum)."""
    x, y = data
    names, shapes, w = _flat_params(model)
    device = w.device
    x, y = x.to(device, w.dtype), y.to(device)
    was_training = model.training
    model.eval()

    def loss_at(flat):
        return F.cross_entropy(functional_call(model, _unflatten(names, shapes, flat), (x,)), y)

    try:
        with torch.no_grad():
            base = loss_at(w).item()
        u = torch.zeros_like(w)
        best = base
        for _ in range(steps):
            u.requires_grad_(True)
            value = loss_at(w + radius * u)
            (g,) = torch.autograd.grad(value, u)
            best = max(best, value.item())
            u = (u.detach() + 0.25 * torch.sign(g)).clamp_(-1, 1)
        with torch.no_grad():
            best = max(best, loss_at(w + radius * u).item())
    finally:
        model.train(was_training)
    return base, best


@register("epsilon_sharpness", "sharpness", invariant=False)
def epsilon_sharpness(model, data, epsilon: float = 1e-3, steps: int = 10) -> float:
    """Keskar et al. (2017): 100 (max_{delta in C} L(w + delta) - L(w)) / (1 + L(w)), with the
    box C = {|delta_i| <= epsilon (|w_i| + 1)} over all parameters; percent. The "+1" makes
    the box not scale with w, so the measure is not reparameterisation-invariant. Larger = sharper."""
    _, _, w = _flat_params(model)
    base, best = worst_case_in_box(model, data, epsilon * (w.abs() + 1), steps)
    return 100 * (best - base) / (1 + base)


@register("adaptive_sharpness", "sharpness", invariant=True)
def adaptive_sharpness(model, data, rho: float = 0.05, steps: int = 10) -> float:
    """Adaptive worst-case sharpness (Kwon et al. 2021; Andriushchenko et al. 2023):
    max_{|delta_i| <= rho |w_i|} L(w + delta) - L(w), in nats. The box scales with each weight,
    so positive rescalings and permutations of hidden units leave it unchanged. Larger = sharper."""
    _, _, w = _flat_params(model)
    base, best = worst_case_in_box(model, data, rho * w.abs(), steps)
    return best - base


@register("relative_flatness", "sharpness", invariant=False)
def relative_flatness(model, data) -> float:
    """Relative flatness of the last layer (Petzka et al. 2021):
    kappa = sum_{s,s'} <w_s, w_s'> tr(H_{s,s'}), where w_s is row s of the last weight matrix W
    (the weights out of the penultimate representation z to class s) and H_{s,s'} the Hessian
    block between rows s and s'. The logits are linear in W, so that block is exactly
    mean_n z_n z_n^T (diag(p_n) - p_n p_n^T)_{ss'} and tr(H_{s,s'}) = mean_n |z_n|^2 (...)_{ss'}:
    one forward pass, no sampling. Invariant to rescaling the penultimate layer as a whole and
    to every earlier layer; not to per-unit rescaling of the penultimate units, which it
    mixes. Larger = sharper."""
    x, _ = data
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    seen = []
    hook = last.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    try:
        logits = models.predict(model, x).double()
    finally:
        hook.remove()
    z2 = torch.cat(seen).reshape(len(logits), -1).double().pow(2).sum(1)
    p = torch.softmax(logits, dim=1)
    weight = last.weight.detach().double()
    gram = (weight @ weight.T).to(p.device)
    # sum_{s,s'} G_ss' (diag(p) - p p^T)_ss' = sum_s G_ss p_s - p^T G p, per sample
    per_sample = p @ torch.diagonal(gram) - ((p @ gram) * p).sum(1)
    return (z2.to(p.device) * per_sample).mean().item()
