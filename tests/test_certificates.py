"""flatlib.certificates (claim C5): the KL against torch.distributions, the prior scale against
scipy's minimiser, the local reparameterisation against full weight draws, the certificate against
a hand computation, and the properties a valid bound must have (never above the unoptimised bound,
vacuous on random labels, above the held-out error)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import optimize
from scipy import stats as sps
from torch import nn

from flatlib import certificates as C
from flatlib import data as fdata
from flatlib import executors, models, pacbayes, study
from flatlib import train as ftrain
from flatlib.experiments import posteriors


def _gaussians(seed=0, shapes=((3, 4), (3,), (2, 3), (2,))):
    gen = torch.Generator().manual_seed(seed)
    means = [torch.randn(s, generator=gen) for s in shapes]
    stds = [0.05 + torch.rand(s, generator=gen) for s in shapes]
    prior = [torch.randn(s, generator=gen) for s in shapes]
    return means, stds, prior


def _tiny_model(seed=0, sizes=(4, 3, 2)):
    torch.manual_seed(seed)
    return models.mlp(sizes[1:-1], in_features=sizes[0], num_classes=sizes[-1])


# ----------------------------------------------------------------------------- KL and prior scale

def test_gaussian_kl_equals_torch_distributions():
    means, stds, prior = _gaussians()
    ours = C.gaussian_kl(means, stds, prior, 0.7).item()
    oracle = sum(torch.distributions.kl_divergence(torch.distributions.Normal(m.double(), s.double()),
                                                   torch.distributions.Normal(p.double(), 0.7)).sum().item()
                 for m, s, p in zip(means, stds, prior))
    assert ours == pytest.approx(oracle, rel=1e-12)


def test_best_prior_scale_is_the_minimiser_of_the_kl():
    means, stds, prior = _gaussians(1)
    best = C.best_prior_scale(means, stds, prior).item()
    found = optimize.minimize_scalar(lambda log_s: C.gaussian_kl(means, stds, prior, math.exp(log_s)).item(),
                                     bounds=(-8, 3), method="bounded", options={"xatol": 1e-10})
    assert best == pytest.approx(math.exp(found.x), rel=1e-5)


# ----------------------------------------------------------------------------- local reparameterisation

def test_local_reparameterisation_is_distributed_as_full_weight_draws():
    model = _tiny_model(sizes=(4, 5, 3))
    means = C.weight_tensors(model)
    stds = [0.3 * torch.ones_like(t) for t in means]
    x = torch.tensor([[0.5, -1.0, 2.0, 0.3]])
    draws = 20000
    gen = torch.Generator().manual_seed(0)
    local = C.stochastic_logits(means, stds, x.expand(draws, 4), gen)
    full = []
    for _ in range(draws):
        w = [m + s * torch.randn(m.shape, generator=gen) for m, s in zip(means, stds)]
        full.append(posteriors._mean_logits(w, x))
    full = torch.cat(full)
    for j in range(3):  # each logit: the same distribution (two-sample Kolmogorov-Smirnov)
        assert sps.ks_2samp(local[:, j].numpy(), full[:, j].numpy()).pvalue > 1e-3
    # and the same dependence between logits (they share the hidden layer's draw)
    assert np.corrcoef(local.T.numpy())[0, 1] == pytest.approx(np.corrcoef(full.T.numpy())[0, 1], abs=0.03)


def test_inputs_of_one_batch_get_independent_draws():
    model = _tiny_model(5, sizes=(4, 5, 3))
    means = C.weight_tensors(model)
    stds = [0.3 * torch.ones_like(t) for t in means]
    x = torch.tensor([[0.5, -1.0, 2.0, 0.3]]).expand(40000, 4)
    out = C.stochastic_logits(means, stds, x, torch.Generator().manual_seed(1))
    first, second = out[0::2, 0].numpy(), out[1::2, 0].numpy()  # the same input, neighbours in the batch
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.03


def test_one_layer_draws_have_the_analytic_mean_and_variance():
    gen = torch.Generator().manual_seed(3)
    w, b = torch.randn(2, 3, generator=gen), torch.randn(2, generator=gen)
    sw, sb = torch.rand(2, 3, generator=gen) + 0.1, torch.rand(2, generator=gen) + 0.1
    x = torch.tensor([[1.0, -2.0, 0.5]])
    out = C.stochastic_logits([w, b], [sw, sb], x.expand(200000, 3), gen)
    mean = (x @ w.T + b).squeeze(0)
    var = ((x ** 2) @ (sw ** 2).T + sb ** 2).squeeze(0)
    assert torch.allclose(out.mean(0), mean, atol=4 * (var / 200000).sqrt().max().item())
    assert torch.allclose(out.var(0), var, rtol=0.02)


def test_a_posterior_of_vanishing_width_errs_exactly_as_its_mean():
    model = _tiny_model(2, sizes=(4, 6, 3))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 4, generator=gen), torch.randint(0, 3, (300,), generator=gen)
    means = C.weight_tensors(model)
    posterior = C.Posterior(means, [torch.full_like(t, 1e-9) for t in means], means)
    wrong, draws = C.stochastic_errors(posterior, (x, y), passes=3)
    mean_wrong = int((posteriors._mean_logits(means, x).argmax(1) != y).sum())
    assert (wrong, draws) == (3 * mean_wrong, 900)
    assert torch.allclose(posteriors._mean_logits(means, x), model(x), atol=1e-6)


def test_only_relu_mlps_are_taken():
    with pytest.raises(C.CertificateError, match="ReLU MLP"):
        C.linear_layers(models.cnn((4,), 8))
    with pytest.raises(C.CertificateError, match="ReLU MLP"):
        C.linear_layers(nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)))
    assert len(C.linear_layers(models.mlp((5, 6)))) == 3


# ----------------------------------------------------------------------------- the bound's pieces

def test_bounded_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0], [0.0, 30.0]])
    labels = torch.tensor([0, 0])  # p = 1/2, and p = e^-30 < pmin
    pmin = 1e-4
    expected = (math.log(2) / math.log(1 / pmin) + 1.0) / 2
    assert C.bounded_cross_entropy(logits, labels, pmin).item() == pytest.approx(expected, rel=1e-6)
    assert C.bounded_cross_entropy(logits[:1], labels[:1], pmin).item() == pytest.approx(
        F.cross_entropy(logits[:1], labels[:1]).item() / math.log(1 / pmin), rel=1e-6)


@pytest.mark.parametrize("error", [0.0, 0.01, 0.1, 0.5])
@pytest.mark.parametrize("kl", [0.0, 50.0, 5000.0])
def test_quad_objective_bounds_the_kl_inverse_from_above(error, kl):
    n = 10000
    c = C.complexity(kl, n)
    quad = C.quad_objective(torch.tensor(error, dtype=torch.float64), torch.tensor(kl, dtype=torch.float64), n).item()
    assert c == pytest.approx((kl + math.log(2 * math.sqrt(n) * len(C.PRIOR_SCALES) / C.DELTA)) / n)
    assert quad >= pacbayes.kl_inverse(error, c) - 1e-12
    assert quad >= error


def test_the_relaxations_by_hand():
    # e = 0.1, KL = 100 nats, n = 10,000, one prior (J = 1), delta = 0.025: c = (100 + ln 8000) / 10^4
    # = 0.0108987196820662; f_quad = (sqrt(e + c/2) + sqrt(c/2))^2, f_classic = e + sqrt(c/2), worked
    # out in 40-digit decimal arithmetic
    e, kl = torch.tensor(0.1, dtype=torch.float64), torch.tensor(100.0, dtype=torch.float64)
    assert C.complexity(100.0, 10000, 0.025, grid_size=1) == pytest.approx(0.0108987196820662, rel=1e-13)
    assert C.quad_objective(e, kl, 10000, 0.025, 1).item() == pytest.approx(0.158841665222797, rel=1e-12)
    assert C.classic_objective(e, kl, 10000, 0.025, 1).item() == pytest.approx(0.173819779470228, rel=1e-12)


@pytest.mark.parametrize("error", [0.0, 0.01, 0.1, 0.5])
@pytest.mark.parametrize("kl", [0.0, 50.0, 5000.0])
def test_f_classic_is_mcallesters_bound_and_lies_above_the_kl_inverse(error, kl):
    n = 10000
    classic = C.classic_objective(torch.tensor(error, dtype=torch.float64), torch.tensor(kl, dtype=torch.float64), n,
                                  grid_size=1).item()
    assert classic == pytest.approx(pacbayes.mcallester(error, kl, n, C.DELTA), rel=1e-12)
    # Pinsker's relaxation of the kl bound: never below the bound it relaxes
    assert classic >= pacbayes.kl_inverse(error, C.complexity(kl, n, grid_size=1)) - 1e-12


@pytest.mark.parametrize("objective", ["quad", "classic"])
def test_the_posterior_is_optimised_on_the_named_relaxation(objective):
    model = _tiny_model(3, sizes=(4, 6, 3))
    gen = torch.Generator().manual_seed(4)
    data = (torch.randn(64, 4, generator=gen), torch.randint(0, 3, (64,), generator=gen))
    means = C.weight_tensors(model)
    # widths of 1e-6 make the one draw the mean network (to about 1e-6); a learning rate of 1e-30
    # leaves it there, so the first epoch's objective (one batch of all 64 examples) is the
    # relaxation at the start
    q = C.optimise(model, means, data, epochs=1, lr=1e-30, batch_size=64, sigma_init=1e-6, objective=objective)
    error = C.bounded_cross_entropy(model(data[0]), data[1]).double()
    scale = C.PRIOR_SCALES[-1]  # the width the KL would choose, 1e-6, clamped into the grid
    kl = sum(torch.distributions.kl_divergence(torch.distributions.Normal(m.double(), s.double()),
                                               torch.distributions.Normal(m.double(), scale)).sum()
             for m, s in zip(means, q.stds))
    expected = {"quad": C.quad_objective, "classic": C.classic_objective}[objective](error, kl, 64)
    assert q.history[0]["objective"] == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(C.CertificateError, match="objective must be one of"):
        C.optimise(model, means, data, epochs=0, objective="lambda")


@pytest.mark.slow
def test_certificate_by_hand():
    model = _tiny_model(4, sizes=(4, 6, 3))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(500, 4, generator=gen), torch.randint(0, 3, (500,), generator=gen)
    means, _, offsets = _gaussians(5, shapes=[tuple(t.shape) for t in C.weight_tensors(model)])
    prior = [m + 0.01 * o for m, o in zip(means, offsets)]  # near the means, so the bound is not saturated
    stds = [torch.full_like(m, 0.05) for m in means]
    posterior = C.Posterior(means, stds, prior)
    cert = C.certify(posterior, (x, y), passes=4, seed=9)
    wrong, draws = C.stochastic_errors(posterior, (x, y), passes=4, seed=9)
    upper = pacbayes.kl_inverse(wrong / draws, math.log(1 / C.DELTA_MC) / draws) + C.KL_TOL
    by_scale = []
    for s_p in C.PRIOR_SCALES:
        kl = sum(torch.distributions.kl_divergence(torch.distributions.Normal(m.double(), s.double()),
                                                   torch.distributions.Normal(p.double(), s_p)).sum().item()
                 for m, s, p in zip(means, stds, prior))
        rhs = (kl + math.log(2 * math.sqrt(500) * len(C.PRIOR_SCALES) / C.DELTA)) / 500
        by_scale.append(pacbayes.kl_inverse(upper, rhs))
    assert (cert.error_mc, cert.draws, cert.n) == (wrong / draws, 2000, 500)
    assert cert.error_upper == pytest.approx(upper, abs=1e-12)
    assert cert.bound == pytest.approx(min(by_scale), abs=1e-9)
    assert cert.prior_scale == C.PRIOR_SCALES[int(np.argmin(by_scale))]
    # two prior centres tried on this sample: the union bound covers 2 J priors
    kl = cert.kl
    twice = pacbayes.kl_inverse(upper, (kl + math.log(2 * math.sqrt(500) * 2 * len(C.PRIOR_SCALES) / C.DELTA)) / 500)
    assert C.certify(posterior, (x, y), passes=4, seed=9, priors=2).bound == pytest.approx(twice, abs=1e-9)
    assert cert.bound < 1 and twice > cert.bound


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("delta,delta_mc", [(0.0, 0.01), (1.0, 0.01), (-0.1, 0.01), (0.05, 1.5), (0.6, 0.5)])
def test_a_confidence_outside_the_unit_interval_is_refused(delta, delta_mc):
    model = _tiny_model()
    posterior = C.optimise(model, C.weight_tensors(model), (torch.randn(10, 4), torch.zeros(10, dtype=torch.long)),
                           epochs=0)
    with pytest.raises(C.CertificateError, match="delta"):
        C.certify(posterior, (torch.randn(10, 4), torch.zeros(10, dtype=torch.long)), delta=delta, delta_mc=delta_mc)


@pytest.mark.slow
def test_sigma_lr_gives_the_widths_their_own_optimiser():
    model = _tiny_model(1, sizes=(4, 6, 3))
    gen = torch.Generator().manual_seed(2)
    data = (torch.randn(200, 4, generator=gen), torch.randint(0, 3, (200,), generator=gen))
    start = C.weight_tensors(model)
    # the means barely move at lr 1e-12, so the KL to a prior at the start changes only through the
    # widths: by their own Adam with sigma_lr, not at all without it
    moved = C.optimise(model, start, data, epochs=3, lr=1e-12, sigma_lr=1e-2, batch_size=50)
    held = C.optimise(model, start, data, epochs=3, lr=1e-12, batch_size=50)
    assert max(h["kl"] for h in moved.history) > 1e-3
    assert max(h["kl"] for h in held.history) < 1e-7


def test_a_certificate_over_posteriors_tried_pays_for_them_in_the_monte_carlo_term():
    entry = {"error_mc": 0.03, "delta_mc": 0.005, "draws": 300000, "kl": 12.0, "n": 30000, "delta": C.DELTA,
             "priors_tried": 2}
    c = (12.0 + math.log(2 * math.sqrt(30000) * 2 * len(C.PRIOR_SCALES) / C.DELTA)) / 30000
    by_hand = {t: pacbayes.kl_inverse(pacbayes.kl_inverse(0.03, math.log(t / 0.005) / 300000), c) for t in (1, 16)}
    assert C.over_posteriors_tried(entry, 1) == pytest.approx(by_hand[1], abs=1e-9)
    assert C.over_posteriors_tried(entry, 16) == pytest.approx(by_hand[16], abs=1e-9)
    assert by_hand[16] > by_hand[1]
    with pytest.raises(C.CertificateError, match="positive integer"):
        C.over_posteriors_tried(entry, 0)


def test_maurers_bound_needs_eight_examples():
    with pytest.raises(C.CertificateError, match="at least 8"):
        C.complexity(10.0, 7)


def test_a_grid_chosen_after_the_posterior_is_refused():
    model = _tiny_model()
    data = (torch.randn(20, 4), torch.zeros(20, dtype=torch.long))
    posterior = C.optimise(model, C.weight_tensors(model), data, epochs=0)
    with pytest.raises(C.CertificateError, match="fixed before the posterior is optimised"):
        C.certify(posterior, data, grid=(0.05, 0.02))
    C.certify(posterior, data, grid=C.PRIOR_SCALES)  # repeating the grid it was optimised under is fine
    with pytest.raises(C.CertificateError, match="grid"):
        C.optimise(model, C.weight_tensors(model), data, epochs=0, grid=(0.01, 0.1))


def test_a_prior_learned_on_the_bound_sample_is_refused():
    with pytest.raises(C.CertificateError, match="must not depend on the data"):
        C.check_split(torch.tensor([1, 5, 9]), torch.tensor([2, 9, 11]))
    C.check_split(torch.tensor([1, 5]), torch.tensor([2, 9]))


def test_a_data_dependent_prior_and_its_bound_sample_are_disjoint():
    network = ftrain.TrainConfig(dataset="mnist", n=300, widths=(8,), epochs=1, batch_size=50)
    prior, bound = C.samples(C.CertificateSpec(network, prior="data", bound_n=400))
    assert len(prior) == 300 and len(bound) == 400
    assert not set(prior.indices.tolist()) & set(bound.indices.tolist())
    none, own = C.samples(C.CertificateSpec(network, prior="init"))
    assert none is None and torch.equal(own.indices, fdata.load("mnist", "train", n=300).indices)


@pytest.mark.parametrize("changes,match", [
    ({"prior": "posterior"}, "prior must be one of"),
    ({"delta": 0.0}, r"delta must lie in \(0, 1\)"),
    ({"delta_mc": 1.0}, r"delta_mc must lie in \(0, 1\)"),
    ({"bound_n": 100}, "bound_n is for prior='data'"),
    ({"prior": "data", "bound_n": 60000}, r"bound_n must lie in \[1, 59700\]"),
    ({"passes": 0}, "passes"),
    ({"pmin": 0.0}, "pmin"),
    ({"delta": 0.5, "delta_mc": 0.5}, "delta \\+ delta_mc must stay below 1"),
    ({"prior": "data", "bound_n": 500.0}, "bound_n must be an integer"),
    ({"priors_tried": 0}, "priors_tried"),
    ({"objective": "lambda"}, "objective must be one of"),
    ({"start": "middle"}, "start must be one of"),
    ({"prior": "data", "bound_n": 500, "start": "prior"}, "start='prior' is for prior='init'"),
])
def test_an_invalid_spec_is_refused_before_any_work(changes, match):
    network = ftrain.TrainConfig(dataset="mnist", n=300, widths=(8,), epochs=1, batch_size=50)
    with pytest.raises(C.CertificateError, match=match):
        C.CertificateSpec(network, **changes)


def test_a_data_dependent_prior_needs_images_the_prior_never_saw():
    with pytest.raises(C.CertificateError, match="part of the training split"):
        C.CertificateSpec(ftrain.TrainConfig(n=None, widths=(8,), epochs=1), prior="data")
    with pytest.raises(C.CertificateError, match="MLPs"):
        C.CertificateSpec(ftrain.TrainConfig(n=300, arch="cnn", widths=(4, 8), epochs=1, batch_size=50))


# ----------------------------------------------------------------------------- properties of the bound

SMALL = ftrain.TrainConfig(dataset="mnist", n=1000, widths=(32,), optimizer="sgd", lr=0.05, batch_size=50,
                           epochs=3, target_train_acc=None, seed=0)


@pytest.mark.slow
def test_the_optimised_certificate_is_below_the_unoptimised_ones_and_above_the_held_out_error():
    result = study.trained(SMALL)
    # a data-dependent prior: the optimised posterior and its start are both certified, and the
    # lower certificate is kept, so optimising never makes it worse
    optimised = C.certificate(C.CertificateSpec(SMALL, prior="data", bound_n=4000, epochs=5, passes=5))
    assert optimised["bound"] == min(optimised["start_bound"], optimised["optimised_bound"])
    assert optimised["optimised_bound"] < optimised["start_bound"]  # and here the optimisation helped
    # two posteriors were certified, so each Monte Carlo bound is at delta_mc / 2
    assert optimised["delta_mc"] == C.DELTA_MC / 2 and optimised["confidence"] == 1 - C.DELTA - C.DELTA_MC
    assert optimised["error_upper"] == pytest.approx(
        pacbayes.kl_inverse(optimised["error_mc"], math.log(2 / C.DELTA_MC) / optimised["draws"]), abs=1e-11)
    # a valid bound lies above the error it bounds (estimated on the 10,000 test images), and here
    # it says something
    assert optimised["stochastic_test_error"] < optimised["bound"] < 0.9
    # a prior at initialisation: not above the unoptimised bound of pacbayes.gaussian_bound (the
    # registry's pacbayes_bound, the first wave's) on the same network
    at_init = C.certificate(C.CertificateSpec(SMALL, epochs=5, optimizer="adam", lr=1e-4, passes=5))
    x, y = fdata.load("mnist", "train", n=1000)
    assert at_init["bound"] <= pacbayes.gaussian_bound(result.model, (x, y), result.initial_state).bound


@pytest.mark.slow
def test_the_certificate_of_a_network_that_memorised_random_labels_is_vacuous():
    x, _ = fdata.load("mnist", "train", n=500)
    y = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = models.mlp((256,))
    init = C.weight_tensors(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert (model(x).argmax(1) == y).float().mean() == 1.0  # memorised
    posterior = C.optimise(model, init, (x, y), epochs=30, lr=3e-3)
    assert C.certify(posterior, (x, y), passes=10).bound >= 1 - 1 / 10  # no better than guessing


def test_a_posterior_started_at_the_prior_is_the_initial_network_with_no_kl():
    result = study.trained(SMALL)
    entry = C.compute(C.CertificateSpec(SMALL, epochs=0, start="prior", sigma_init=0.01))
    # N(p, 0.01^2 I) against the prior N(p, s_P^2 I) at the grid's s_P = 0.01: KL = 0
    assert entry["kl"] == pytest.approx(0.0, abs=1e-6) and entry["prior_scale"] == pytest.approx(0.01)
    initial = models.mlp(SMALL.widths)
    initial.load_state_dict(result.initial_state)
    test = fdata.load("mnist", "test")
    by_hand = (models.predict(initial, test.images).argmax(1) != test.labels).double().mean().item()
    assert entry["mean_test_error"] == pytest.approx(by_hand, abs=1e-12) and by_hand > 0.5  # an untrained network
    # the default start is the trained network, far from its initialisation
    assert C.compute(C.CertificateSpec(SMALL, epochs=0, sigma_init=0.01))["kl"] > 100


def test_a_certificate_is_deterministic_and_served_from_the_store(monkeypatch):
    spec = C.CertificateSpec(SMALL, epochs=2)
    first = C.certificate(spec)
    assert C.compute(spec) == first  # recomputed from scratch: the same numbers
    monkeypatch.setattr(C, "compute", lambda *a, **k: pytest.fail("recomputed a stored certificate"))
    assert C.certificate(spec) == first
    assert C.certificate_table([spec], progress=False)["bound"].tolist() == [first["bound"]]


@pytest.mark.slow
def test_workers_store_the_same_certificates_as_the_serial_path(isolated_cache, tmp_path, monkeypatch):
    specs = [C.CertificateSpec(SMALL, epochs=1), C.CertificateSpec(SMALL, prior="data", bound_n=2000, epochs=1)]
    with executors.local_processes(1) as pool:
        on_workers = C.certificate_table(specs, executor=pool, progress=False)
    monkeypatch.setenv("FLATLIB_CACHE", str(tmp_path / "serial"))
    serial = C.certificate_table(specs, executor="serial", progress=False)
    assert on_workers.equals(serial)
