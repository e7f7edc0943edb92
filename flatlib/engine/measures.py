"""The registry of measures: name -> function(model, data, **options) -> float.

Every entry is tagged with its family (sharpness, weakness, simplicity, bound, margin) and
whether it is invariant under function-preserving reparameterisation (``flatlib.reparam``); the
tag is checked both ways by ``tests/test_measures.py``. Sign conventions: a larger sharpness
value means sharper, a larger weakness value means weaker (more is left open), a larger
simplicity value means simpler. The margin family holds the known predictors of generalisation
a weakness reading may stand in for (margins on the output and in input space, input
sensitivity, the path norm); each states its own sign (a larger margin is a larger margin, a
larger norm a larger norm). ``data`` is the network's training data, a ``flatlib.data.Dataset`` or an
``(inputs, targets)`` pair. Definitions with sources are in ``book/methods.md``.
"""
from __future__ import annotations

import lzma
import math
import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from flatlib.engine import data as fdata
from flatlib.engine import hessian, models, pacbayes, reparam
from flatlib.infrastructure import keys
from flatlib.infrastructure.threads import one_thread

FAMILIES = ("sharpness", "weakness", "simplicity", "bound", "margin")
# Extras (``EXTRAS``) may also be diagnostics: numbers about how a measure behaved, not measures.
EXTRA_FAMILIES = (*FAMILIES, "diagnostic")


@dataclass(frozen=True)
class Measure:
    name: str
    family: str
    invariant: bool
    fn: Callable
    needs_init: bool = False  # takes init=<the network's initial state dict>
    fixed: dict = field(default_factory=dict)  # options a named variant fixes (``EXTRAS``)
    reads_unseen_only: bool = False  # reads no training image, only unseen probe inputs
    # The version of the computation (``flatlib.keys``): bump it with any change that can change
    # the measure's value (its code or anything it calls, e.g. flatlib.hessian), and re-record
    # the fingerprints (``python -m flatlib fingerprints --record``). A variant shares its base's.
    version: int = 1

    def __call__(self, model: nn.Module, data, subsample: int | None = None, **options) -> float:
        """The measure of ``model`` on ``data``. A network without parameters, with a
        non-finite weight, or whose outputs on ``data`` are not all finite (a diverged network)
        is refused with one error before any work, and so is a NaN result: a measure never
        reports a plausible number for a broken network.

        With ``subsample`` (every measure takes it), the measure sees a fixed class-stratified
        subset of that many of the training examples (``flatlib.data.subsample``, seed 0), so a
        network trained on 20,000 images costs no more to measure than one trained on 1,000;
        a measure that reads only unseen probe inputs (``reads_unseen_only``) still draws them
        from outside the whole training subset, so for it ``subsample`` changes nothing.

        It runs on one CPU thread (the process's count is restored afterwards): how a product
        is split across threads changes the order of its floating-point sums, so on two threads
        some measures differ from one thread's in the last bits, while the store key knows
        nothing of threads. One thread (``flatlib.threads``) makes a stored number the same
        whoever computed it."""
        clash = sorted(set(options) & set(self.fixed))
        if clash:
            raise ValueError(f"{self.name} is a named variant that fixes {clash}; use the base measure to vary them")
        if subsample is not None and not self.reads_unseen_only:
            data = _subsample(data, subsample)
        check_network(model, data, self.name)
        keys.note(f"measure:{self.name}", self.version)
        with one_thread():
            value = float(self.fn(model, data, **self.fixed, **options))
        if math.isnan(value):
            raise MeasureError(f"measure {self.name!r} came out NaN on this network; it is not reported.")
        return value

    @property
    def doc(self) -> str:
        return self.fn.__doc__ or ""


MEASURES: dict[str, Measure] = {}
# Named variants of registered measures (other fixed options) and diagnostics: computed only
# when a chapter asks for them by name, never part of "every measure in the registry". A change
# to a pre-registered measure is a new entry here, never an edit of the registered one.
EXTRAS: dict[str, Measure] = {}


