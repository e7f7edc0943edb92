"""flatlib.pacbayes against hand-computed values, scipy's root finder and torch.distributions."""
import math

import pytest
import torch
from scipy.optimize import brentq

from flatlib import pacbayes
from flatlib.train import TrainConfig
from oracles import trained_float64


def test_binary_kl_matches_hand_computed_values():
    assert pacbayes.kl_bernoulli(0.5, 0.25) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75))
    assert pacbayes.kl_bernoulli(0.0, 0.3) == pytest.approx(-math.log(0.7))
    assert pacbayes.kl_bernoulli(1.0, 0.3) == pytest.approx(-math.log(0.3))
    assert pacbayes.kl_bernoulli(0.2, 0.2) == 0.0
    assert pacbayes.kl_bernoulli(0.2, 1.0) == math.inf
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pacbayes.kl_bernoulli(1.2, 0.5)


def test_kl_inverse_against_closed_form_and_an_independent_root_finder():
    # q = 0: kl(0 || p) = -ln(1 - p), so the inverse is 1 - exp(-c).
    for c in (1e-4, 0.01, 0.5, 3.0):
        assert pacbayes.kl_inverse(0.0, c) == pytest.approx(1 - math.exp(-c), abs=1e-11)
    for q, c in ((0.05, 0.01), (0.3, 0.2), (0.5, 0.05), (0.9, 0.01)):
        expected = brentq(lambda p, q=q, c=c: pacbayes.kl_bernoulli(q, p) - c, q, 1 - 1e-15, xtol=1e-14)
        got = pacbayes.kl_inverse(q, c)
        assert got == pytest.approx(expected, abs=1e-11)
        assert got <= q + math.sqrt(c / 2) + 1e-12  # Pinsker: never looser than McAllester's form
    assert pacbayes.kl_inverse(0.3, 0.0) == pytest.approx(0.3)
    assert pacbayes.kl_inverse(0.3, 50.0) == pytest.approx(1.0)


def test_mcallester_is_the_hand_computed_square_root_bound():
    expected = 0.1 + math.sqrt((20 + math.log(2 * math.sqrt(1000) / 0.05)) / 2000)
    assert pacbayes.mcallester(0.1, 20.0, 1000, 0.05) == pytest.approx(expected)


def test_gaussian_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    mq, mp = (torch.randn(50, generator=gen, dtype=torch.float64) for _ in range(2))
    sq, sp = (torch.rand(50, generator=gen, dtype=torch.float64) + 0.1 for _ in range(2))
    normal = torch.distributions.Normal
    oracle = torch.distributions.kl_divergence(normal(mq, sq), normal(mp, sp)).sum()
    assert pacbayes._gaussian_kl(mq, sq, mp, sp) == pytest.approx(oracle.item(), rel=1e-12)


@pytest.fixture(scope="module")
def small():
    """A 784-8-10 MLP trained briefly on 4,000 images: few parameters, so the bound is not vacuous by far."""
    return trained_float64(TrainConfig(n=4000, widths=(8,), epochs=3, target_train_acc=None, optimizer="adam", lr=3e-3))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["isotropic", "magnitude"])
def test_gaussian_bound_is_assembled_from_its_parts(small, kind):
    model, ds, init = small
    r = pacbayes.gaussian_bound(model, ds, init, kind=kind, samples=20, delta=0.05, delta_mc=0.01)
    k, n = len(pacbayes.DEFAULT_SIGMAS), 4000
    assert len(r.per_sigma) == k and r.n == n
    kls = [row[1] for row in r.per_sigma]
    assert kls == sorted(kls, reverse=True)  # more noise, closer to the prior
    assert r.error_upper == pytest.approx(pacbayes.kl_inverse(r.error_mc, math.log(k / 0.01) / 20))
    complexity = (r.kl + math.log(2 * math.sqrt(n) * k / 0.05)) / n
    assert r.bound == pytest.approx(pacbayes.kl_inverse(r.error_upper, complexity))
    assert r.bound == min(row[4] for row in r.per_sigma)
    assert r.error_mc <= r.error_upper <= r.bound <= r.mcallester
    assert 0 < r.bound < 1


def test_gaussian_bound_refuses_a_mismatched_init(small):
    model, ds, init = small
    with pytest.raises(ValueError, match="initial state"):
        pacbayes.gaussian_bound(model, ds, {"1.weight": init["1.weight"]})
    with pytest.raises(ValueError, match="kind"):
        pacbayes.gaussian_bound(model, ds, init, kind="laplace")


@pytest.mark.slow
def test_sharpness_sigma_drops_training_accuracy_by_the_requested_amount(small):
    model, ds, _ = small
    sigma = pacbayes.sharpness_sigma(model, ds, drop=0.1, samples=10)
    sampler = pacbayes._Sampler(model, ds, 10, 0)
    clean = 1 - sampler.error_at(sampler.w)

    def drop_at(s):
        return clean - (1 - sampler.errors(torch.full_like(sampler.w, s)).mean().item())

    assert drop_at(sigma * 1.01) >= 0.1 > drop_at(sigma * 0.99)
    assert pacbayes.sharpness_sigma(model, ds, drop=0.3, samples=10) > sigma
