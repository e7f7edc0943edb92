"""flatlib.ensemble: networks trained as one vectorised ensemble equal the networks the loop
(flatlib.train.train) trains, member by member, to float tolerance: weights, histories, stopping
epochs, divergence and test predictions; and the batched curvature measures equal the loop's
(flatlib.hessian) member by member, and the dense Hessian's on tiny float64 networks."""
import copy
import dataclasses

import pytest
import torch

from flatlib import data as fdata
from flatlib import ensemble, hessian, measures, models, pacbayes
from flatlib import train as ftrain
from oracles import dense_hessian, tiny_cnn, tiny_mlp

BASE = ftrain.TrainConfig(dataset="mnist", n=300, widths=(16, 16), optimizer="sgd", lr=0.05, batch_size=50, epochs=4,
                          target_train_acc=None)


def _same_as_the_loop(configs, atol=1e-5):
    together = ensemble.train_ensemble(configs)
    test = fdata.load("mnist", "test", n=1000)
    for config, member in zip(configs, together):
        alone = ftrain.train(config)
        assert member.config == config
        assert member.status == alone.status
        assert [h.get("event") for h in member.history] == [h.get("event") for h in alone.history]
        assert len(member.history) == len(alone.history)
        for mine, theirs in zip(member.history, alone.history):
            for key in ("train_loss", "train_acc", "batch_loss", "loss"):
                if key in theirs:
                    assert mine[key] == pytest.approx(theirs[key], abs=atol, rel=atol)
        for name, value in alone.model.state_dict().items():
            torch.testing.assert_close(member.model.state_dict()[name], value, atol=atol, rtol=atol)
        for name, value in alone.initial_state.items():
            assert torch.equal(member.initial_state[name], value)
        agree = (models.predict(member.model, test.images).argmax(1) == models.predict(alone.model, test.images)
                 .argmax(1)).double().mean().item()
        assert agree >= 0.999
    return together


def test_an_sgd_ensemble_equals_the_loop_member_by_member():
    _same_as_the_loop([dataclasses.replace(BASE, seed=s) for s in (0, 1, 2)])


def test_an_adam_ensemble_with_weight_decay_equals_the_loop():
    _same_as_the_loop([dataclasses.replace(BASE, optimizer="adam", lr=1e-3, weight_decay=1e-4, seed=s)
                       for s in (3, 4)])


def test_members_stop_by_their_own_rules_at_their_own_epochs():
    configs = [dataclasses.replace(BASE, epochs=30, target_train_loss=0.25, patience=3, seed=s) for s in range(4)]
    together = _same_as_the_loop(configs)
    assert len({len(r.history) for r in together}) > 1  # they did stop at different epochs


def test_a_diverging_member_is_set_aside_as_the_loop_marks_it():
    configs = [dataclasses.replace(BASE, lr=50.0, seed=s) for s in (0, 1)]
    together = _same_as_the_loop(configs, atol=1e-3)  # at lr 50 rounding grows fast until the stop
    assert all(r.diverged for r in together)


@pytest.mark.parametrize("configs,match", [
    ([BASE, dataclasses.replace(BASE, lr=0.1, seed=1)], "differ in more than their seed"),
    ([BASE, BASE], "seeds repeat"),
    ([dataclasses.replace(BASE, sam_rho=0.05)], "SAM and augmentation"),
    ([], "at least one config"),
])
def test_configs_it_cannot_train_together_are_refused(configs, match):
    with pytest.raises(ensemble.EnsembleError, match=match):
        ensemble.train_ensemble(configs)


def test_groups_split_by_recipe_and_keep_order():
    a = [dataclasses.replace(BASE, seed=s) for s in (0, 1)]
    b = [dataclasses.replace(BASE, lr=0.1, seed=s) for s in (0, 1)]
    assert ensemble.groups([a[0], b[0], a[1], b[1], a[0]]) == [a, b]


def test_the_store_is_not_filled_from_cpu_ensembles():
    with pytest.raises(ensemble.EnsembleError, match="for CUDA configs"):
        ensemble.sweep([BASE])


# ----------------------------------------------------------------------------- batched curvature

@pytest.fixture(scope="module")
def trained_members():
    """Three trained 784-16-16-10 MNIST MLPs that differ in their seed, and 300 other training images."""
    members = [r.model for r in ensemble.train_ensemble([dataclasses.replace(BASE, seed=s) for s in (0, 1, 2)])]
    other = fdata.load("mnist", "train", n=600, seed=1)
    return members, (other.images[:300], other.labels[:300])


def _tiny_members(count=3):
    """``count`` 6-5-4-3 float64 MLPs with different weights on the data of ``tiny_mlp(seed=0)``."""
    models_ = [tiny_mlp(seed=s)[0] for s in range(count)]
    return models_, tiny_mlp(seed=0)[1]


def test_the_stacked_forward_gives_each_members_logits(trained_members):
    members, (x, _) = trained_members
    logits = ensemble.stack(members).forward(x)
    for member, mine in zip(members, logits):
        torch.testing.assert_close(mine, models.predict(member, x), atol=1e-5, rtol=1e-5)


def test_batched_diagonals_equal_the_dense_hessians_diagonals():
    members, data = _tiny_members()
    diagonals = ensemble.hessian_diagonals(members, data, batch_size=16)  # batches of 16, 16 and 8
    assert diagonals.shape == (3, 74) and diagonals.dtype == torch.float64
    for member, mine in zip(members, diagonals):
        torch.testing.assert_close(mine, torch.diagonal(dense_hessian(member, data)), atol=1e-12, rtol=1e-10)