def lookup(name: str) -> Measure:
    """The measure, variant or diagnostic called ``name``; an unknown name lists the known ones."""
    if name in MEASURES:
        return MEASURES[name]
    if name in EXTRAS:
        return EXTRAS[name]
    raise KeyError(f"unknown measure {name!r}; registered: {sorted(MEASURES)}; variants and diagnostics: "
                   f"{sorted(EXTRAS)}")


keys.register_kind("measure", lambda name: lookup(name).version)


# Subsamples, kept while their data lives, so two measures of one table share the very tensors
# (and with them the memoised exact diagonal).
# id(images) -> (weak reference to the images, {n: subsample}); an entry whose images died is replaced.
_SUBSAMPLES: dict[int, tuple] = {}


def _subsample(data, n: int):
    if not isinstance(data, fdata.Dataset):
        raise ValueError("subsample needs data as a flatlib.data.Dataset")
    for key in [k for k, (ref, _) in _SUBSAMPLES.items() if ref() is None]:
        del _SUBSAMPLES[key]
    ref, kept = _SUBSAMPLES.get(id(data.images), (None, None))
    if ref is None or ref() is not data.images:
        kept = {}
        _SUBSAMPLES[id(data.images)] = (weakref.ref(data.images), kept)
    if n not in kept:
        kept[n] = fdata.subsample(data, n)
    return kept[n]


class MeasureError(ValueError):
    """A network a measure cannot honestly be computed on."""


def check_network(model: nn.Module, data, name: str = "this measure") -> None:
    """Refuse a network that has no parameters, a non-finite weight, or non-finite outputs on
    ``data`` (inputs as the first element of ``data``), with one error that says what to do."""
    params = list(model.parameters())
    if not params:
        raise MeasureError(f"{name}: the network has no parameters; measures need a trained network.")
    if not all(torch.isfinite(p).all() for p in params):
        raise MeasureError(f"{name}: the network has non-finite weights (it diverged); "
                           "train it with a smaller learning rate, or leave it out of the study.")
    inputs, _ = data
    if not torch.isfinite(models.predict(model, inputs)).all():
        raise MeasureError(f"{name}: the network's outputs on the data are not all finite (it diverged); "
                           "train it with a smaller learning rate, or leave it out of the study.")


