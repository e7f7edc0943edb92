"""Function-preserving reparameterisations of ReLU networks (Dinh, Pascanu, Bengio & Bengio,
"Sharp minima can generalize for deep nets", ICML 2017).

For a hidden unit with ReLU, ``relu(a z) = a relu(z)`` whenever ``a > 0``; max-pooling
commutes with the same scaling. So multiplying a unit's incoming weights and bias by ``a`` and
dividing its outgoing weights by ``a`` leaves the network's function unchanged, and so does
reordering hidden units together with their outgoing weights. Each function here returns a
new model and leaves its argument untouched. BatchNorm would break the exactness, so models
containing it are refused.

Layers are indexed over the network's weight layers (``nn.Linear`` and ``nn.Conv2d``) in
order: hidden layer ``l`` is the output of weight layer ``l``, read by weight layer ``l + 1``.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

# The version of this module's computations (``flatlib.keys``): the function-preserving
# transformations. Bump it with any change that can change their numbers, and re-record the
# fingerprints.
VERSION = 1
# The name summaries record this VERSION under ("module:flatlib.reparam"), kept wherever the module lives.
VERSION_NAME = "flatlib.reparam"

_WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """The Linear and Conv2d modules of ``model`` in forward order."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError("reparameterisations are exact only without BatchNorm; build the model with batchnorm=False")
    layers = [m for m in model.modules() if isinstance(m, _WEIGHT_LAYERS)]
    if len(layers) < 2:
        raise ValueError("the model needs at least one hidden layer to reparameterise")
    return layers


def num_hidden_layers(model: nn.Module) -> int:
    return len(weight_layers(model)) - 1


def _check_layer(layers, layer):
    if not 0 <= layer < len(layers) - 1:
        raise ValueError(f"layer must index a hidden layer, 0 to {len(layers) - 2}, got {layer}")


def _inputs_per_unit(module: nn.Module, units: int) -> int:
    """How many of the next layer's inputs each hidden unit feeds: 1 for a Conv2d or Linear
    reading units directly, height x width for a Linear reading a flattened channel map."""
    fan = module.weight.shape[1]
    if fan % units != 0:
        raise ValueError(f"cannot map {units} hidden units onto a next layer with {fan} inputs")
    return fan // units  # inputs per hidden unit (1, or height*width after Flatten)


def neuron_scale(model: nn.Module, layer: int, scales: torch.Tensor) -> nn.Module:
    """Multiply hidden unit ``i`` of ``layer`` (its incoming weights and bias) by ``scales[i] > 0``
    and divide its outgoing weights by the same factor."""
    new = copy.deepcopy(model)
    layers = weight_layers(new)
    _check_layer(layers, layer)
    this, nxt = layers[layer], layers[layer + 1]
    units = this.weight.shape[0]
    scales = torch.as_tensor(scales, dtype=this.weight.dtype, device=this.weight.device).reshape(-1)
    if scales.numel() != units:
        raise ValueError(f"layer {layer} has {units} units; got {scales.numel()} scales")
    if not bool((scales > 0).all()) or not bool(torch.isfinite(scales).all()):
        raise ValueError("scales must be positive and finite (a negative factor does not commute with ReLU)")
    per_unit = _inputs_per_unit(nxt, units)
    with torch.no_grad():
        shape = (-1,) + (1,) * (this.weight.dim() - 1)
        this.weight.mul_(scales.reshape(shape))
        if this.bias is not None:
            this.bias.mul_(scales)
        out_scale = scales.repeat_interleave(per_unit)
        nxt.weight.div_(out_scale.reshape((1, -1) + (1,) * (nxt.weight.dim() - 2)))
    return new


def alpha_scale(model: nn.Module, layer: int, alpha: float) -> nn.Module:
    """Dinh et al.'s alpha-scaling: layer ``layer``'s weights and bias times ``alpha > 0``, the
    next layer's weights divided by ``alpha``."""
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    layers = weight_layers(model)
    _check_layer(layers, layer)
    return neuron_scale(model, layer, torch.full((layers[layer].weight.shape[0],), float(alpha)))


def permute(model: nn.Module, layer: int, perm: torch.Tensor) -> nn.Module:
    """Reorder the hidden units of ``layer`` by ``perm`` (new unit ``i`` is old unit ``perm[i]``)."""
    new = copy.deepcopy(model)
    layers = weight_layers(new)
    _check_layer(layers, layer)
    this, nxt = layers[layer], layers[layer + 1]
    units = this.weight.shape[0]
    perm = torch.as_tensor(perm, dtype=torch.long)
    if sorted(perm.tolist()) != list(range(units)):
        raise ValueError(f"perm must be a permutation of range({units})")
    per_unit = _inputs_per_unit(nxt, units)
    cols = (perm[:, None] * per_unit + torch.arange(per_unit)[None, :]).reshape(-1)
    with torch.no_grad():
        this.weight.copy_(this.weight[perm])
        if this.bias is not None:
            this.bias.copy_(this.bias[perm])
        nxt.weight.copy_(nxt.weight[:, cols])
    return new


def random_neuron_scale(model: nn.Module, seed: int = 0, log_range: float = 2.0) -> nn.Module:
    """Every hidden unit of every hidden layer scaled by exp(U(-log_range, log_range))."""
    gen = torch.Generator().manual_seed(seed)
    for layer in range(num_hidden_layers(model)):
        units = weight_layers(model)[layer].weight.shape[0]
        scales = torch.exp((torch.rand(units, generator=gen, dtype=torch.float64) * 2 - 1) * log_range)
        model = neuron_scale(model, layer, scales)
    return model


def random_permute(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every hidden layer's units in a random order."""
    gen = torch.Generator().manual_seed(seed)
    for layer in range(num_hidden_layers(model)):
        units = weight_layers(model)[layer].weight.shape[0]
        model = permute(model, layer, torch.randperm(units, generator=gen))
    return model