def test_batched_diagonals_equal_the_loops_on_trained_networks(trained_members):
    members, data = trained_members
    diagonals = ensemble.hessian_diagonals(members, data)
    for member, mine in zip(members, diagonals):
        loop = hessian.diagonal(member, data)
        assert ((mine - loop).abs().max() / loop.abs().max()).item() < 1e-5
        assert mine.sum().item() == pytest.approx(loop.sum().item(), rel=1e-5)  # the exact hessian_trace


def test_batched_top_eigenvalues_equal_the_dense_hessians():
    members, data = _tiny_members()
    results = ensemble.top_eigenvalues(members, data, tol=1e-10, max_iter=74)
    for member, result in zip(members, results):
        dense = dense_hessian(member, data)
        assert result.eigenvalues[0].item() == pytest.approx(torch.linalg.eigvalsh(dense)[-1].item(), rel=1e-8)
        vector = result.eigenvectors[0]
        assert ((dense @ vector - result.eigenvalues[0] * vector).norm() / result.eigenvalues[0].abs()).item() < 1e-5


def test_batched_top_eigenvalues_follow_the_loop_step_for_step(trained_members):
    members, data = trained_members
    results = ensemble.top_eigenvalues(members, data, tol=1e-4)
    for member, result in zip(members, results):
        loop = hessian.top_eigenvalues(member, data, k=1, tol=1e-4)
        assert result.converged and loop.converged
        assert result.num_hvps == loop.num_hvps  # each member stopped where it would alone
        assert result.eigenvalues[0].item() == pytest.approx(loop.eigenvalues[0].item(), rel=1e-5)
        assert result.residuals[0].item() == pytest.approx(loop.residuals[0].item(), rel=1e-3, abs=1e-7)
    assert len({r.num_hvps for r in results}) > 1  # and they did stop at different steps


def test_a_member_that_exhausts_max_iter_is_marked_unconverged():
    members, data = _tiny_members(2)
    results = ensemble.top_eigenvalues(members, data, tol=1e-14, max_iter=3)
    assert [r.num_hvps for r in results] == [3, 3] and not any(r.converged for r in results)


@pytest.mark.parametrize("build,match", [
    (lambda: [], "at least one model"),
    (lambda: [tiny_cnn()[0]], "not a plain ReLU MLP"),
    (lambda: [models.mlp((8,), batchnorm=True)], "not a plain ReLU MLP"),
    (lambda: [models.mlp((8,)), models.mlp((9,))], "differ in architecture"),
    (lambda: [models.mlp((8,)), models.mlp((8,)).double()], "differ in architecture, device or dtype"),
])
def test_what_cannot_be_stacked_is_refused(build, match):
    with pytest.raises(ensemble.EnsembleError, match=match):
        ensemble.stack(build())


@pytest.mark.parametrize("kind", ["isotropic", "magnitude"])
def test_batched_weight_noise_draws_equal_the_pacbayes_samplers(trained_members, kind):
    members, data = trained_members
    st = ensemble.stack(members)
    w = st.flat(st.params())
    std = torch.tensor(0.02) if kind == "isotropic" else 0.05 * w.abs() + 1e-3
    # room for two perturbed ensembles per pass: passes of 2, 2, 2 and 1 draws
    errors = ensemble.perturbed_errors(members, data, std, samples=7, max_bytes=2 * 3 * st.num_params * 4)
    assert errors.shape == (3, 7)
    for m, member in enumerate(members):
        loop = pacbayes._Sampler(member, data, 7, seed=0).errors(std.expand_as(w)[m])
        wrong = (errors[m] * len(data[1])).round(), (loop.double() * len(data[1])).round()
        assert torch.equal(*wrong)  # the same misclassified images counted, draw by draw
    assert errors.std(1).min() > 0  # the draws differ


def test_the_batched_paths_give_the_registered_measures_numbers(trained_members):
    """What a study's table would hold: the registry's top_eigenvalue and exact hessian_trace at
    their default options, and the Monte Carlo errors of pacbayes_bound at every noise scale."""
    members, data = trained_members
    top = ensemble.top_eigenvalues(members, data)
    traces = ensemble.hessian_diagonals(members, data).sum(1)
    for member, result, trace in zip(members, top, traces):
        init = {name: value.detach().clone() for name, value in member.state_dict().items()}  # any prior centre
        assert result.eigenvalues[0].item() == pytest.approx(measures.MEASURES["top_eigenvalue"].fn(member, data),
                                                             rel=1e-5)
        assert trace.item() == pytest.approx(measures.MEASURES["hessian_trace"].fn(member, data), rel=1e-5)
        bound = pacbayes.gaussian_bound(member, data, init, "isotropic", samples=5)
        for sigma, _, error_mc, _, _ in bound.per_sigma:
            batched = ensemble.perturbed_errors([member], data, sigma, samples=5)[0].mean().item()
            assert batched == pytest.approx(error_mc, abs=1e-6)  # the sampler averages in float32; one image is 7e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_batched_measures_equal_the_cpu_loop(trained_members):
    members, data = trained_members
    on_gpu = [copy.deepcopy(m).cuda() for m in members]
    gpu_data = tuple(t.cuda() for t in data)
    diagonals = ensemble.hessian_diagonals(on_gpu, gpu_data).cpu()
    top = ensemble.top_eigenvalues(on_gpu, gpu_data)
    for member, diagonal, result in zip(members, diagonals, top):
        loop = hessian.diagonal(member, data)
        assert ((diagonal - loop).abs().max() / loop.abs().max()).item() < 1e-4
        alone = hessian.top_eigenvalues(member, data).eigenvalues[0].item()
        assert result.eigenvalues[0].item() == pytest.approx(alone, rel=2e-3)  # both to tol 1e-3