def register(name: str, family: str, invariant: bool, needs_init: bool = False, reads_unseen_only: bool = False,
             version: int = 1):
    """Register ``fn`` as measure ``name`` of ``family``, at ``version`` (``Measure.version``)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}")

    def wrap(fn):
        MEASURES[name] = Measure(name, family, invariant, fn, needs_init, reads_unseen_only=reads_unseen_only,
                                 version=version)
        return fn

    return wrap


def variant(name: str, base: str, **fixed) -> None:
    """Register ``name`` in ``EXTRAS``: the registered measure ``base`` with ``fixed`` options (and
    its version)."""
    measure = MEASURES[base]
    EXTRAS[name] = Measure(name, measure.family, measure.invariant, measure.fn, measure.needs_init, dict(fixed),
                           measure.reads_unseen_only, measure.version)


def diagnostic(name: str, fn: Callable, invariant: bool, version: int = 1, **fixed) -> None:
    """Register ``name`` in ``EXTRAS`` as a diagnostic: a number about a measure, not a measure."""
    EXTRAS[name] = Measure(name, "diagnostic", invariant, fn, False, dict(fixed), version=version)


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


def _stamp(tensors, batch_size):
    """What a diagonal depends on: the very tensors (weakly referenced, so a freed tensor whose
    memory is reused never matches), their storage, shape and in-place version counter."""
    return batch_size, [(weakref.ref(t), t.data_ptr(), t.shape, t.dtype, t.device, t._version) for t in tensors]


def _same(stamp, tensors, batch_size) -> bool:
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
    if cached is not None and _same(cached[0], tensors, batch_size):
        return cached[1]
    diag = hessian.diagonal(model, data, batch_size=batch_size)
    _DIAGONALS[model] = (_stamp(tensors, batch_size), diag)
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


# ----------------------------------------------------------------------------- weakness

PROBE_SPLITS = ("train", "test_inputs")


def _probe_inputs(data, probe, probe_n: int, seed: int, probe_split: str = "train"):
    if probe_split not in PROBE_SPLITS:
        raise ValueError(f"probe_split must be one of {PROBE_SPLITS}, got {probe_split!r}")
    if probe is not None:
        return probe[0] if isinstance(probe, (tuple, list, fdata.Dataset)) else probe
    if isinstance(data, fdata.Dataset) and probe_split == "test_inputs":
        full = fdata.load(data.name, data.split)
        if len(data) < len(full):
            raise ValueError(f"probe_split='test_inputs' is only for networks trained on the whole "
                             f"{data.name}/{data.split} split; this one saw {len(data)} of {len(full)} "
                             f"images, so probe with the unseen training images (probe_split='train')")
        return fdata.load(data.name, "test", n=probe_n, seed=seed).images  # inputs only, never labels
    if isinstance(data, fdata.Dataset):
        return fdata.complement(data, n=probe_n, seed=seed).images
    raise ValueError("pass probe=<unlabelled images the network never trained on>, or data as a "
                     "flatlib.data.Dataset so they can be drawn from outside its training subset")


@register("weakness_open_labels", "weakness", invariant=True, reads_unseen_only=True)
def weakness_open_labels(model, data, tau: float = 0.1, probe=None, probe_n: int = 2000, seed: int = 0,
                         probe_split: str = "train") -> float:
    """Primary weakness measure: mean over unseen probe images x of log2 |{y : p(y|x) >= tau}|,
    in bits, with tau = 0.1 fixed in advance. The probe images come from the training split
    outside the network's own training subset, never from the test set; only a network
    trained on the whole training split, which leaves none unseen, may use
    ``probe_split="test_inputs"`` (test images, never their labels). It reads only the
    network's outputs, so it is invariant to any reparameterisation. Larger = weaker
    (more labelings of unseen inputs left open)."""
    inputs = _probe_inputs(data, probe, probe_n, seed, probe_split)
    probs = torch.softmax(models.predict(model, inputs).double(), dim=1)
    # Every input keeps at least its top label open, so the count is >= 1 even for tau > 0.5.
    counts = torch.maximum((probs >= tau).sum(1), torch.ones(len(probs), dtype=torch.long, device=probs.device))
    return torch.log2(counts.double()).mean().item()


# The rays of weakness_input_volume, shared with its diagnostic: model -> {options: (stamp, radii)}.
_RADII: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def input_volume_radii(model, data, directions: int = 8, n: int = 200, max_radius: float = 20.0,
                       scan_steps: int = 40, bisections: int = 20, seed: int = 0) -> torch.Tensor:
    """The radii (``n`` images x ``directions``) of ``weakness_input_volume``: along each random
    unit direction from each of ``n`` training images, the L2 distance (pixel units in [0, 1]) to
    the first change of predicted label, found by a scan of ``scan_steps`` equal steps up to
    ``max_radius`` and ``bisections`` bisection steps; a ray that never changes label stops at
    ``max_radius`` (capped). Computed once per network, data and options (as ``exact_diagonal``)."""
    return input_volume_rays(model, data, directions, n, max_radius, scan_steps, bisections, seed)[0]


def input_volume_rays(model, data, directions: int = 8, n: int = 200, max_radius: float = 20.0,
                      scan_steps: int = 40, bisections: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(radii, capped)``: ``input_volume_radii``'s radii and, of the same shape, True for each ray
    that never changed label within ``max_radius``. The mask is what the scan found, not a
    comparison of radii with the cap: a cap such as 0.7 is not a float32 number, and a radius
    stored at float32(0.7) < 0.7 would not count as capped."""
    x, _ = data
    max_radius = float(max_radius)  # an int cap would make integer radii (torch.full of an int)
    options = (directions, n, max_radius, scan_steps, bisections, seed)
    tensors = [*model.parameters(), x]
    cached = _RADII.setdefault(model, {}).get(options)
    if cached is not None and _same(cached[0], tensors, None):
        return cached[1]
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
    rays = (hi.reshape(len(pick), directions), (~found).reshape(len(pick), directions))
    _RADII[model][options] = (_stamp(tensors, None), rays)
    return rays


