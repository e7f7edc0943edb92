"""The margin measures of ``flatlib.measures``: the known predictors of generalisation a weakness
reading may stand in for: output margins (raw and spectrally normalised), input-space margin
distances, the Jacobian norm and the path norm. Each states its sign and is versioned in the
registry (``version=``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flatlib.engine import (
    models,
    weakness,  # noqa: F401 (registered first: the registry's order does not depend on who imports what)
)
from flatlib.engine.measure_registry import MeasureError, register
from flatlib.engine.weakness import probe_inputs

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
    inputs = probe_inputs(data, probe, probe_n, seed, probe_split)
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
