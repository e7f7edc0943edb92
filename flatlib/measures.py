"""The registry of measures: name -> function(model, data, **options) -> float.

Every entry is tagged with its family (sharpness, weakness, simplicity, bound) and whether it
is invariant under function-preserving reparameterisation (``flatlib.reparam``); the tag is
checked both ways by ``tests/test_measures.py``. Sign conventions: a larger sharpness value
means sharper, a larger weakness value means weaker (more is left open), a larger simplicity
value means simpler. ``data`` is the network's training data, a ``flatlib.data.Dataset`` or an
``(inputs, targets)`` pair. Definitions with sources are in ``book/methods.md``.
"""
from __future__ import annotations

import lzma
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from flatlib import data as fdata
from flatlib import hessian, models
from flatlib.train import logit_metrics

FAMILIES = ("sharpness", "weakness", "simplicity", "bound")


@dataclass(frozen=True)
class Measure:
    name: str
    family: str
    invariant: bool
    fn: Callable

    def __call__(self, model: nn.Module, data, **options) -> float:
        return float(self.fn(model, data, **options))

    @property
    def doc(self) -> str:
        return self.fn.__doc__ or ""


MEASURES: dict[str, Measure] = {}


def register(name: str, family: str, invariant: bool):
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}")

    def wrap(fn):
        MEASURES[name] = Measure(name, family, invariant, fn)
        return fn

    return wrap


# ----------------------------------------------------------------------------- sharpness

@register("top_eigenvalue", "sharpness", invariant=False)
def top_eigenvalue(model, data, tol: float = 1e-3, seed: int = 0, batch_size: int | None = None) -> float:
    """lambda_max(H): the largest eigenvalue of the Hessian of the mean training cross-entropy
    (nats), by Lanczos to relative tolerance ``tol``. The primary sharpness measure (Keskar et
    al. 2017; Bennett 2026). Larger = sharper."""
    return hessian.top_eigenvalues(model, data, k=1, tol=tol, seed=seed, batch_size=batch_size).eigenvalues[0].item()


@register("hessian_trace", "sharpness", invariant=False)
def hessian_trace(model, data, probes: int = 100, seed: int = 0, batch_size: int | None = None) -> float:
    """tr(H) of the mean training cross-entropy by Hutchinson's estimator with ``probes``
    Rademacher probes (see benchmarks/README.md for why not Hutch++). Larger = sharper."""
    return hessian.trace(model, data, probes=probes, method="hutchinson", seed=seed, batch_size=batch_size).value


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
def relative_flatness(model, data, probes: int = 10, seed: int = 0) -> float:
    """Relative flatness of the last layer (Petzka et al. 2021):
    kappa = sum_{s,s'} <w_s, w_s'> tr(H_{s,s'}), where w_s is row s of the last weight matrix W
    (the weights out of the penultimate representation to class s) and H_{s,s'} the Hessian
    block between rows s and s'. tr(H_{s,s'}) = E[(e_s (x) z)^T H (e_s' (x) z)] for Rademacher z,
    estimated with ``probes`` probes (C HVPs each). Invariant to rescaling the penultimate
    layer as a whole and to every earlier layer; not to per-unit rescaling of the penultimate
    units, which it mixes. Larger = sharper."""
    x, y = data
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    weight = last.weight
    classes, width = weight.shape
    op = hessian.HessianOperator(model, (x, y))
    offset = 0
    for p in model.parameters():
        if p is weight:
            break
        offset += p.numel()
    gen = torch.Generator().manual_seed(seed)
    blocks = torch.zeros(classes, classes, dtype=torch.float64)
    for _ in range(probes):
        z = (torch.randint(0, 2, (width,), generator=gen) * 2 - 1).to(op.device, op.dtype)
        columns = []
        for s in range(classes):
            v = torch.zeros(op.num_params, device=op.device, dtype=op.dtype)
            v[offset + s * width: offset + (s + 1) * width] = z
            columns.append(op.matvec(v)[offset: offset + classes * width].reshape(classes, width))
        # blocks[s, s'] += z^T H_{s, s'} z
        for s2, hv in enumerate(columns):
            blocks[:, s2] += (hv.double() @ z.double()).cpu()
    blocks /= probes
    gram = (weight.detach().double() @ weight.detach().double().T).cpu()
    return float((gram * blocks).sum())


# ----------------------------------------------------------------------------- weakness

def _probe_inputs(data, probe, probe_n: int, seed: int):
    if probe is not None:
        return probe[0] if isinstance(probe, (tuple, list, fdata.Dataset)) else probe
    if isinstance(data, fdata.Dataset):
        return fdata.complement(data, n=probe_n, seed=seed).images
    raise ValueError("pass probe=<unlabelled images the network never trained on>, or data as a "
                     "flatlib.data.Dataset so they can be drawn from outside its training subset")


@register("weakness_open_labels", "weakness", invariant=True)
def weakness_open_labels(model, data, tau: float = 0.1, probe=None, probe_n: int = 2000, seed: int = 0) -> float:
    """Primary weakness measure: mean over unseen probe images x of log2 |{y : p(y|x) >= tau}|,
    in bits, with tau = 0.1 fixed in advance. The probe images come from the training split
    outside the network's own training subset, never from the test set. It reads only the
    network's outputs, so it is invariant to any reparameterisation. Larger = weaker
    (more labelings of unseen inputs left open)."""
    inputs = _probe_inputs(data, probe, probe_n, seed)
    probs = torch.softmax(models.predict(model, inputs).double(), dim=1)
    # Every input keeps at least its top label open, so the count is >= 1 even for tau > 0.5.
    counts = torch.maximum((probs >= tau).sum(1), torch.ones(len(probs), dtype=torch.long, device=probs.device))
    return torch.log2(counts.double()).mean().item()


