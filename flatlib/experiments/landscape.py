"""Pictures of a loss landscape and the numbers behind them (the primer).

* Slices: the training loss along one or two directions through the trained weights,
  L(w + a d1 + b d2). A *plain* direction is a Gaussian vector of unit length; a
  *filter-normalised* one (Li et al. 2018, "Visualizing the loss landscape of neural nets")
  rescales each filter of the direction (the incoming weights of one unit, or one output
  channel of a convolution) to the norm of the same filter of the weights, and is zero on
  biases. Dinh et al.'s alpha-scaling (``flatlib.reparam.alpha_scale``: one layer's weights
  and biases times alpha, the next layer's weights over alpha) rescales every filter of a layer
  by one factor, and the normalised direction with it, so the normalised slice of the
  reparameterised network is the slice of the original, while the plain one changes. A
  per-unit rescaling with *different* factors (``reparam.neuron_scale``) rescales the columns
  of the next layer's filters unequally, which filter norms cannot undo: there the normalised
  slice moves too.
* Linear interpolation between two weight vectors (Goodfellow, Vinyals & Saxe 2015):
  L((1 - t) w_a + t w_b).
* The optimisation trajectory projected on its top two principal directions (Li et al. 2018,
  section 7): the weights at the end of every epoch, minus the final weights, by PCA.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from flatlib.engine import train as ftrain
from flatlib.experiments import study

# The version of this module's computations (``flatlib.keys``): the loss-landscape slices and paths.
# Bump it with any change that can change their numbers, and re-record the fingerprints.
VERSION = 1
# The name summaries record this VERSION under ("module:flatlib.landscape"), kept wherever the module lives.
VERSION_NAME = "flatlib.landscape"

NORMALISATIONS = ("filter", None)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters()}


def filter_normalise(direction: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``direction`` with each filter (row of a weight matrix, output channel of a convolution
    kernel: the weights into one unit) rescaled to the norm of the same filter of ``model``'s
    weights, and zero on every bias and other one-dimensional parameter (Li et al. 2018)."""
    weights = _weights(model)
    if set(direction) != set(weights):
        raise ValueError("the direction must have one tensor per parameter of the model")
    out = {}
    for name, w in weights.items():
        d = direction[name]
        if d.shape != w.shape:
            raise ValueError(f"direction {name} has shape {tuple(d.shape)}, the weights {tuple(w.shape)}")
        if w.dim() <= 1:
            out[name] = torch.zeros_like(w)
            continue
        d_norm = d.reshape(len(d), -1).norm(dim=1).clamp_min(torch.finfo(d.dtype).tiny)
        w_norm = w.reshape(len(w), -1).norm(dim=1)
        out[name] = d * (w_norm / d_norm).reshape((-1,) + (1,) * (d.dim() - 1))
    return out


def random_direction(model: nn.Module, seed: int = 0, normalise: str | None = "filter") -> dict[str, torch.Tensor]:
    """A Gaussian direction in weight space drawn from ``seed`` (the same draw for any network of
    the same architecture): filter-normalised (``"filter"``) or plain (None: scaled to unit
    length over all parameters)."""
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")
    gen = torch.Generator().manual_seed(seed)
    weights = _weights(model)
    raw = {name: torch.randn(w.shape, generator=gen, dtype=w.dtype).to(w.device) for name, w in weights.items()}
    if normalise == "filter":
        return filter_normalise(raw, model)
    total = torch.sqrt(sum((d ** 2).sum() for d in raw.values()))
    return {name: d / total for name, d in raw.items()}


def _loss_at(model, point: dict, x, y, loss) -> tuple[float, float]:
    with torch.no_grad():
        out = functional_call(model, point, (x,))
        acc = (out.argmax(1) == y).double().mean().item() if out.dim() == 2 and y.dtype == torch.long else float("nan")
        return loss(out, y).item(), acc


def _prepared(model, data):
    x, y = data
    first = next(model.parameters())
    return x.to(first.device, first.dtype), y.to(first.device)


@dataclasses.dataclass(frozen=True)
class Slice:
    """Losses (and accuracies, for classifiers) on a grid of steps: 1-D (``steps``) or 2-D
    (``steps`` by ``steps2``, rows along the first direction)."""

    steps: np.ndarray
    loss: np.ndarray
    acc: np.ndarray
    steps2: np.ndarray | None = None


def slice_1d(model: nn.Module, data, direction: dict, steps, loss=F.cross_entropy) -> Slice:
    """The mean training loss ``loss`` at w + a d for every a in ``steps``."""
    x, y = _prepared(model, data)
    was_training = model.training
    model.eval()
    w = _weights(model)
    try:
        values = [_loss_at(model, {k: w[k] + float(a) * direction[k] for k in w}, x, y, loss) for a in steps]
    finally:
        model.train(was_training)
    return Slice(np.asarray(steps, dtype=float), np.array([v[0] for v in values]), np.array([v[1] for v in values]))


