"""flatlib.ensemble: networks trained as one vectorised ensemble equal the networks the loop
(flatlib.train.train) trains, member by member, to float tolerance: weights, histories, stopping
epochs, divergence and test predictions; and the batched curvature measures equal the loop's
(flatlib.hessian) member by member, and the dense Hessian's on tiny float64 networks."""
import copy
import dataclasses

import pytest
import torch

from flatlib import data as fdata
from flatlib import ensemble, executors, hessian, measures, models, pacbayes, study
from flatlib import train as ftrain
from oracles import dense_hessian, tiny_cnn, tiny_mlp

BASE = ftrain.TrainConfig(dataset="mnist", n=300, widths=(16, 16), optimizer="sgd", lr=0.05, batch_size=50, epochs=4,
                          target_train_acc=None)


def _same_as_the_loop(configs, atol=1e-5, together=None):
    """Train ``configs`` as one ensemble (or take ``together``, results of them) and check each
    member against ``flatlib.train.train``'s network of its config; returns the members."""
    together = ensemble.train_ensemble(configs) if together is None else together
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
    ([dataclasses.replace(BASE, sam_rho=0.05)], "SAM, augmentation"),
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


def test_sweeps_pick_ensembles_only_on_cuda_for_configs_that_differ_only_in_seed(monkeypatch):
    seeds = [dataclasses.replace(BASE, seed=s) for s in (0, 1)]
    other = dataclasses.replace(BASE, lr=0.1)  # alone in its recipe
    sam = [dataclasses.replace(BASE, sam_rho=0.05, seed=s) for s in (0, 1)]  # not vectorised
    assert ensemble.dispatched_groups(seeds + [other] + sam) == []  # on CPU: the loop
    on_cuda = [dataclasses.replace(c, device="cuda") for c in seeds + [other] + sam]
    assert ensemble.dispatched_groups(on_cuda) == [on_cuda[:2]]
    monkeypatch.setattr(executors, "ENSEMBLE_ON_CPU", True)
    assert ensemble.dispatched_groups(seeds + [other] + sam + seeds) == [seeds]


def _trained_by_the_ensemble_path(monkeypatch):
    """Force the ensemble path on CPU, and make the loop's training fail inside the sweep."""
    monkeypatch.setattr(executors, "ENSEMBLE_ON_CPU", True)
    loop = ftrain.train

    def refused(config):
        raise AssertionError(f"the loop trained seed {config.seed}")
    monkeypatch.setattr(ftrain, "train", refused)
    return loop


def test_a_sweep_on_the_ensemble_path_stores_the_loops_networks(monkeypatch):
    configs = [dataclasses.replace(BASE, epochs=30, target_train_loss=0.25, patience=3, seed=s) for s in range(3)]
    loop = _trained_by_the_ensemble_path(monkeypatch)
    swept = study.sweep(configs, progress=False)
    monkeypatch.setattr(ftrain, "train", loop)
    stored = [study.load_network(c) for c in configs]
    assert all(r is not None for r in stored)
    _same_as_the_loop(configs, together=swept)  # weights to 1e-5, histories, events, stopping epochs
    for mine, again in zip(swept, stored):
        assert mine.history == again.history


def test_a_table_on_the_ensemble_path_equals_the_loops(monkeypatch, tmp_path):
    configs = [dataclasses.replace(BASE, seed=s) for s in (5, 6)]
    names = ["simplicity_l2"]
    by_loop = study.network_table(configs, names=names, progress=False)
    monkeypatch.setenv("FLATLIB_CACHE", str(tmp_path / "ensemble-path"))
    _trained_by_the_ensemble_path(monkeypatch)
    by_ensemble = study.network_table(configs, names=names, progress=False)
    assert list(by_ensemble.columns) == list(by_loop.columns)
    for column in by_loop.columns:
        if column == "train_time_s":
            continue
        if by_loop[column].dtype.kind == "f":
            assert by_ensemble[column].tolist() == pytest.approx(by_loop[column].tolist(), rel=1e-5, abs=1e-5)
        else:
            assert by_ensemble[column].tolist() == by_loop[column].tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_a_sweep_takes_the_ensemble_path_and_equals_the_loop(monkeypatch):
    configs = [dataclasses.replace(BASE, device="cuda", seed=s) for s in (0, 1, 2)]
    loop = _trained_by_the_ensemble_path(monkeypatch)
    monkeypatch.setattr(executors, "ENSEMBLE_ON_CPU", False)  # the CUDA rule alone picks it
    swept = study.sweep(configs, progress=False)
    monkeypatch.setattr(ftrain, "train", loop)
    _same_as_the_loop(configs, together=swept)


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_batched_top_eigenvalues_equal_the_dense_hessians():
    members, data = _tiny_members()
    results = ensemble.top_eigenvalues(members, data, tol=1e-10, max_iter=74)
    for member, result in zip(members, results):
        dense = dense_hessian(member, data)
        assert result.eigenvalues[0].item() == pytest.approx(torch.linalg.eigvalsh(dense)[-1].item(), rel=1e-8)
        vector = result.eigenvectors[0]
        assert ((dense @ vector - result.eigenvalues[0] * vector).norm() / result.eigenvalues[0].abs()).item() < 1e-5


