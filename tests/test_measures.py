"""The measure registry: each measure against an oracle where one exists, and every invariance
tag checked both ways by applying the transformations and measuring."""
import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

from flatlib import data, hessian, measures, models, reparam
from flatlib.engine import weakness
from flatlib.measures import MEASURES
from flatlib.train import TrainConfig
from oracles import dense_hessian, tiny_cnn, tiny_mlp, trained_float64

FAST = {"top_eigenvalue": {"tol": 1e-6}, "pacbayes_mag_bound": {"samples": 5},
        "weakness_open_labels": {"probe_n": 500}, "weakness_input_volume": {"n": 50, "directions": 4},
        "weakness_input_volume_r40": {"n": 50, "directions": 4}, "input_volume_capped": {"n": 50, "directions": 4},
        "input_volume_r40_capped": {"n": 50, "directions": 4}, "jacobian_norm": {"probe_n": 500}}
FAST.update({name: {"probe_n": 500} for name in measures.EXTRAS if name.startswith("weakness_open_labels")})


@pytest.fixture(scope="module")
def network():
    """A small trained MLP in float64 (so invariance is tested, not float32 rounding) and its
    training subset."""
    return trained_float64(TrainConfig(n=256, widths=(32, 16), batch_size=32, epochs=4, target_train_acc=None))


@pytest.fixture(scope="module")
def informative():
    """Few parameters and 4,000 images, so that PAC-Bayes bounds are not saturated at 1 and a
    bound that moves under reparameterisation can be seen to move."""
    return trained_float64(TrainConfig(n=4000, widths=(16, 8), epochs=3, target_train_acc=None, optimizer="adam",
                                       lr=3e-3))


def _transformations(model):
    return {
        "alpha_scale": reparam.alpha_scale(reparam.alpha_scale(model, 0, 4.0), 1, 0.3),
        "neuron_scale": reparam.random_neuron_scale(model, seed=1, log_range=1.0),
        "permute": reparam.random_permute(model, seed=2),
    }


def test_every_measure_is_tagged_with_a_family_and_documented():
    assert MEASURES, "registry is empty"
    for m in MEASURES.values():
        assert m.family in measures.FAMILIES
        assert "Larger =" in m.doc, f"{m.name} must state its sign convention"


# The PAC-Bayes measures search a posterior for each network they measure: over 5 s each.
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name.startswith("pacbayes_") else name
                                  for name in sorted(MEASURES) + sorted(measures.EXTRAS)])
def test_invariance_tag_matches_measurement(network, informative, name):
    m = measures.lookup(name)
    model, ds, init = informative if m.family == "bound" else network
    options = {**FAST.get(name, {}), **({"init": init} if m.needs_init else {})}
    base = m(model, ds, **options)
    changes = {}
    for label, transformed in _transformations(model).items():
        value = m(transformed, ds, **options)
        changes[label] = abs(value - base) / max(abs(base), 1e-12)
    if m.invariant:
        assert max(changes.values()) < 1e-3, changes
    elif name == "pacbayes_mag_bound" and base > 1 - 1e-9:
        # Vacuous (saturated at 1) on every network we tried, so the value cannot show a move;
        # test_bounds_move_under_reparameterisation checks what it is computed from.
        assert max(changes.values()) < 1e-9
    else:
        assert max(changes.values()) > 1e-3, changes


def test_open_labels_counts_labels_above_tau_on_hand_built_outputs():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
    probe = torch.rand(7, 1, 28, 28)
    assert measures.weakness_open_labels(model, None, probe=probe) == pytest.approx(math.log2(10))
    with torch.no_grad():
        # p = (0.45, 0.45, 0.1/8 ...): two labels above tau = 0.1
        model[1].bias.copy_(torch.log(torch.tensor([0.45, 0.45] + [0.1 / 8] * 8)))
    assert measures.weakness_open_labels(model, None, probe=probe) == pytest.approx(1.0)
    assert measures.weakness_open_labels(model, None, probe=probe, tau=0.5) == pytest.approx(0.0)