@register("weakness_input_volume", "weakness", invariant=True)
def weakness_input_volume(model, data, directions: int = 8, n: int = 200, max_radius: float = 20.0,
                          scan_steps: int = 40, bisections: int = 20, seed: int = 0) -> float:
    """Secondary weakness measure: mean over ``n`` training images of the mean log-radius (L2,
    pixel units in [0, 1]) along ``directions`` random unit directions in input space to the
    first change of predicted label, capped at ``max_radius``. The first change is bracketed by
    a scan of ``scan_steps`` equal steps and refined by ``bisections`` bisection steps. The
    log-volume of the input region the learned statement covers; reads only outputs, so it
    is invariant. Larger = weaker."""
    x, _ = data
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(x), generator=gen)[: min(n, len(x))]
    base = x[pick].reshape(len(pick), -1)
    dirs = torch.randn(len(pick), directions, base.shape[1], generator=gen)
    dirs = dirs / dirs.norm(dim=2, keepdim=True)
    origin = base[:, None, :].expand_as(dirs).reshape(-1, base.shape[1])
    dirs = dirs.reshape(-1, base.shape[1])
    label = models.predict(model, origin.reshape(-1, *x.shape[1:])).argmax(1).cpu()

    def flipped(radius):
        points = origin + radius[:, None] * dirs
        return models.predict(model, points.reshape(-1, *x.shape[1:])).argmax(1).cpu() != label

    lo = torch.zeros(len(origin))
    hi = torch.full((len(origin),), max_radius)
    found = torch.zeros(len(origin), dtype=torch.bool)
    for step in range(1, scan_steps + 1):
        r = torch.full((len(origin),), max_radius * step / scan_steps)
        change = flipped(r) & ~found
        hi[change] = r[change]
        lo[~found & ~change] = r[~found & ~change]
        found |= change
    lo[~found] = max_radius
    hi[~found] = max_radius
    for _ in range(bisections):
        mid = (lo + hi) / 2
        change = flipped(mid) & found
        hi = torch.where(change, mid, hi)
        lo = torch.where(found & ~change, mid, lo)
    radius = hi.reshape(len(pick), directions)
    return torch.log(radius).mean().item()


# ----------------------------------------------------------------------------- simplicity

def _quantised(model, step: float) -> nn.Module:
    import copy

    q = copy.deepcopy(model)
    with torch.no_grad():
        for p in q.parameters():
            p.copy_(torch.round(p / step) * step)
    return q


def coarsest_lossless_step(model, data, lo: float = 1e-6, hi: float = 10.0, iters: int = 30) -> float:
    """The largest uniform quantisation step (bisected in log space) at which no training
    prediction changes."""
    x, _ = data
    reference = models.predict(model, x).argmax(1)

    def lossless(step):
        return bool((models.predict(_quantised(model, step), x).argmax(1) == reference).all())

    if not lossless(lo):
        return lo
    if lossless(hi):
        return hi
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if lossless(mid) else (lo, mid)
    return lo


@register("simplicity_description_length", "simplicity", invariant=False)
def simplicity_description_length(model, data) -> float:
    """Primary simplicity measure: minus the description length, in bits, of the weights at the
    coarsest uniform quantisation step that changes no training prediction: the integers
    round(w / step) as little-endian int32, compressed by lzma (preset 9), plus 32 bits for
    the step. Depends on the encoding, so not invariant. Larger = simpler."""
    step = coarsest_lossless_step(model, data)
    ints = torch.cat([torch.round(p.detach().reshape(-1) / step) for p in model.parameters()])
    raw = ints.to(torch.int32).cpu().numpy().astype("<i4").tobytes()
    return -(8.0 * len(lzma.compress(raw, preset=9)) + 32)


@register("simplicity_l2", "simplicity", invariant=False)
def simplicity_l2(model, data) -> float:
    """Secondary simplicity measure: minus the L2 norm of all weights and biases. Larger = simpler."""
    return -torch.sqrt(sum((p.detach().double() ** 2).sum() for p in model.parameters())).item()


# ----------------------------------------------------------------------------- tables

def measure_table(networks: dict, train_data, test_data, names: list[str] | None = None,
                  options: dict | None = None, reference: str | None = None, progress: bool = True):
    """One row per network (``networks``: label -> model), one column per measure in ``names``
    (default: all), plus train/test loss and accuracy and, against the ``reference`` network,
    the number of changed test predictions and the largest logit difference."""
    import pandas as pd
    from tqdm.auto import tqdm

    names = list(MEASURES) if names is None else names
    unknown = sorted(set(names) - set(MEASURES))
    if unknown:
        raise ValueError(f"unknown measure(s) {unknown}; registered: {sorted(MEASURES)}")
    options = options or {}
    train_x, train_y = train_data
    test_x, test_y = test_data
    ref_logits = None if reference is None else models.predict(networks[reference], test_x)
    rows = []
    for label, model in tqdm(networks.items(), desc="networks", disable=not progress):
        row = {"network": label}
        row.update({f"train_{k}": v for k, v in logit_metrics(models.predict(model, train_x), train_y).items()})
        test_logits = models.predict(model, test_x)
        row.update({f"test_{k}": v for k, v in logit_metrics(test_logits, test_y).items()})
        if ref_logits is not None:
            row["predictions_changed"] = int((test_logits.argmax(1) != ref_logits.argmax(1)).sum())
            row["max_logit_change"] = (test_logits - ref_logits).abs().max().item()
        for name in names:
            row[name] = MEASURES[name](model, train_data, **options.get(name, {}))
        rows.append(row)
    return pd.DataFrame(rows).set_index("network")
