"""The weakness, simplicity and bound measures of ``flatlib.measures``: the labels a network leaves
open and the input volume around its training inputs (weakness: larger means weaker), the
description length and L2 norm of its weights (simplicity), and the PAC-Bayes bounds and
sharpness of Jiang et al. Each is versioned in the registry (``version=``).
"""
from __future__ import annotations

import lzma
import math
import weakref

import torch
from torch import nn

from flatlib.engine import data as fdata
from flatlib.engine import (
    models,
    pacbayes,
    sharpness,  # noqa: F401 (registered first: the registry's order does not depend on who imports what)
)
from flatlib.engine.measure_registry import diagnostic, register, variant
from flatlib.engine.sharpness import same_stamp, tensor_stamp

# ----------------------------------------------------------------------------- weakness

PROBE_SPLITS = ("train", "test_inputs")


def probe_inputs(data, probe, probe_n: int, seed: int, probe_split: str = "train"):
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
    inputs = probe_inputs(data, probe, probe_n, seed, probe_split)
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
    if cached is not None and same_stamp(cached[0], tensors, None):
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
    _RADII[model][options] = (tensor_stamp(tensors, None), rays)
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
