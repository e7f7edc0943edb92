"""flatlib.pacbayes' Monte Carlo sampler against the loop it replaced (issue 37): the loop is copied
here as the oracle, so the draws, the perturbed weights and the counted errors are checked against
code that shares nothing with the sampler but the model."""
import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from flatlib import data as fdata
from flatlib import models, pacbayes
from flatlib.train import TrainConfig, train

SIGMAS = pacbayes.DEFAULT_SIGMAS + (3e-4, 0.05)


def loop_errors(model, data, std, samples, seed):
    """The sampler before issue 37, verbatim in effect: a fresh generator per call, one draw at a
    time, and a plain forward pass of the whole network at the perturbed weights."""
    first = next(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    w = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
    x, y = data[0].to(first.device, first.dtype), data[1].to(first.device)
    w_model, std = w.to(first.device, first.dtype), std.to(first.device, first.dtype)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(samples):
        flat = w_model + std * torch.randn(w.numel(), generator=gen, dtype=first.dtype).to(first.device)
        params, i = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = flat[i:i + shape.numel()].reshape(shape)
            i += shape.numel()
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits = functional_call(model, params, (x,))
        model.train(was_training)
        out.append((logits.argmax(1) != y).double().mean().item())
    return torch.tensor(out)


def loop_std(model, kind, sigma, eps=1e-3):
    w = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
    return torch.full_like(w, sigma) if kind == "isotropic" else sigma * w.abs() + eps


def loop_sharpness_sigma(model, data, kind, drop=0.1, samples=10, eps=1e-3, lo=1e-6, hi=10.0, iters=15, seed=0):
    """sharpness_sigma's bisection before issue 37, on ``loop_errors``."""
    clean = 1 - loop_errors(model, data, loop_std(model, kind, 0.0, 0.0), 1, seed).item()

    def dropped(sigma):
        errors = loop_errors(model, data, loop_std(model, kind, sigma, eps), samples, seed)
        return clean - (1 - errors.mean().item()) >= drop

    if dropped(lo):
        return lo
    if not dropped(hi):
        return hi
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if dropped(mid) else (mid, hi)
    return math.sqrt(lo * hi)


@pytest.fixture(scope="module")
def mnist():
    subset = fdata.load("mnist", "train", n=400, seed=0)
    return subset.images, subset.labels


@pytest.fixture(scope="module")
def trained():
    """A 784-32-16-10 MLP trained for two epochs on 400 images (float32)."""
    config = TrainConfig(n=400, widths=(32, 16), epochs=2, target_train_acc=None, optimizer="adam", lr=3e-3)
    return train(config).model


def _batchnorm_mlp():
    torch.manual_seed(3)
    model = models.mlp((24, 12), batchnorm=True)
    for layer in model:
        if isinstance(layer, nn.BatchNorm1d):  # running statistics that are not the identity
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
    return model


def _flat_input_mlp_without_first_bias():
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(784, 20, bias=False), nn.ReLU(), nn.Linear(20, 10))


def _cases(trained):
    """(label, model, does the first-layer split apply, flatten the inputs first)."""
    as_float64 = copy.deepcopy(trained).double()
    torch.manual_seed(5)
    return [("trained float32", trained, True, False), ("trained float64", as_float64, True, False),
            ("random float32", models.mlp((64,)), True, False), ("batchnorm", _batchnorm_mlp(), True, False),
            ("no flatten, no first bias", _flat_input_mlp_without_first_bias(), True, True),
            ("cnn", models.cnn((2, 3), hidden=8), False, False)]


def _data_for(mnist, flat):
    x, y = mnist
    return (x.reshape(len(x), -1), y) if flat else (x, y)


@pytest.mark.parametrize("kind", ["isotropic", "magnitude"])
@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_every_draw_at_every_sigma_counts_the_loops_errors(trained, mnist, kind):
    for label, model, splits, flat in _cases(trained):
        data = _data_for(mnist, flat)
        sampler = pacbayes._Sampler(model, data, 6, seed=1)
        assert (sampler.first is not None) == splits, label
        grid = sampler.errors_at(kind, SIGMAS)
        generic = sampler.errors_at(kind, SIGMAS, first_layer=False)
        for sigma, got, plain in zip(SIGMAS, grid, generic):
            oracle = loop_errors(model, data, loop_std(model, kind, sigma), 6, seed=1)
            assert torch.equal(plain, oracle), (label, sigma)  # the generic path: bit for bit
            assert torch.equal(got, oracle), (label, sigma)  # the split: the same errors, draw by draw
            assert torch.equal(sampler.errors(loop_std(model, kind, sigma)), oracle), (label, sigma)
        one_at_a_time = [sampler.errors_at(kind, [sigma])[0] for sigma in SIGMAS]  # as the bisection asks
        assert all(torch.equal(a, b) for a, b in zip(one_at_a_time, grid)), label