@register("weakness_input_volume", "weakness", invariant=True)
def weakness_input_volume(model, data, directions: int = 8, n: int = 200, max_radius: float = 20.0,
                          scan_steps: int = 40, bisections: int = 20, seed: int = 0) -> float:
    """Secondary weakness measure: mean over ``n`` training images of the mean log-radius (L2,
    pixel units in [0, 1]) along ``directions`` random unit directions in input space to the
    first change of predicted label, capped at ``max_radius`` (``input_volume_radii``). The
    log-volume of the input region the learned statement covers; reads only outputs, so it
    is invariant. Larger = weaker. The fraction of rays that reach the cap is the diagnostic
    ``input_volume_capped``; a larger cap is the named variant ``weakness_input_volume_r40``."""
    radii = input_volume_radii(model, data, directions, n, max_radius, scan_steps, bisections, seed)
    return torch.log(radii).mean().item()


def input_volume_capped(model, data, directions: int = 8, n: int = 200, max_radius: float = 20.0,
                        scan_steps: int = 40, bisections: int = 20, seed: int = 0) -> float:
    """The fraction of ``weakness_input_volume``'s rays that reach ``max_radius`` without a
    change of label: the share of the measure that is the cap, not the network."""
    _, capped = input_volume_rays(model, data, directions, n, max_radius, scan_steps, bisections, seed)
    return capped.double().mean().item()


# Variants (second wave): tau of the open-labels count, which methods.md promises at every value,
# and a cap on the input-volume rays twice as far out, at the same scan step.
for _tau in (0.01, 0.05, 0.2):
    variant(f"weakness_open_labels_tau{_tau:g}", "weakness_open_labels", tau=_tau)
variant("weakness_input_volume_r40", "weakness_input_volume", max_radius=40.0, scan_steps=80)
# Version 2: a ray counts as capped when the scan found no change of label, exact for any cap.
diagnostic("input_volume_capped", input_volume_capped, invariant=True, version=2)
diagnostic("input_volume_r40_capped", input_volume_capped, invariant=True, version=2, max_radius=40.0, scan_steps=80)


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


# ----------------------------------------------------------------------------- bounds

@register("pacbayes_bound", "bound", invariant=False, needs_init=True)
def pacbayes_bound(model, data, init, samples: int = 50, delta: float = 0.05, seed: int = 0) -> float:
    """PAC-Bayes bound on the test error of the posterior N(w, sigma^2 I) with prior
    N(w0, sigma^2 I) at the initial weights, kl-inverse form, the best sigma of a fixed grid
    with a union bound, the Monte Carlo error of the posterior replaced by its upper
    confidence bound (``pacbayes.gaussian_bound``; Dziugaite & Roy 2017). Holds with
    probability 1 - delta - 0.01. Larger = looser (predicts worse generalisation)."""
    return pacbayes.gaussian_bound(model, data, init, "isotropic", samples=samples, delta=delta, seed=seed).bound


@register("pacbayes_mag_bound", "bound", invariant=False, needs_init=True)
def pacbayes_mag_bound(model, data, init, samples: int = 50, delta: float = 0.05, seed: int = 0) -> float:
    """The same bound with magnitude-aware posterior noise (after Jiang et al. 2020): posterior
    std sigma |w_i| + 1e-3, prior std sigma rms(w0 of the same tensor) + 1e-3, so the prior
    depends on the initialisation only. Larger = looser."""
    return pacbayes.gaussian_bound(model, data, init, "magnitude", samples=samples, delta=delta, seed=seed).bound