def test_open_labels_refuses_to_guess_its_probe_set():
    with pytest.raises(ValueError, match="probe="):
        measures.weakness_open_labels(models.mlp((4,)), (torch.rand(3, 1, 28, 28), torch.zeros(3, dtype=torch.long)))


def test_input_volume_matches_the_distance_to_a_linear_boundary():
    # Class 1 wins where pixel 0 exceeds 0.5: from a black image the label flips at radius
    # 0.5 / d_0 along a unit direction d with d_0 > 0, and never (capped) otherwise.
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 2)).double()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[1, 0] = 1.0
        model[1].bias.copy_(torch.tensor([0.0, -0.5]))
    x = torch.zeros(3, 1, 28, 28)
    value = measures.weakness_input_volume(model, (x, torch.zeros(3, dtype=torch.long)), directions=16,
                                           max_radius=20.0, bisections=40)
    gen = torch.Generator().manual_seed(0)
    torch.randperm(3, generator=gen)
    dirs = torch.randn(3, 16, 784, generator=gen)
    d0 = (dirs / dirs.norm(dim=2, keepdim=True))[:, :, 0]
    expected = torch.where(d0 > 0.5 / 20, 0.5 / d0.clamp_min(1e-12), torch.tensor(20.0))
    assert value == pytest.approx(torch.log(expected).mean().item(), abs=1e-6)


@pytest.mark.slow
def test_relative_flatness_and_trace_match_the_dense_hessian():
    model, (x, y) = tiny_mlp(n=30)
    dense = dense_hessian(model, (x, y))
    offset = dense.shape[0] - 3 * 4 - 3
    block = dense[offset:offset + 12, offset:offset + 12].reshape(3, 4, 3, 4)
    traces = torch.einsum("akbk->ab", block)
    weight = model[-1].weight.detach()
    exact = ((weight @ weight.T) * traces).sum().item()
    assert measures.relative_flatness(model, (x, y)) == pytest.approx(exact, rel=1e-10)
    assert measures.hessian_trace(model, (x, y)) == pytest.approx(torch.trace(dense).item(), rel=1e-10)
    assert measures.hessian_trace(model, (x, y), method="hutchinson", probes=3000) == pytest.approx(
        torch.trace(dense).item(), rel=0.1)


def test_worst_case_sharpness_grows_with_the_box(network):
    model, ds, _ = network
    small = measures.adaptive_sharpness(model, ds, rho=0.01)
    large = measures.adaptive_sharpness(model, ds, rho=0.1)
    assert 0 <= small < large
    small, large = (measures.epsilon_sharpness(model, ds, epsilon=e) for e in (1e-4, 1e-2))
    assert 0 <= small < large


@pytest.mark.slow
def test_description_length_quantisation_keeps_every_training_prediction(network):
    model, ds, _ = network
    step = measures.coarsest_lossless_step(model, ds)
    before = models.predict(model, ds.images).argmax(1)
    assert torch.equal(models.predict(weakness._quantised(model, step), ds.images).argmax(1), before)
    coarser = weakness._quantised(model, step * 10)  # losslessness need not be monotone in the step
    assert not torch.equal(models.predict(coarser, ds.images).argmax(1), before)
    assert measures.simplicity_description_length(model, ds) < 0


def test_l2_simplicity_is_minus_the_weight_norm():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 2))
    with torch.no_grad():
        model[1].weight.fill_(0.0)
        model[1].weight[0, 0] = 3.0
        model[1].bias.copy_(torch.tensor([4.0, 0.0]))
    assert measures.simplicity_l2(model, None) == pytest.approx(-5.0)


