"""The margin family of the registry, each against an independent oracle: hand-built networks,
numpy SVDs of dense operators, autograd's Jacobian, brute-force enumeration of paths, and a
generic constrained optimiser for the distance to a linear decision boundary."""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import nn

from flatlib import data, measures, models, reparam
from flatlib.measures import MEASURES
from oracles import tiny_cnn, tiny_mlp


def _linear(weight, bias):
    model = nn.Sequential(nn.Flatten(), nn.Linear(weight.shape[1], weight.shape[0])).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.as_tensor(weight, dtype=torch.float64))
        model[1].bias.copy_(torch.as_tensor(bias, dtype=torch.float64))
    return model


def test_output_margin_by_hand_and_its_tenth_percentile():
    # One-hot inputs read out one column of W each: the logits of example i are W[:, i].
    logits = np.array([[3.0, 0.0, 1.0, 5.0], [1.0, 2.0, 1.0, 5.0], [0.0, 0.5, 4.0, -1.0]])
    model = _linear(logits, np.zeros(3))
    x, y = torch.eye(4, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    # by hand: 3 - max(1, 0); 2 - max(0, 0.5); 4 - max(1, 1); 5 - max(5, -1)
    assert measures.logit_margins(model, (x, y)).tolist() == [2.0, 1.5, 3.0, 0.0]
    assert MEASURES["margin_output"](model, (x, y), quantile=0.0) == 0.0
    assert MEASURES["margin_output"](model, (x, y), quantile=1.0) == 3.0
    wrong = torch.tensor([1, 1, 2, 0])  # example 0 labelled 1: 1 - max(3, 0)
    assert measures.logit_margins(model, (x, wrong))[0].item() == -2.0
    # the default, the 10th percentile, is numpy's "lower" quantile of the margins
    model, (x, y) = tiny_mlp(n=57)
    margins = measures.logit_margins(model, (x, y)).numpy()
    expected = np.quantile(margins, 0.1, method="lower")
    assert MEASURES["margin_output"](model, (x, y)) == expected


def _dense(linear_map, in_shape):
    """The matrix of a linear map of tensors of shape ``in_shape``, by autograd's Jacobian."""
    jac = torch.autograd.functional.jacobian(linear_map, torch.zeros(1, *in_shape, dtype=torch.float64))
    return jac.reshape(-1, int(np.prod(in_shape))).numpy()


def test_spectral_complexity_of_an_mlp_matches_numpy_svds():
    model, (x, _) = tiny_mlp()
    got = measures.spectral_complexity(model, x)
    weights = [m.weight.detach().numpy() for m in model if isinstance(m, nn.Linear)]
    assert got.spectral_norms == pytest.approx([np.linalg.svd(w, compute_uv=False)[0] for w in weights], rel=1e-12)
    assert got.l21_norms == pytest.approx([np.linalg.norm(w, axis=1).sum() for w in weights], rel=1e-12)


def test_spectral_complexity_by_hand():
    # A1 = diag(3, 1): s = 3, rows 3 and 1; A2 = (2, 0): s = 2, row 2.
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 1.0]]))
        model[2].weight.copy_(torch.tensor([[2.0, 0.0]]))
    got = measures.spectral_complexity(model, torch.zeros(1, 2))
    assert got.value == pytest.approx(6 * ((4 / 3) ** (2 / 3) + 1) ** 1.5, rel=1e-12)


def test_spectral_complexity_of_a_cnn_matches_svds_of_the_dense_convolution():
    model, (x, _) = tiny_cnn()
    got = measures.spectral_complexity(model, x)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    shapes = [(1, 28, 28), (2, 14, 14)]
    for conv, shape, s, r in zip(convs, shapes, got.spectral_norms, got.l21_norms):
        dense = _dense(lambda v, c=conv: nn.functional.conv2d(v, c.weight.detach(), None, c.stride, c.padding), shape)
        assert s == pytest.approx(np.linalg.svd(dense, compute_uv=False)[0], rel=1e-9)
        assert r == pytest.approx(np.linalg.norm(dense, axis=1).sum(), rel=1e-12)
    linears = [m.weight.detach().numpy() for m in model if isinstance(m, nn.Linear)]
    assert got.spectral_norms[2:] == pytest.approx([np.linalg.svd(w, compute_uv=False)[0] for w in linears],
                                                   rel=1e-12)