@register("pacbayes_sharpness", "bound", invariant=False)
def pacbayes_sharpness(model, data, drop: float = 0.1, samples: int = 10, seed: int = 0) -> float:
    """1 / sigma^2 for the isotropic weight-noise scale sigma at which training accuracy drops
    by ``drop`` = 0.1 (bisection over seeded draws; Jiang et al. 2020, "pacbayes.flatness").
    Larger = sharper."""
    return pacbayes.sharpness_sigma(model, data, "isotropic", drop=drop, samples=samples, seed=seed) ** -2


@register("pacbayes_mag_sharpness", "bound", invariant=False)
def pacbayes_mag_sharpness(model, data, drop: float = 0.1, samples: int = 10, seed: int = 0) -> float:
    """1 / sigma^2 for the magnitude-aware noise scale (std sigma |w_i| + 1e-3) at which
    training accuracy drops by 0.1 ("pacbayes.mag.flatness"). Without the 1e-3 floor it would
    be rescaling-invariant; with it, it is not. Larger = sharper."""
    return pacbayes.sharpness_sigma(model, data, "magnitude", drop=drop, samples=samples, seed=seed) ** -2


# ----------------------------------------------------------------------------- margins
#
# The known predictors a reading of weakness may be standing in for: the output margin (raw and
# normalised by a spectral complexity), the first-order distance to the decision boundary, the
# input Jacobian on unseen inputs, and the path norm. Those that read weights walk the network
# as a chain of layers (``layer_chain``).

# Pre-registered: the 10th percentile of a margin distribution, as Jiang et al. (2020, "Fantastic
# generalization measures") take it: the margin of the hardest tenth of the training set, which
# a bound's worst case is about, without resting on the single hardest (possibly mislabelled) point.
MARGIN_QUANTILE = 0.1
# Examples per forward-backward pass of the gradient-based margins; changes no number but rounding.
_GRADIENT_BATCH = 500
_CHAIN = (nn.Linear, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Flatten)


def layer_chain(model: nn.Module, name: str = "this measure") -> list[nn.Module]:
    """The modules of ``model`` in forward order, if it is a plain ``nn.Sequential`` of Linear,
    Conv2d (zero padding), ReLU, MaxPool2d (non-overlapping windows, no dilation) and Flatten,
    as every network of ``flatlib.models`` without BatchNorm is; anything else is refused."""
    if not isinstance(model, nn.Sequential):
        raise MeasureError(f"{name} reads the network as a chain of layers; pass an nn.Sequential "
                           "(flatlib.models.mlp or cnn)")
    chain = list(model)
    other = sorted({type(m).__name__ for m in chain if not isinstance(m, _CHAIN)})
    if other:
        raise MeasureError(f"{name} is defined for chains of Linear, Conv2d, ReLU, MaxPool2d and Flatten; this "
                           f"network also has {other} (build it with batchnorm=False)")
    for m in chain:
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            raise MeasureError(f"{name}: Conv2d with padding_mode={m.padding_mode!r}; only zero padding is supported")
        if isinstance(m, nn.MaxPool2d) and (m.dilation not in (1, (1, 1)) or m.stride != m.kernel_size):
            raise MeasureError(f"{name}: MaxPool2d windows must not overlap or dilate (stride = kernel_size)")
    return chain


def _low_quantile(values: torch.Tensor, q: float) -> float:
    """The ``q``-quantile of ``values`` by the "lower" rule (numpy's ``method="lower"``): the
    order statistic at floor(q (n - 1)), a value that occurs, so an infinite value above it
    never enters an interpolation."""
    return torch.quantile(values.double().cpu(), q, interpolation="lower").item()


def logit_margins(model, data) -> torch.Tensor:
    """f_y(x) - max_{j != y} f_j(x) for each example (x, y) of ``data``, in logits (float64):
    positive where the network classifies x correctly, negative where it does not."""
    x, y = data
    logits = models.predict(model, x).double()
    y = y.to(logits.device)[:, None]
    return (logits.gather(1, y) - logits.scatter(1, y, -math.inf).max(1, keepdim=True).values).squeeze(1)