def _rescaled(model, log_scales):
    for layer, u in enumerate(log_scales):
        model = reparam.neuron_scale(model, layer, torch.exp(u))
    return model


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_min_trace_over_rescaling_is_attained_and_locally_minimal_on_the_dense_hessian(arch):
    model, batch = tiny_mlp(n=30) if arch == "mlp" else tiny_cnn()

    def dense_trace(network):
        return torch.trace(dense_hessian(network, batch)).item()

    result = measures.min_trace_over_rescaling(model, batch)
    assert result.trace == pytest.approx(dense_trace(model), rel=1e-9)
    # The value is the dense trace of the network rescaled by the returned scales ...
    assert result.value == pytest.approx(dense_trace(_rescaled(model, result.log_scales)), rel=1e-8)
    assert result.value < result.trace
    # ... and no nearby rescaling is flatter (T is convex in the log-scales, so local = global).
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        nearby = [u + 0.05 * torch.randn(u.shape, generator=gen, dtype=torch.float64) for u in result.log_scales]
        assert dense_trace(_rescaled(model, nearby)) >= result.value * (1 - 1e-9)


def test_min_trace_balances_each_units_incoming_and_outgoing_curvature():
    # One hidden unit: T(u) = B exp(-2u) + A exp(2u) has minimum 2 sqrt(AB) at exp(4u) = B / A.
    torch.manual_seed(1)
    model = models.mlp((1,), in_features=3, num_classes=2).double()
    with torch.no_grad():
        model[1].bias.fill_(5.0)  # keep the unit active
    x, y = torch.rand(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,))
    diag = hessian.diagonal(model, (x, y))
    incoming, outgoing, last_bias = diag[:4].sum(), diag[4:6].sum(), diag[6:].sum()
    result = measures.min_trace_over_rescaling(model, (x, y))
    assert result.value == pytest.approx((2 * torch.sqrt(incoming * outgoing) + last_bias).item(), rel=1e-12)
    assert result.log_scales[0].item() == pytest.approx(0.25 * math.log(incoming / outgoing), rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["isotropic", "magnitude"])
def test_bounds_move_under_reparameterisation(informative, kind):
    from flatlib import pacbayes

    model, ds, init = informative
    base = pacbayes.gaussian_bound(model, ds, init, kind=kind, samples=2)
    for transformed in _transformations(model).values():
        moved = pacbayes.gaussian_bound(transformed, ds, init, kind=kind, samples=2)
        kl_change = [abs(a[1] - b[1]) / a[1] for a, b in zip(base.per_sigma, moved.per_sigma)]
        assert min(kl_change) > 1e-3, kl_change


@pytest.mark.slow
def test_top_eigenvalue_on_a_subsample_is_the_subsamples_dense_top_eigenvalue():
    torch.manual_seed(0)
    model = models.mlp((6,)).double()
    ds = data.load("mnist", "train", n=300, seed=0)
    part = data.subsample(ds, 40)
    dense = dense_hessian(model, (part.images.double(), part.labels))
    expected = torch.linalg.eigvalsh(dense)[-1].item()
    ds64 = data.Dataset(images=ds.images.double(), labels=ds.labels, name=ds.name, split=ds.split, indices=ds.indices)
    got = MEASURES["top_eigenvalue"](model, ds64, tol=1e-9, subsample=40)
    assert got == pytest.approx(expected, rel=1e-6)
    assert got != pytest.approx(MEASURES["top_eigenvalue"](model, ds64, tol=1e-9), rel=1e-3)  # the subsample matters


@pytest.mark.parametrize("name", ["hessian_trace", "simplicity_description_length", "weakness_input_volume",
                                  "relative_flatness"])
def test_any_measure_on_a_subsample_is_the_measure_of_the_subsample(network, name):
    model, ds, _ = network
    part = data.subsample(ds, 100)
    options = FAST.get(name, {})
    assert MEASURES[name](model, ds, subsample=100, **options) == MEASURES[name](model, part, **options)


