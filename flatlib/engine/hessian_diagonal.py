"""The exact diagonal of the Hessian of the training cross-entropy, for ReLU networks of
``Linear`` and ``Conv2d`` layers (``diagonal``), and for plain ReLU MLPs by a batched algorithm
(``mlp_diagonals``) that ``flatlib.ensemble`` also runs on stacked weights.

Part of ``flatlib.hessian``, which re-exports it: its numbers are versioned by that module's
``VERSION``; bump it there with any change here that moves them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_PIECEWISE_LINEAR = (nn.Sequential, nn.Flatten, nn.ReLU, nn.MaxPool2d, nn.Identity, nn.Linear, nn.Conv2d)


def diagonal(model: nn.Module, data, batch_size: int | None = 1000) -> torch.Tensor:
    """The exact diagonal of the Hessian of the mean training cross-entropy, flattened in
    ``model.parameters()`` order, for ReLU networks of ``Linear`` and ``Conv2d`` layers.

    Such a network's logits are, almost everywhere, linear in each single parameter (every
    weight appears at most once on each input-output path), so ``d^2 f / dw_i^2 = 0`` and
    ``H_ii`` equals the Gauss-Newton diagonal ``mean_n sum_c (d <s_nc, f(x_n)> / dw_i)^2`` with
    ``s_nc = sqrt(p_nc) (e_c - p_n)``, since ``sum_c s_nc s_nc^T = diag(p_n) - p_n p_n^T`` is
    the Hessian of the cross-entropy in the logits. Per-sample gradients of each layer come
    from its input and its output gradient, as in BackPACK (Dangel, Kunstner & Hennig 2020),
    so nothing of size ``P x P`` or ``N x P`` is formed. Other layer types are refused rather
    than approximated.

    A plain ReLU MLP (``Flatten -> [Linear -> ReLU]* -> Linear`` with biases, as
    ``flatlib.models.mlp`` builds it) goes by ``mlp_diagonals``: all C output directions are
    back-propagated together and summed over before one product per layer, about one gradient's
    cost; squares and products are then taken in the model's precision (as BackPACK does), sums
    over batches in float64. Any other accepted network (CNNs, MLPs without biases or with
    nested containers) goes by one backward pass per class, squaring in float64.
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    other = sorted({type(m).__name__ for m in model.modules() if not isinstance(m, _PIECEWISE_LINEAR)})
    if other:
        raise ValueError(f"the exact diagonal needs a ReLU network of Linear/Conv2d layers; found {other}")
    if any(isinstance(m, nn.Conv2d) and (m.groups != 1 or isinstance(m.padding, str) or m.padding_mode != "zeros")
           for m in layers):
        raise ValueError("the exact diagonal supports Conv2d with groups=1 and numeric zero padding only")
    owned = {id(p) for m in layers for p in m.parameters(recurse=False)}
    if any(id(p) not in owned for p in model.parameters()):
        raise ValueError("every parameter must belong to a Linear or Conv2d layer")
    first = next(model.parameters())
    inputs, targets = data
    inputs = inputs.to(first.device, first.dtype)
    n = len(inputs)
    if n == 0:
        raise ValueError("data is empty")
    batch_size = n if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size}")
    linears = plain_mlp_layers(model)
    if linears is not None:
        weights = [m.weight.detach()[None] for m in linears]
        biases = [m.bias.detach()[None] for m in linears]
        return mlp_diagonals(weights, biases, inputs, batch_size)[0]
    return _diagonal_per_class(model, layers, inputs, batch_size)