@register("margin_output", "margin", invariant=True)
def margin_output(model, data, quantile: float = MARGIN_QUANTILE) -> float:
    """The output margin: the ``quantile`` (pre-registered 0.1, the 10th percentile, by the
    "lower" rule) over the training examples of the logit margin f_y(x) - max_{j != y} f_j(x),
    in logits, raw (Jiang et al. 2020 take the same percentile). It reads only the network's
    outputs, so it is invariant. Larger = larger margin (negative when more than a tenth of the
    training set is misclassified)."""
    return _low_quantile(logit_margins(model, data), quantile)


@dataclass(frozen=True)
class SpectralComplexity:
    """Bartlett, Foster & Telgarsky's (2017) spectral complexity of a chain of weight layers
    A_1 ... A_L (biases left out, reference matrices M_i = 0):
    ``value`` = prod_i s_i (sum_i (r_i / s_i)^(2/3))^(3/2), with ``spectral_norms`` s_i = ||A_i||_2
    and ``l21_norms`` r_i = ||A_i^T||_{2,1}, the sum over the rows of A_i of their L2 norms."""

    value: float
    spectral_norms: list
    l21_norms: list


def _conv_operator(conv: nn.Conv2d, in_shape: tuple):
    """The bias-free convolution on inputs of shape ``in_shape`` (C, H, W) as a scipy
    LinearOperator in float64, its adjoint from autograd (a vector-Jacobian product of a linear
    map is its transpose applied, whatever the output padding)."""
    import numpy as np
    from scipy.sparse.linalg import LinearOperator

    weight = conv.weight.detach().double().cpu()

    def apply(v):
        return F.conv2d(v.reshape(1, *in_shape), weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)

    zero = torch.zeros(int(np.prod(in_shape)), dtype=torch.float64)
    out_shape = apply(zero).shape[1:]
    _, adjoint = torch.func.vjp(apply, zero)
    return LinearOperator(
        (int(np.prod(out_shape)), zero.numel()), dtype=np.float64,
        matvec=lambda v: apply(torch.as_tensor(v, dtype=torch.float64).reshape(-1)).reshape(-1).numpy(),
        rmatvec=lambda u: adjoint(torch.as_tensor(u, dtype=torch.float64).reshape(1, *out_shape))[0].numpy())