def test_normalised_margin_moves_under_unit_rescaling_but_not_alpha_scaling():
    model, batch = tiny_mlp()
    m = MEASURES["margin_output_normalised"]
    base = m(model, batch)
    assert base == pytest.approx(MEASURES["margin_output"](model, batch)
                                 / measures.spectral_complexity(model, batch[0]).value, rel=1e-12)
    assert m(reparam.alpha_scale(model, 0, 7.0), batch) == pytest.approx(base, rel=1e-10)
    assert m(reparam.permute(model, 1, torch.tensor([3, 1, 0, 2])), batch) == pytest.approx(base, rel=1e-10)
    assert abs(m(reparam.random_neuron_scale(model, seed=0), batch) / base - 1) > 1e-2


def test_input_distance_is_the_exact_distance_to_a_linear_boundary():
    # For a linear network the region of a class is an intersection of half-spaces, and the
    # distance to a change of label is found here by a generic constrained optimiser.
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(4, 5, generator=gen, dtype=torch.float64), torch.randn(4, generator=gen,
                                                                                     dtype=torch.float64)
    model = _linear(weight, bias)
    x = torch.randn(30, 5, generator=gen, dtype=torch.float64)
    y = (x @ weight.T + bias).argmax(1)
    w, b = weight.numpy(), bias.numpy()
    exact = []
    for point, label in zip(x.numpy(), y.tolist()):
        best = math.inf
        for j in set(range(4)) - {label}:
            plane = {"type": "ineq", "fun": lambda z, j=j, y_=label: (w[j] - w[y_]) @ z + b[j] - b[y_]}
            found = minimize(lambda z, p=point: ((z - p) ** 2).sum(), point, constraints=[plane], method="SLSQP",
                             options={"ftol": 1e-14, "maxiter": 500})
            best = min(best, math.sqrt(found.fun))
        exact.append(best)
    got = measures.input_margin_distances(model, (x, y))
    assert got.numpy() == pytest.approx(np.array(exact), rel=1e-5)
    assert MEASURES["margin_input_distance"](model, (x, y)) == pytest.approx(
        np.quantile(exact, 0.1, method="lower"), rel=1e-5)
    wrong = (y + 1) % 4  # a misclassified input lies on the wrong side: a negative distance
    assert (measures.input_margin_distances(model, (x, wrong)) < 0).all()


def test_input_distance_gradients_are_autograds_per_example_jacobian():
    # The batched pass takes every class's gradient of a sum over examples; autograd's
    # Jacobian of one example at a time is the oracle for that shortcut.
    model, (x, y) = tiny_mlp(n=12)
    got = measures.input_margin_distances(model, (x, y))
    for i in range(len(x)):
        logits = model(x[i:i + 1])[0].detach()
        jac = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], x[i])
        others = [j for j in range(3) if j != y[i]]
        expected = min((logits[y[i]] - logits[j]) / (jac[y[i]] - jac[j]).norm() for j in others)
        assert got[i].item() == pytest.approx(expected.item(), rel=1e-10)


def test_jacobian_norm_matches_autograds_jacobian_of_the_probabilities():
    model, (x, _) = tiny_mlp(n=9)
    expected = np.mean([torch.autograd.functional.jacobian(lambda v: torch.softmax(model(v[None])[0], 0), point)
                        .norm().item() for point in x])
    assert measures.jacobian_norm(model, None, probe=x) == pytest.approx(expected, rel=1e-12)
    # finite differences agree with the Jacobian's first row, as a check on the oracle itself
    point, h = x[0], 1e-6
    row = [(torch.softmax(model((point + h * e)[None])[0], 0)[0] - torch.softmax(model((point - h * e)[None])[0], 0)[0])
           .item() / (2 * h) for e in torch.eye(6, dtype=torch.float64)]
    jac = torch.autograd.functional.jacobian(lambda v: torch.softmax(model(v[None])[0], 0), point)
    assert jac[0].numpy() == pytest.approx(np.array(row), abs=1e-8)