def test_a_measure_of_unseen_probes_ignores_the_subsample(network):
    # The probes come from outside the whole training subset: a subsample must not let the
    # rest of the network's own training images in as "unseen".
    model, ds, _ = network
    m = MEASURES["weakness_open_labels"]
    assert m.reads_unseen_only
    assert m(model, ds, subsample=50, probe_n=300) == m(model, ds, probe_n=300)


def test_variants_are_their_base_measure_with_fixed_options(network):
    model, ds, _ = network
    tau = measures.lookup("weakness_open_labels_tau0.05")
    assert tau(model, ds, probe_n=300) == MEASURES["weakness_open_labels"](model, ds, tau=0.05, probe_n=300)
    wide = measures.lookup("weakness_input_volume_r40")
    assert wide(model, ds, n=20, directions=2) == MEASURES["weakness_input_volume"](
        model, ds, n=20, directions=2, max_radius=40.0, scan_steps=80)
    with pytest.raises(ValueError, match="fixes \\['tau'\\]"):
        tau(model, ds, tau=0.3)
    with pytest.raises(KeyError, match="unknown measure 'nope'"):
        measures.lookup("nope")
    assert not set(measures.EXTRAS) & set(MEASURES)  # a variant never enters "every measure"


def test_input_volume_capped_counts_rays_that_never_change_label():
    # A constant classifier never changes its label: every ray is capped, and the measure is
    # log(max_radius). A classifier whose label flips at x_0 = 0.5 (a threshold on pixel 0)
    # caps exactly the rays that move pixel 0 away from the threshold.
    constant = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        constant[1].weight.zero_()
        constant[1].bias.copy_(torch.arange(10.0))
    x = torch.zeros(30, 1, 28, 28)
    ds = (x, torch.zeros(30, dtype=torch.long))
    assert measures.input_volume_capped(constant, ds, n=30, directions=4) == 1.0
    assert MEASURES["weakness_input_volume"](constant, ds, n=30, directions=4) == pytest.approx(math.log(20.0))
    threshold = nn.Sequential(nn.Flatten(), nn.Linear(784, 2))
    with torch.no_grad():
        threshold[1].weight.zero_()
        threshold[1].weight[1, 0] = 1.0
        threshold[1].bias.copy_(torch.tensor([0.5, 0.0]))  # label 1 iff x_0 > 0.5
    radii = measures.input_volume_radii(threshold, ds, n=30, directions=4)
    gen = torch.Generator().manual_seed(0)
    pick = torch.randperm(30, generator=gen)[:30]
    dirs = torch.randn(30, 4, 784, generator=gen)
    first = (dirs / dirs.norm(dim=2, keepdim=True))[:, :, 0]
    reach = torch.where(first > 0, 0.5 / first.clamp(min=1e-12), torch.full_like(first, math.inf))
    expected_capped = (reach > 20.0).double().mean().item()
    assert pick.numel() == 30
    assert measures.input_volume_capped(threshold, ds, n=30, directions=4) == pytest.approx(expected_capped)
    uncapped = reach <= 20.0
    assert torch.allclose(radii[uncapped], reach[uncapped].float(), rtol=1e-4)


def test_an_integer_cap_means_the_float_cap():
    """``max_radius=20`` made integer radii (``torch.full`` of an int), truncating every distance."""
    threshold = nn.Sequential(nn.Flatten(), nn.Linear(784, 2))
    with torch.no_grad():
        threshold[1].weight.zero_()
        threshold[1].weight[1, 0] = 1.0
        threshold[1].bias.copy_(torch.tensor([0.5, 0.0]))  # label 1 iff x_0 > 0.5
    ds = (torch.zeros(30, 1, 28, 28), torch.zeros(30, dtype=torch.long))
    as_float = measures.input_volume_radii(threshold, ds, n=30, directions=4, max_radius=20.0)
    assert torch.equal(measures.input_volume_radii(threshold, ds, n=30, directions=4, max_radius=20), as_float)
    assert measures.input_volume_capped(threshold, ds, n=30, directions=4, max_radius=20) == \
        measures.input_volume_capped(threshold, ds, n=30, directions=4, max_radius=20.0)