def spectral_complexity(model, inputs: torch.Tensor) -> SpectralComplexity:
    """The spectral complexity (``SpectralComplexity``) of ``model``, a chain of layers
    (``layer_chain``); ``inputs`` fix the input shape a convolution acts on.

    A Linear layer's A_i is its weight matrix, its spectral norm from a full SVD. A Conv2d
    layer's A_i is the linear map the convolution (without bias, zero padding) applies to its
    actual input, a matrix of (C_out H_out W_out) x (C_in H_in W_in): its spectral norm by ARPACK
    (``scipy.sparse.linalg.svds``, to machine precision) from the convolution and its adjoint,
    and its row norms from one convolution of the squared kernel over an all-ones input (a row is
    the kernel of one output channel at one position, cut off where it hangs over the border).
    ReLU and non-overlapping max-pooling are 1-Lipschitz in L2 (a max moves by at most the
    largest change in its window) and Flatten is an isometry, so they enter with rho_i = 1.

    Biases are left out, as in Bartlett et al.'s bias-free setting; they do not change a
    layer's Lipschitz constant. The reference matrices are M_i = 0 rather than the initial
    weights: the measure then reads the trained network alone, and the layer-wise alpha-scaling
    of Dinh et al. (which would move A_i away from a fixed initialisation) leaves it unchanged."""
    import numpy as np
    from scipy.sparse.linalg import svds

    chain = layer_chain(model, "spectral_complexity")
    shapes = {}

    def record(module, inp, out):  # returns None, so the forward pass is left as it is
        shapes[module] = tuple(inp[0].shape[1:])

    hooks = [m.register_forward_hook(record) for m in chain if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        models.predict(model, inputs[:1])
    finally:
        for hook in hooks:
            hook.remove()
    norms, l21 = [], []
    for m in chain:
        if isinstance(m, nn.Linear):
            weight = m.weight.detach().double().cpu()
            norms.append(torch.linalg.matrix_norm(weight, ord=2).item())
            l21.append(weight.norm(dim=1).sum().item())
        elif isinstance(m, nn.Conv2d):
            operator = _conv_operator(m, shapes[m])
            start = np.full(min(operator.shape), 1 / math.sqrt(min(operator.shape)))
            norms.append(float(svds(operator, k=1, tol=0, v0=start, return_singular_vectors=False)[0]))
            squared = F.conv2d(torch.ones(1, *shapes[m], dtype=torch.float64), m.weight.detach().double().cpu() ** 2,
                               None, m.stride, m.padding, m.dilation, m.groups)
            l21.append(squared.sqrt().sum().item())
    ratios = sum((r / s) ** (2 / 3) for r, s in zip(l21, norms))
    return SpectralComplexity(math.prod(norms) * ratios ** 1.5, norms, l21)


@register("margin_output_normalised", "margin", invariant=False)
def margin_output_normalised(model, data, quantile: float = MARGIN_QUANTILE) -> float:
    """The output margin (``margin_output``: the 10th percentile of the training logit margins)
    divided by the spectral complexity R_A = prod_i ||A_i||_2 (sum_i (||A_i^T||_{2,1} /
    ||A_i||_2)^(2/3))^(3/2) of Bartlett, Foster & Telgarsky (2017), with reference matrices 0 and
    biases left out (``spectral_complexity``, which says why): logits per unit of spectral
    complexity. Bartlett et al. also divide by the scale of the data, ||X||_F / n; for networks
    compared on one data set that is a constant of the data, not of the network, and it is left
    out. Unchanged by alpha-scaling and permutation, but per-unit rescaling moves the spectral
    norms, so not invariant. Larger = larger margin."""
    x, _ = data
    return margin_output(model, data, quantile) / spectral_complexity(model, x).value


def input_margin_distances(model, data) -> torch.Tensor:
    """The first-order distance from each training input to the decision boundary (Elsayed et
    al. 2018), in input units (L2, pixels in [0, 1]):

        d(x) = min_{j != y} (f_y(x) - f_j(x)) / ||grad_x f_y(x) - grad_x f_j(x)||_2,

    the distance to the boundary between y and each other class with the logits replaced by
    their tangent planes at x; exact for a linear network, for which y's region is an
    intersection of half-spaces and the distance to its complement is the smallest distance to
    one of their planes. Negative for a misclassified input; 0 on a tie; +inf where a class's
    logit difference has zero gradient and a positive value. One backward pass per class."""
    x, y = data
    first = next(model.parameters())
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(x), _GRADIENT_BATCH):
            xb = x[i:i + _GRADIENT_BATCH].to(first.device, first.dtype).detach().requires_grad_(True)
            yb = y[i:i + _GRADIENT_BATCH].to(first.device)
            logits = model(xb)
            grads = _class_input_gradients(logits, xb).double()
            rows = torch.arange(len(xb), device=first.device)
            margin = logits.detach().double().gather(1, yb[:, None]) - logits.detach().double()
            norm = (grads[rows, yb][:, None, :] - grads).norm(dim=2)
            distance = torch.where(margin == 0, torch.zeros_like(margin), margin / norm)
            distance[rows, yb] = math.inf
            out.append(distance.min(1).values)
    finally:
        model.train(was_training)
    return torch.cat(out)