def test_jacobian_norm_reads_the_unseen_probes_of_open_labels():
    torch.manual_seed(0)
    model = models.mlp((8,))
    ds = data.load("mnist", "train", n=200, seed=0)
    m = MEASURES["jacobian_norm"]
    assert m.reads_unseen_only
    unseen = data.complement(ds, n=150, seed=3).images
    assert m(model, ds, probe_n=150, seed=3) == m(model, (ds.images, ds.labels), probe=unseen)
    assert m(model, ds, probe_n=150, seed=3, subsample=50) == m(model, ds, probe_n=150, seed=3)
    with pytest.raises(ValueError, match="probe="):
        m(model, (ds.images, ds.labels))


def test_path_norm_of_an_mlp_is_the_sum_over_every_path():
    torch.manual_seed(4)
    model = models.mlp((2, 3), in_features=3, num_classes=2).double()
    (w1, b1), (w2, b2), (w3, b3) = [(m.weight.detach(), m.bias.detach()) for m in model if isinstance(m, nn.Linear)]
    total = 0.0
    for o, k, j, i in itertools.product(range(2), range(3), range(2), range(3)):  # input -> h1 -> h2 -> output
        total += (w1[j, i] * w2[k, j] * w3[o, k]).item() ** 2
    for o, k, j in itertools.product(range(2), range(3), range(2)):  # paths starting at a bias of h1
        total += (b1[j] * w2[k, j] * w3[o, k]).item() ** 2
    for o, k in itertools.product(range(2), range(3)):  # ... of h2
        total += (b2[k] * w3[o, k]).item() ** 2
    total += (b3 ** 2).sum().item()  # ... of an output
    assert MEASURES["path_norm"](model, (torch.zeros(1, 3), None)) == pytest.approx(math.sqrt(total), rel=1e-12)


def test_path_norm_of_a_cnn_counts_every_path_through_each_pooling_window():
    # 1x4x4 input -> 3x3 conv (pad 1) to 2 channels -> ReLU -> 2x2 max-pool -> 8 -> Linear to 3.
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8, 3)).double()
    kernel, conv_bias = model[0].weight.detach(), model[0].bias.detach()
    dense, dense_bias = model[4].weight.detach(), model[4].bias.detach()
    total = (dense_bias ** 2).sum().item()
    for o, c, pi, pj in itertools.product(range(3), range(2), range(2), range(2)):  # output <- pool unit
        out = dense[o, c * 4 + pi * 2 + pj].item() ** 2
        for a, b in itertools.product(range(2), range(2)):  # pool unit <- conv unit, weight 1
            i, j = 2 * pi + a, 2 * pj + b
            total += out * conv_bias[c].item() ** 2
            for di, dj in itertools.product(range(3), range(3)):  # conv unit <- input pixel
                if 0 <= i + di - 1 < 4 and 0 <= j + dj - 1 < 4:
                    total += out * kernel[c, 0, di, dj].item() ** 2
    assert MEASURES["path_norm"](model, (torch.zeros(1, 1, 4, 4), None)) == pytest.approx(math.sqrt(total),
                                                                                          rel=1e-12)
    scaled = reparam.random_neuron_scale(model, seed=1)
    assert MEASURES["path_norm"](scaled, (torch.zeros(1, 1, 4, 4), None)) == pytest.approx(math.sqrt(total),
                                                                                           rel=1e-12)


@pytest.mark.parametrize("name", ["path_norm", "margin_output_normalised"])
def test_a_network_that_is_not_a_chain_of_known_layers_is_refused(name):
    x, y = torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)
    with pytest.raises(measures.MeasureError, match="batchnorm=False"):
        MEASURES[name](models.mlp((4,), batchnorm=True), (x, y))
    with pytest.raises(measures.MeasureError, match="nn.Sequential"):
        MEASURES[name](_Wrapped(models.mlp((4,))), (x, y))


class _Wrapped(nn.Module):
    """The same function as the network it wraps, but not a chain of layers."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)