def _same_eigen_results(batched, loop, rel=1e-5):
    assert batched.converged == loop.converged
    assert batched.num_hvps == loop.num_hvps  # the member stopped where it would alone
    assert batched.eigenvalues[0].item() == pytest.approx(loop.eigenvalues[0].item(), rel=rel)
    assert batched.residuals[0].item() == pytest.approx(loop.residuals[0].item(), rel=1e-3, abs=1e-7)
    torch.testing.assert_close(batched.eigenvectors, loop.eigenvectors, atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_batched_top_eigenvalues_follow_the_loop_step_for_step(trained_members):
    members, data = trained_members
    results = ensemble.top_eigenvalues(members, data, tol=1e-4)
    for member, result in zip(members, results):
        loop = hessian.top_eigenvalues(member, data, k=1, tol=1e-4)
        assert loop.converged
        _same_eigen_results(result, loop)
    assert len({r.num_hvps for r in results}) > 1  # and they did stop at different steps
    _same_eigen_results(ensemble.top_eigenvalues(members[:1], data, tol=1e-4)[0], hessian.top_eigenvalues(
        members[0], data, k=1, tol=1e-4))  # one member alone


def test_a_member_that_exhausts_max_iter_is_marked_unconverged_as_in_the_loop():
    members, data = _tiny_members(2)
    results = ensemble.top_eigenvalues(members, data, tol=1e-14, max_iter=3)
    assert [r.num_hvps for r in results] == [3, 3] and not any(r.converged for r in results)
    for member, result in zip(members, results):
        _same_eigen_results(result, hessian.top_eigenvalues(member, data, k=1, tol=1e-14, max_iter=3), rel=1e-10)


def test_a_member_in_an_invariant_subspace_stops_there_as_in_the_loop():
    """A member whose hidden units are all dead has logits equal to the last bias: its Hessian has
    rank at most C - 1 = 2, and Lanczos finds an invariant subspace within 3 steps, while the
    other member runs on."""
    members, data = _tiny_members(2)
    with torch.no_grad():
        members[0][3].bias.fill_(-1e3)  # the last hidden layer
    results = ensemble.top_eigenvalues(members, data, tol=1e-12, max_iter=74)
    assert results[0].num_hvps <= 3 < results[1].num_hvps
    for member, result in zip(members, results):
        _same_eigen_results(result, hessian.top_eigenvalues(member, data, k=1, tol=1e-12, max_iter=74), rel=1e-10)


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


def test_frozen_parameters_are_refused():
    model = models.mlp((8,))
    model[1].bias.requires_grad_(False)
    with pytest.raises(ensemble.EnsembleError, match="frozen parameters"):
        ensemble.stack([model])


@pytest.mark.parametrize("call,match", [
    (lambda ms, d: ensemble.top_eigenvalues(ms, d, max_iter=0), "max_iter must be a positive integer"),
    (lambda ms, d: ensemble.hessian_diagonals(ms, d, batch_size=0), "batch_size must be a positive integer"),
    (lambda ms, d: ensemble.hessian_diagonals(ms, d, batch_size=-1), "batch_size must be a positive integer"),
    (lambda ms, d: ensemble.perturbed_errors(ms, d, 0.1, samples=0), "samples must be a positive integer"),
    (lambda ms, d: ensemble.perturbed_errors(ms, d, torch.ones(3), samples=2), r"std has shape \(3,\)"),
    (lambda ms, d: ensemble.perturbed_errors(ms, (d[0][:0], d[1][:0]), 0.1, samples=2), "one positive length"),
    (lambda ms, d: ensemble.hessian_diagonals(ms, (d[0], d[1][:5])), "one positive length"),
])
def test_bad_arguments_are_refused_before_any_work(call, match):
    members, data = _tiny_members(2)
    with pytest.raises(ValueError, match=match):
        call(members, data)


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


@pytest.mark.slow
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
        w = torch.cat([p.detach().reshape(-1).double() for p in member.parameters()])
        for kind in ("isotropic", "magnitude"):
            bound = pacbayes.gaussian_bound(member, data, init, kind, samples=5)
            for sigma, _, error_mc, _, _ in bound.per_sigma:
                std = sigma if kind == "isotropic" else sigma * w.abs() + 1e-3  # the posterior's (pacbayes._stds)
                batched = ensemble.perturbed_errors([member], data, std, samples=5)[0].mean().item()
                assert batched == pytest.approx(error_mc, abs=1e-6)  # the sampler averages in float32; one image: 7e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_batched_measures_equal_the_cpu_loop(trained_members):
    """The data stay on the CPU: the batched paths move them, as the loop does."""
    members, data = trained_members
    on_gpu = [copy.deepcopy(m).cuda() for m in members]
    diagonals = ensemble.hessian_diagonals(on_gpu, data).cpu()
    top = ensemble.top_eigenvalues(on_gpu, data, tol=1e-4)
    std = torch.tensor(0.02)
    errors = ensemble.perturbed_errors(on_gpu, data, std, samples=5)
    for member, gpu_member, diagonal, result, row in zip(members, on_gpu, diagonals, top, errors):
        loop = hessian.diagonal(member, data)
        assert ((diagonal - loop).abs().max() / loop.abs().max()).item() < 1e-4
        _same_eigen_results(result, hessian.top_eigenvalues(gpu_member, data, k=1, tol=1e-4), rel=1e-4)
        sampled = pacbayes._Sampler(gpu_member, data, 5, seed=0).errors(std.expand(models.num_params(member)))
        assert torch.equal((row * len(data[1])).round(), (sampled.double() * len(data[1])).round())
