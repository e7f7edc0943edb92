"""flatlib.landscape (the primer): slices against a quadratic's known curvature, filter
normalisation against a hand computation, invariance of normalised slices under a
reparameterisation (applied and measured), interpolation endpoints, and the trajectory."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flatlib import landscape, models, reparam
from flatlib import train as ftrain


def test_a_slice_of_a_quadratic_is_the_parabola_with_its_known_curvature():
    torch.manual_seed(0)
    x, y = torch.randn(50, 3, dtype=torch.float64), torch.randn(50, 1, dtype=torch.float64)
    model = nn.Linear(3, 1, bias=False).double()
    d = {"weight": torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)}
    steps = np.linspace(-1, 1, 9)
    s = landscape.slice_1d(model, (x, y), d, steps, loss=F.mse_loss)
    # L(w + a d) = L(w) + a g.d + a^2 d^T (X^T X / n) d for the mean squared error
    w, dv = model.weight.detach().reshape(-1), d["weight"].reshape(-1)
    residual = x @ w - y.reshape(-1)
    expected = [((residual + a * (x @ dv)) ** 2).mean().item() for a in steps]
    assert s.loss == pytest.approx(expected, rel=1e-12)
    curvature = np.polyfit(steps, s.loss, 2)[0] * 2  # second derivative along d
    assert curvature == pytest.approx((2 * dv @ (x.T @ x / 50) @ dv).item(), rel=1e-9)
    assert np.isnan(s.acc).all()  # no accuracy for a regression


def test_filter_normalisation_matches_a_hand_computation():
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))  # filter norms 5 and 1
    direction = {"weight": torch.tensor([[1.0, 0.0], [0.0, 2.0]]), "bias": torch.tensor([1.0, 1.0])}
    out = landscape.filter_normalise(direction, model)
    assert torch.allclose(out["weight"], torch.tensor([[5.0, 0.0], [0.0, 1.0]]))
    assert torch.equal(out["bias"], torch.zeros(2))  # biases are not perturbed (Li et al.)
    conv = nn.Conv2d(1, 2, kernel_size=(1, 2))
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[6.0, 8.0]]], [[[0.0, 2.0]]]]))  # channel norms 10 and 2
    d = {"weight": torch.tensor([[[[1.0, 0.0]]], [[[0.0, 4.0]]]]), "bias": torch.ones(2)}
    expected = torch.tensor([[[[10.0, 0.0]]], [[[0.0, 2.0]]]])
    assert torch.allclose(landscape.filter_normalise(d, conv)["weight"], expected)


def test_directions_are_seeded_and_plain_ones_have_unit_length():
    model = models.mlp((8, 8))
    a, b = landscape.random_direction(model, 3, None), landscape.random_direction(model, 3, None)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.sqrt(sum((v ** 2).sum() for v in a.values())).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="normalise"):
        landscape.random_direction(model, 0, "layer")


def test_alpha_scaling_leaves_the_normalised_slice_and_moves_the_plain_one():
    torch.manual_seed(1)
    model = models.mlp((16, 16))
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    scaled = reparam.alpha_scale(reparam.alpha_scale(model, 0, 10.0), 1, 0.2)
    unequal = reparam.neuron_scale(model, 1, torch.exp(torch.linspace(-1, 1, 16)))
    steps = np.linspace(-1, 1, 7)

    def loss(m, normalise):
        return landscape.slice_1d(m, (x, y), landscape.random_direction(m, 0, normalise), steps).loss

    assert loss(scaled, "filter") == pytest.approx(loss(model, "filter"), rel=1e-4)
    assert np.abs(loss(scaled, None) - loss(model, None)).max() > 1e-2
    # unequal per-unit factors: the filter norms cannot undo them (the docstring's caveat)
    assert np.abs(loss(unequal, "filter") - loss(model, "filter")).max() > 1e-3
    both = landscape.slice_2d(model, (x, y), landscape.random_direction(model, 0), landscape.random_direction(model, 1),
                              steps[:3], steps)
    assert both.loss.shape == (3, 7)
    scaled_first = {k: v * steps[0] for k, v in landscape.random_direction(model, 0).items()}
    first_row = landscape.slice_1d(model, (x, y), scaled_first,
                                   [1.0]).loss[0]
    assert both.loss[0, 3] == pytest.approx(first_row, rel=1e-5)  # steps[3] = 0 along the second direction


def test_interpolation_ends_at_the_two_networks():
    x, y = torch.rand(80, 1, 28, 28), torch.randint(0, 10, (80,))
    torch.manual_seed(0)
    a, b = models.mlp((8,)), models.mlp((8,))
    path = landscape.interpolate(a, a.state_dict(), b.state_dict(), (x, y), [0.0, 0.5, 1.0])
    for t, net in ((0, a), (2, b)):
        direct = ftrain.evaluate(net, x, y)
        assert path.loss[t] == pytest.approx(direct["loss"], rel=1e-5)
        assert path.acc[t] == pytest.approx(direct["acc"])
    with pytest.raises(ValueError, match="missing"):
        landscape.interpolate(a, {}, b.state_dict(), (x, y), [0.0])


def test_the_trajectory_starts_at_initialisation_and_ends_at_the_trained_network():
    config = ftrain.TrainConfig(n=100, widths=(8,), batch_size=50, epochs=3, target_train_acc=None)
    states = landscape.trajectory(config)
    assert len(states) == 4
    full = ftrain.train(config)
    assert all(torch.equal(states[0][k], full.initial_state[k]) for k in states[0])
    assert all(torch.equal(states[-1][k], full.model.state_dict()[k]) for k in states[-1])
    with pytest.raises(ValueError, match="stops only at its epoch cap"):
        landscape.trajectory(dataclasses.replace(config, target_train_acc=1.0))


def test_the_trajectory_projection_is_the_pca_of_the_path_to_the_final_weights():
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=5), rng.normal(size=5)
    path = [np.zeros(5) + 3 * u + 2 * v, 2 * u + 0.5 * v, 1 * u, np.zeros(5)]
    states = [{"w": torch.tensor(p)} for p in path]
    proj = landscape.project_trajectory(states)
    assert proj.explained.sum() == pytest.approx(1.0)  # a path in a plane: two directions explain it
    assert np.allclose(proj.coords[-1], 0)
    # distances within the plane are kept
    assert np.linalg.norm(proj.coords[0] - proj.coords[1]) == pytest.approx(np.linalg.norm(path[0] - path[1]))
    assert (proj.coords[0] >= 0).all()
    line = landscape.project_trajectory([{"w": torch.tensor(k * u)} for k in (3.0, 2.0, 1.0, 0.0)])
    assert line.explained[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="three states"):
        landscape.project_trajectory(states[:2])