def slice_2d(model: nn.Module, data, direction: dict, direction2: dict, steps, steps2=None,
             loss=F.cross_entropy) -> Slice:
    """The mean training loss at w + a d1 + b d2 on the grid ``steps`` x ``steps2`` (default:
    ``steps`` again)."""
    steps2 = steps if steps2 is None else steps2
    x, y = _prepared(model, data)
    was_training = model.training
    model.eval()
    w = _weights(model)
    try:
        values = [[_loss_at(model, {k: w[k] + float(a) * direction[k] + float(b) * direction2[k] for k in w},
                            x, y, loss) for b in steps2] for a in steps]
    finally:
        model.train(was_training)
    values = np.array(values)
    return Slice(np.asarray(steps, dtype=float), values[..., 0], values[..., 1], np.asarray(steps2, dtype=float))


def interpolate(model: nn.Module, state_a: dict, state_b: dict, data, ts, loss=F.cross_entropy) -> Slice:
    """The training loss and accuracy of ``model``'s architecture at the weights
    (1 - t) w_a + t w_b for every t in ``ts`` (Goodfellow et al. 2015): t = 0 is ``state_a``,
    t = 1 is ``state_b``. The states are state dicts of networks of one architecture."""
    names = [name for name, _ in model.named_parameters()]
    missing = [n for n in names if n not in state_a or n not in state_b]
    if missing:
        raise ValueError(f"both states need every parameter of the model; missing {missing}")
    x, y = _prepared(model, data)
    first = next(model.parameters())
    a = {n: state_a[n].to(first.device, first.dtype) for n in names}
    b = {n: state_b[n].to(first.device, first.dtype) for n in names}
    was_training = model.training
    model.eval()
    try:
        values = [_loss_at(model, {n: (1 - float(t)) * a[n] + float(t) * b[n] for n in names}, x, y, loss) for t in ts]
    finally:
        model.train(was_training)
    return Slice(np.asarray(ts, dtype=float), np.array([v[0] for v in values]), np.array([v[1] for v in values]))


def trajectory(config: ftrain.TrainConfig) -> list[dict]:
    """The weights (state dicts) of the network of ``config`` at initialisation and at the end
    of each epoch 1, ..., ``config.epochs``. Training is deterministic and stops only at the
    epoch cap here, so the weights after epoch k of the full run are those of the same config
    with ``epochs=k``; each is trained once and kept in the store. A config with an early stop
    rule is refused: its shorter runs could stop elsewhere."""
    if config.target_train_acc is not None or config.target_train_loss is not None or config.patience is not None:
        raise ValueError("trajectory needs a config that stops only at its epoch cap: set target_train_acc=None, "
                         "target_train_loss=None and patience=None")
    states = []
    for k in range(1, config.epochs + 1):
        result = study.trained(dataclasses.replace(config, epochs=k))
        if result.diverged:
            raise ValueError(f"the network diverged at epoch {k}; lower lr")
        if k == 1:
            states.append({name: t.clone() for name, t in result.initial_state.items()})
        states.append({name: t.detach().cpu().clone() for name, t in result.model.state_dict().items()})
    return states


@dataclasses.dataclass(frozen=True)
class Projection:
    """The trajectory in the plane of its top two principal directions: ``coords`` (one row
    per state, the final state at the origin), the share of the path's squared distance to the
    final weights each direction holds, and the directions themselves (flattened, unit length)."""

    coords: np.ndarray
    explained: np.ndarray
    directions: np.ndarray


def project_trajectory(states: list[dict]) -> Projection:
    """The trajectory's plane (after Li et al. 2018): the matrix of w_t - w_final over the
    states, its top two right singular vectors as the plane, and each state's coordinates in
    it. Not centred (Li et al. centre it, as sklearn's PCA does), so the plane passes through
    the final weights, the origin of the picture; ``explained`` is each direction's share of
    the path's summed squared distance to the final weights."""
    if len(states) < 3:
        raise ValueError("a trajectory needs at least three states to span a plane")
    flat = np.stack([torch.cat([t.reshape(-1).double() for t in s.values()]).numpy() for s in states])
    centred = flat - flat[-1]
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    directions = vt[:2]
    # Sign convention: the initial state has positive coordinates, so re-runs draw the same picture.
    signs = np.where(centred[0] @ directions.T < 0, -1.0, 1.0)
    directions = directions * signs[:, None]
    explained = sing[:2] ** 2 / (sing ** 2).sum()
    return Projection(centred @ directions.T, explained, directions)