def test_the_bounds_monte_carlo_errors_are_the_loops(trained, mnist):
    init = {name: value + 0.01 for name, value in trained.state_dict().items()}  # any prior centre
    as_float64 = copy.deepcopy(trained).double()
    for model, prior in ((trained, init), (as_float64, {k: v.double() for k, v in init.items()})):
        for kind in ("isotropic", "magnitude"):
            bound = pacbayes.gaussian_bound(model, mnist, prior, kind, samples=8, seed=2)
            for sigma, _, error_mc, _, _ in bound.per_sigma:
                oracle = loop_errors(model, mnist, loop_std(model, kind, sigma), 8, seed=2).mean().item()
                assert error_mc == oracle, (kind, sigma)


@pytest.mark.parametrize("kind", ["isotropic", "magnitude"])
@pytest.mark.parametrize("keep_bytes", [None, 0], ids=["products kept", "nothing kept"])
def test_sharpness_sigma_bisects_as_the_loop_did(trained, mnist, kind, keep_bytes, monkeypatch):
    if keep_bytes is not None:  # the bisection's generic path: the products do not fit
        monkeypatch.setattr(pacbayes, "KEEP_BYTES", keep_bytes)
    for model in (trained, copy.deepcopy(trained).double(), models.cnn((2, 3), hidden=8)):
        got = pacbayes.sharpness_sigma(model, mnist, kind, samples=4, iters=10)
        assert got == loop_sharpness_sigma(model, mnist, kind, samples=4, iters=10)
        if model is trained:
            assert 1e-6 < got < 10.0  # a bisection, not an end point


def test_the_split_is_refused_where_it_is_not_exact(mnist):
    x, _ = mnist
    torch.manual_seed(6)
    twice = nn.Linear(10, 10)
    shared = nn.Sequential(twice, nn.ReLU(), twice)  # one Linear used twice: its noise must enter both places
    hooked = models.mlp((8,))
    hooked[1].register_forward_hook(lambda module, inputs, output: output * 2)

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(784, 10)

        def forward(self, inputs):
            return self.layer(inputs.flatten(1))

    dropout_first = nn.Sequential(nn.Flatten(), nn.Dropout(0.0), nn.Linear(784, 10))
    for model, inputs in ((models.cnn((2, 3), hidden=8), x), (Custom(), x), (shared, torch.randn(30, 10)),
                          (hooked, x), (dropout_first, x)):
        assert pacbayes._first_linear(model, inputs, torch.cat([p.detach().reshape(-1) for p in model.parameters()])) \
            is None, type(model).__name__


def test_work_is_kept_between_calls_only_within_the_budget(trained, mnist):
    n, width = len(mnist[1]), 32
    draws_bytes = 5 * models.num_params(trained) * 4
    products_bytes = 5 * 2 * n * width * 4  # magnitude: two n x width float32 products a draw
    roomy = pacbayes._Sampler(trained, mnist, 5, seed=0, keep_bytes=max(draws_bytes, products_bytes))
    roomy.errors_at("magnitude", [0.01])
    assert len(roomy._kept_draws) == 5 and len(roomy._kept_products["magnitude"]) == 5
    assert all(len(p) == 2 and p[0].shape == (n, width) for p in roomy._kept_products["magnitude"])
    tight = pacbayes._Sampler(trained, mnist, 5, seed=0, keep_bytes=min(draws_bytes, products_bytes) - 1)
    first = tight.errors_at("magnitude", [0.01])[0]
    assert tight._kept_draws is None and tight._kept_products == {}
    assert torch.equal(first, tight.errors_at("magnitude", [0.01])[0])  # the draws made again: the same
    assert torch.equal(first, roomy.errors_at("magnitude", [0.01])[0])