@pytest.mark.parametrize("cap", [0.7, 0.3, 20.0, 1e-3])
def test_every_ray_of_a_constant_classifier_is_capped_whatever_the_cap(cap):
    constant = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        constant[1].weight.zero_()
        constant[1].bias.copy_(torch.arange(10.0))
    ds = (torch.zeros(20, 1, 28, 28), torch.zeros(20, dtype=torch.long))
    assert measures.input_volume_capped(constant, ds, n=20, directions=4, max_radius=cap) == 1.0


def test_open_labels_falls_back_to_test_inputs_only_for_a_network_trained_on_everything():
    model = models.mlp((8,))
    with pytest.raises(ValueError, match="only for networks trained on the whole"):
        measures.weakness_open_labels(model, data.load("mnist", "train", n=59999), probe_split="test_inputs")
    with pytest.raises(data.DataError, match="no complement"):
        measures.weakness_open_labels(model, data.load("mnist", "train", n=60000))
    with pytest.raises(ValueError, match="probe_split"):
        measures.weakness_open_labels(model, data.load("mnist", "train", n=100), probe_split="test")
    got = measures.weakness_open_labels(model, data.load("mnist", "train", n=60000), probe_split="test_inputs",
                                        probe_n=300, seed=2)
    probe = data.load("mnist", "test", n=300, seed=2).images
    assert got == measures.weakness_open_labels(model, None, probe=probe)


def _broken(model, value):
    broken = copy.deepcopy(model)
    with torch.no_grad():
        next(broken.parameters()).view(-1)[0] = value
    return broken


@pytest.mark.parametrize("name", sorted(measures.MEASURES))
def test_every_measure_refuses_a_diverged_network_with_one_clear_error(name):
    model, data = tiny_mlp()
    options = {"init": {k: v.clone() for k, v in model.state_dict().items()}} if measures.MEASURES[name].needs_init \
        else {}
    for value in (float("nan"), float("inf")):
        with pytest.raises(measures.MeasureError, match="non-finite weights"):
            measures.MEASURES[name](_broken(model, value), data, **options)


def test_a_network_with_finite_weights_but_non_finite_outputs_is_refused():
    model, (x, y) = tiny_mlp()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e200)  # float64 products overflow to inf in the logits
    with pytest.raises(measures.MeasureError, match="outputs"):
        measures.MEASURES["simplicity_l2"](model, (x, y))


def test_a_network_without_parameters_is_refused():
    with pytest.raises(measures.MeasureError, match="no parameters"):
        measures.MEASURES["hessian_trace"](torch.nn.Flatten(), (torch.rand(4, 1, 28, 28), torch.zeros(4).long()))
    with pytest.raises(measures.MeasureError, match="no parameters"):
        measures.MEASURES["simplicity_l2"](torch.nn.Flatten(), (torch.rand(4, 1, 28, 28), torch.zeros(4).long()))


def test_a_nan_result_is_refused(monkeypatch):
    model, data = tiny_mlp()
    nan = dataclasses.replace(measures.MEASURES["simplicity_l2"], fn=lambda model, data: float("nan"))
    monkeypatch.setitem(measures.MEASURES, "simplicity_l2", nan)
    with pytest.raises(measures.MeasureError, match="NaN"):
        measures.MEASURES["simplicity_l2"](model, data)


def test_a_measure_runs_on_one_thread_and_restores_the_count(monkeypatch):
    seen = []
    spy = dataclasses.replace(MEASURES["simplicity_l2"],
                              fn=lambda model, data: seen.append(torch.get_num_threads()) or 1.0)
    monkeypatch.setitem(MEASURES, "simplicity_l2", spy)
    model, data = tiny_mlp()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        MEASURES["simplicity_l2"](model, data)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