def plain_mlp_layers(model: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of ``model`` if it is a plain ReLU MLP (a ``Sequential`` of an optional
    ``Flatten``, then ``Linear``, ``ReLU``, ..., ``Linear``, every Linear with a bias), else None."""
    body = list(model) if isinstance(model, nn.Sequential) else []
    if body and isinstance(body[0], nn.Flatten):
        body = body[1:]
    plain = len(body) % 2 == 1 and all(isinstance(m, nn.Linear if j % 2 == 0 else nn.ReLU) for j, m in enumerate(body))
    if not plain or any(m.bias is None for m in body[::2]):
        return None
    return body[::2]


@torch.no_grad()
def mlp_diagonals(weights: list[torch.Tensor], biases: list[torch.Tensor], inputs: torch.Tensor,
                  batch_size: int) -> torch.Tensor:
    """The exact Hessian diagonals of the mean cross-entropy over ``inputs`` (N, ...) of M ReLU
    MLPs of one architecture, stacked: ``weights[l]`` (M, out, in), ``biases[l]`` (M, out) for the
    l-th Linear layer, on one device and dtype (the inputs' too). Returns (M, P), each row in
    ``parameters()`` order (weight, bias per layer), in the weights' dtype.

    The identity of ``diagonal`` (``H_ii`` is the Gauss-Newton diagonal), with the output
    gradients of all C directions ``s_c = sqrt(p_c) (e_c - p)`` back-propagated together (one
    batched product per layer for all directions and members) and summed over the directions
    before the one product per layer: the diagonal of layer l's weights is
    ``mean_n (sum_c g_nc^2)^T a_n^2``, of its bias ``mean_n sum_c g_nc^2``, with ``a_n`` the
    layer's input and ``g_nc`` the gradient of ``<s_nc, f(x_n)>`` at its output. Squares and
    products in the weights' dtype, sums over batches in float64."""
    members, n = len(weights[0]), len(inputs)
    acc_w = [torch.zeros(w.shape, dtype=torch.float64, device=w.device) for w in weights]
    acc_b = [torch.zeros(b.shape, dtype=torch.float64, device=b.device) for b in biases]
    for start in range(0, n, batch_size):
        a = inputs[start:start + batch_size]
        a = a.reshape(len(a), -1)
        acts, masks = [a], []
        for layer, (w, b) in enumerate(zip(weights, biases)):
            if layer == 0:  # the inputs are shared: one product with every member's first layer side by side
                z = (a @ w.flatten(0, 1).T).view(len(a), *w.shape[:2]).transpose(0, 1) + b[:, None, :]
            else:
                z = torch.baddbmm(b[:, None, :], a, w.transpose(1, 2))
            if layer + 1 < len(weights):
                mask = z > 0
                a = z * mask  # ReLU, with PyTorch's zero gradient at 0
                acts.append(a)
                masks.append(mask)
        p = torch.softmax(z, dim=2)  # (M, B, C)
        eye = torch.eye(p.shape[2], dtype=p.dtype, device=p.device)
        g = p.sqrt()[..., :, None] * (eye - p[..., None, :])  # (M, B, direction c, logit): s_c
        for layer in range(len(weights) - 1, -1, -1):
            squares = g.square().sum(2)  # (M, B, out), summed over the directions
            a2 = acts[layer].square()  # (B, in) for the first layer, (M, B, in) after
            acc_w[layer] += torch.matmul(squares.transpose(1, 2), a2)
            acc_b[layer] += squares.sum(1)
            if layer:
                shape = g.shape[:3] + (weights[layer].shape[2],)
                g = torch.bmm(g.flatten(1, 2), weights[layer]).view(shape)  # one product for every direction
                g.mul_(masks[layer - 1][:, :, None, :])
    flat = torch.cat([t.reshape(members, -1) for pair in zip(acc_w, acc_b) for t in pair], dim=1)
    return (flat / n).to(weights[0].dtype)


def _diagonal_per_class(model, layers, inputs, batch_size):
    """``diagonal`` for any accepted network: per-sample gradients of each layer from forward
    hooks, one backward pass per class, squared and summed in float64."""
    first = next(model.parameters())
    n = len(inputs)
    acc = {id(p): torch.zeros_like(p, dtype=torch.float64) for p in model.parameters()}
    seen: dict[nn.Module, tuple] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.__setitem__(mod, (inp[0].detach(), out)))
             for m in layers]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, batch_size):
            x = inputs[start:start + batch_size]
            seen.clear()
            with torch.enable_grad():
                logits = model(x)
                p = torch.softmax(logits.detach(), dim=1)
                classes = logits.shape[1]
                outputs = [seen[m][1] for m in layers]
                for c in range(classes):
                    direction = p[:, c:c + 1].sqrt() * (F.one_hot(torch.tensor(c), classes).to(p) - p)
                    grads = torch.autograd.grad((logits * direction).sum(), outputs, retain_graph=c < classes - 1)
                    for m, g in zip(layers, grads):
                        _accumulate_squared_sample_grads(m, seen[m][0], g.detach(), acc)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return torch.cat([(acc[id(p)] / n).reshape(-1) for p in model.parameters()]).to(first.dtype)


def _accumulate_squared_sample_grads(module, a, g, acc):
    """Add sum over samples of the squared per-sample gradient of ``<g, module output>``."""
    if isinstance(module, nn.Linear):
        a, g = a.reshape(len(a), -1).double(), g.reshape(len(g), -1).double()
        acc[id(module.weight)] += (g ** 2).T @ (a ** 2)
        if module.bias is not None:
            acc[id(module.bias)] += (g ** 2).sum(0)
        return
    cols = F.unfold(a, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
    g = g.flatten(2)  # (N, out, positions); cols: (N, in * kh * kw, positions)
    per_sample = torch.einsum("nol,nkl->nok", g, cols).double()
    acc[id(module.weight)] += (per_sample ** 2).sum(0).reshape(module.weight.shape)
    if module.bias is not None:
        acc[id(module.bias)] += (g.sum(2).double() ** 2).sum(0)
