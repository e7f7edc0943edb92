"""Small ReLU networks for 28x28 images: an MLP and a CNN.

No BatchNorm by default, so the function-preserving reparameterisations of Dinh et al.
(2017) are exact: a ReLU network with positive per-unit rescalings computes the same function.
"""
from __future__ import annotations

import torch
from torch import nn

# The version of the architectures and their initialisation (``flatlib.keys``): bump it with any
# change to what ``build`` makes from (arch, widths) and a seed.
VERSION = 1
# The name summaries record this VERSION under ("module:flatlib.models"), kept wherever the module lives.
VERSION_NAME = "flatlib.models"

INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10


def mlp(hidden: tuple[int, ...] | list[int] = (512, 512), in_features: int = 784,
        num_classes: int = NUM_CLASSES, batchnorm: bool = False) -> nn.Sequential:
    """``Flatten -> [Linear -> (BatchNorm) -> ReLU] * len(hidden) -> Linear``.

    The linear layers are the modules ``reparam`` rescales; with ``batchnorm=False`` every
    hidden unit's output is positively homogeneous in its incoming weights and bias.
    """
    if any(int(h) < 1 for h in hidden):
        raise ValueError(f"hidden widths must be positive integers, got {list(hidden)}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers.append(nn.Linear(width, int(h)))
        if batchnorm:
            layers.append(nn.BatchNorm1d(int(h)))
        layers.append(nn.ReLU())
        width = int(h)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(channels: tuple[int, ...] | list[int] = (16, 32), hidden: int = 128,
        num_classes: int = NUM_CLASSES, batchnorm: bool = False) -> nn.Sequential:
    """``[Conv3x3 -> (BatchNorm) -> ReLU -> MaxPool2] * len(channels) -> Flatten -> Linear -> ReLU -> Linear``.

    Max-pooling commutes with positive per-channel scaling, so the network stays
    positively homogeneous per unit and the reparameterisations stay exact.
    """
    if not channels or any(int(c) < 1 for c in channels) or hidden < 1:
        raise ValueError(f"channels and hidden must be positive, got {list(channels)}, {hidden}")
    layers: list[nn.Module] = []
    c_in, side = INPUT_SHAPE[0], INPUT_SHAPE[1]
    for c in channels:
        layers.append(nn.Conv2d(c_in, int(c), kernel_size=3, padding=1))
        if batchnorm:
            layers.append(nn.BatchNorm2d(int(c)))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        c_in, side = int(c), side // 2
    layers += [nn.Flatten(), nn.Linear(c_in * side * side, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)]
    return nn.Sequential(*layers)


def build(arch: str, widths: tuple[int, ...]) -> nn.Sequential:
    """Build a model by name: ``"mlp"`` (``widths`` = hidden widths) or ``"cnn"``
    (``widths`` = conv channels then the dense hidden width)."""
    if arch == "mlp":
        return mlp(widths)
    if arch == "cnn":
        if len(widths) < 2:
            raise ValueError("cnn widths are (conv channels..., dense hidden), at least two numbers")
        return cnn(widths[:-1], widths[-1])
    raise ValueError(f"Unknown architecture {arch!r}; choose 'mlp' or 'cnn'.")


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """Logits of ``model`` on ``images`` in eval mode, batched, without building a graph; the
    model's mode is restored."""
    was_training = model.training
    model.eval()
    first = next(model.parameters())
    try:
        with torch.no_grad():
            out = [model(images[i:i + batch_size].to(first.device, first.dtype))
                   for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out)