def _class_input_gradients(outputs: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """(examples, classes, input size): each example's gradient of each output with respect to its
    own input, one backward pass per class. Examples do not interact in eval mode, so the gradient
    of a class's output summed over the batch is every example's own gradient."""
    classes = outputs.shape[1]
    return torch.stack([torch.autograd.grad(outputs[:, c].sum(), xb, retain_graph=c < classes - 1)[0]
                        .reshape(len(xb), -1) for c in range(classes)], 1)


@register("margin_input_distance", "margin", invariant=True)
def margin_input_distance(model, data, quantile: float = MARGIN_QUANTILE) -> float:
    """The input-space margin: the ``quantile`` (pre-registered 0.1, the same 10th percentile as
    ``margin_output``, "lower" rule) over the training inputs of the first-order distance to the
    decision boundary, min_{j != y} (f_y(x) - f_j(x)) / ||grad_x (f_y - f_j)(x)||_2 (Elsayed et
    al. 2018; ``input_margin_distances``), in input units (L2, pixels in [0, 1], the units of
    ``weakness_input_volume``'s radii). It reads only the function the network computes, so it
    is invariant. Larger = larger margin."""
    return _low_quantile(input_margin_distances(model, data), quantile)


@register("jacobian_norm", "margin", invariant=True, reads_unseen_only=True)
def jacobian_norm(model, data, probe=None, probe_n: int = 2000, seed: int = 0, probe_split: str = "train") -> float:
    """Input sensitivity (Novak et al. 2018): the mean over unseen probe images x of the
    Frobenius norm ||d softmax(f(x)) / dx||_F of the Jacobian of the class probabilities with
    respect to the input, in probability per input unit (pixels in [0, 1]). The probe images
    are drawn exactly as ``weakness_open_labels`` draws them (the same 2,000 images of the
    training split outside the network's training subset at the same seed; never test images
    but for a network trained on the whole split), so the two read the same unseen inputs. It
    reads only the function, so it is invariant. Larger = more sensitive to its input."""
    inputs = _probe_inputs(data, probe, probe_n, seed, probe_split)
    first = next(model.parameters())
    was_training = model.training
    model.eval()
    norms = []
    try:
        for i in range(0, len(inputs), _GRADIENT_BATCH):
            xb = inputs[i:i + _GRADIENT_BATCH].to(first.device, first.dtype).detach().requires_grad_(True)
            probs = torch.softmax(model(xb), dim=1)
            norms.append(_class_input_gradients(probs, xb).double().pow(2).sum((1, 2)).sqrt())
    finally:
        model.train(was_training)
    return torch.cat(norms).mean().item()


@register("path_norm", "margin", invariant=True)
def path_norm(model, data) -> float:
    """The L2 path norm (Neyshabur, Tomioka & Srebro 2015): sqrt(sum over input-to-output paths
    of the product of the squared weights along the path), computed by one forward pass of the
    network with every weight and bias squared, ReLU dropped (everything is non-negative) and
    max-pooling summed, on an all-ones input; the sum of the outputs is the square. Biases are
    squared too, as in the forward-pass implementation of Jiang et al.'s (2020) "path.norm"
    (which reports the square): a bias starts the paths that leave its unit. A max-pooling
    unit passes every path through each unit of its window with weight 1, the extension of
    Gonon et al. (2024) to max-pooling. Per-unit rescalings and permutations map paths onto
    paths of the same product, so it is invariant. Larger = larger norm."""
    x, _ = data
    chain = layer_chain(model, "path_norm")
    first = next(model.parameters())
    h = torch.ones(1, *x.shape[1:], dtype=torch.float64, device=first.device)
    with torch.no_grad():
        for m in chain:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                weight = m.weight.double() ** 2
                bias = None if m.bias is None else m.bias.double() ** 2
                h = F.linear(h, weight, bias) if isinstance(m, nn.Linear) else F.conv2d(
                    h, weight, bias, m.stride, m.padding, m.dilation, m.groups)
            elif isinstance(m, nn.MaxPool2d):
                h = F.avg_pool2d(h, m.kernel_size, m.stride, m.padding, m.ceil_mode, divisor_override=1)
            elif isinstance(m, nn.Flatten):
                h = m(h)
    return h.sum().sqrt().item()
