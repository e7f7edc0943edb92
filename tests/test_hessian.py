"""Oracles for flatlib.hessian: the dense Hessian of a tiny float64 network, exact eigenvalues
from torch.linalg.eigvalsh and the exact trace."""
import pytest
import torch

from flatlib import hessian
from oracles import dense_hessian, tiny_cnn, tiny_mlp


@pytest.fixture(scope="module")
def tiny():
    """The 6-5-4-3 float64 MLP on 40 random points, and its dense Hessian."""
    model, data = tiny_mlp(n=40)
    return model, data, dense_hessian(model, data)


def test_hvp_matches_the_dense_hessian(tiny):
    model, data, dense = tiny
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(dense.shape[0], generator=gen, dtype=torch.float64)
        hv = hessian.hvp(model, data, v)
        assert ((hv - dense @ v).norm() / (dense @ v).norm()).item() < 1e-8


def test_batch_accumulation_equals_one_full_batch(tiny):
    model, data, dense = tiny
    v = torch.randn(dense.shape[0], dtype=torch.float64)
    full = hessian.hvp(model, data, v)
    for batch_size in (1, 7, 16):
        batched = hessian.hvp(model, data, v, batch_size=batch_size)
        assert ((batched - full).norm() / full.norm()).item() < 1e-12


def test_hvp_leaves_grads_and_mode_untouched(tiny):
    model, data, dense = tiny
    model.train()
    assert all(p.grad is None for p in model.parameters())
    hessian.hvp(model, data, torch.ones(dense.shape[0], dtype=torch.float64))
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    hessian.hvp(model, data, torch.ones(dense.shape[0], dtype=torch.float64), batch_size=8)
    assert not model.training


def test_hvp_rejects_a_vector_of_the_wrong_length(tiny):
    model, data, dense = tiny
    with pytest.raises(ValueError, match="parameters"):
        hessian.hvp(model, data, torch.ones(dense.shape[0] + 1, dtype=torch.float64))


def test_lanczos_top_eigenvalues_match_eigvalsh_at_tight_tolerance(tiny):
    model, data, dense = tiny
    exact = torch.linalg.eigvalsh(dense).flip(0)
    result = hessian.top_eigenvalues(model, data, k=3, tol=1e-10, max_iter=dense.shape[0])
    assert result.converged
    rel = ((result.eigenvalues - exact[:3]).abs() / exact[:3].abs()).max().item()
    assert rel < 1e-6
    assert result.num_hvps <= dense.shape[0]
    for value, vector in zip(result.eigenvalues, result.eigenvectors):
        assert ((dense @ vector - value * vector).norm() / value.abs()).item() < 1e-5


def test_lanczos_at_default_tolerance_is_within_tol(tiny):
    model, data, dense = tiny
    top = torch.linalg.eigvalsh(dense)[-1].item()
    for seed in range(5):
        result = hessian.top_eigenvalues(model, data, seed=seed)
        assert result.converged and abs(result.eigenvalues[0].item() - top) <= 1e-3 * abs(top)


def logistic_regression_on_two_points():
    """Multinomial logistic regression (one Linear layer, 4 inputs, 3 classes, p = 15) in float64
    on two points. Its Hessian, the mean over the points of (diag(p_n) - p_n p_n^T) kron
    (x_n, 1)(x_n, 1)^T, has rank 4: a Lanczos run from any start vector reaches an invariant
    subspace after 5 steps (four nonzero eigenvalues and 0), and 0 has multiplicity 11."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    return model, (torch.randn(2, 4, dtype=torch.float64), torch.tensor([0, 2]))


def test_lanczos_past_an_invariant_subspace_finds_the_top_k_with_their_multiplicity():
    model, data = logistic_regression_on_two_points()
    dense = dense_hessian(model, data)
    exact = torch.linalg.eigvalsh(dense).flip(0)
    scale = exact[0].item()
    assert (exact[:4] > 1e-3 * scale).all() and (exact[4:].abs() < 1e-12 * scale).all()  # rank 4, as built
    for k in (5, 6, 9):
        result = hessian.top_eigenvalues(model, data, k=k, tol=1e-8)
        assert result.converged
        assert torch.allclose(result.eigenvalues, exact[:k], rtol=0, atol=1e-9 * scale)
        vectors = result.eigenvectors
        assert torch.allclose(vectors @ vectors.T, torch.eye(k, dtype=torch.float64), atol=1e-8)
        assert ((dense @ vectors.T - vectors.T * result.eigenvalues).norm(dim=0) < 1e-8 * scale).all()


def test_lanczos_refuses_fewer_iterations_than_eigenvalues_before_any_product(tiny):
    model, data, dense = tiny
    op = hessian.HessianOperator(model, data)
    with pytest.raises(ValueError, match="max_iter=2 .* k=3"):
        hessian.top_eigenvalues(op, k=3, max_iter=2)
    assert op.num_hvps == 0


def test_power_iteration_finds_the_largest_magnitude_eigenvalue(tiny):
    model, data, dense = tiny
    exact = torch.linalg.eigvalsh(dense)
    largest = exact[exact.abs().argmax()].item()
    result = hessian.power_iteration(model, data, tol=1e-10, max_iter=5000)
    assert abs(result.eigenvalues[0].item() - largest) < 1e-4 * abs(largest)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_estimators_are_unbiased(tiny, method):
    model, data, dense = tiny
    exact = torch.trace(dense).item()
    op = hessian.HessianOperator(model, data)
    estimates = torch.tensor([hessian.trace(op, probes=12, method=method, seed=s).value for s in range(60)])
    stderr = estimates.std().item() / 60 ** 0.5
    assert abs(estimates.mean().item() - exact) < 3 * stderr


def test_hutchplusplus_has_lower_variance_than_hutchinson_at_equal_probes_when_the_spectrum_decays():
    # Meyer et al.'s guarantee is for spectra dominated by a few directions, as Hessians of
    # trained networks are (a few outliers over a bulk); on a flat spectrum Hutch++ loses, since
    # only a third of its probes estimate the remainder.
    gen = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(200, 200, generator=gen, dtype=torch.float64))
    spectrum = 1.0 / torch.arange(1, 201, dtype=torch.float64) ** 2
    op = hessian.DenseOperator(basis @ torch.diag(spectrum) @ basis.T)
    spread = {m: torch.tensor([hessian.trace(op, probes=12, method=m, seed=s).value for s in range(60)]).std()
              for m in ("hutchinson", "hutch++")}
    assert spread["hutch++"] < spread["hutchinson"]


@pytest.mark.slow
def test_reported_trace_stderr_matches_the_spread_over_seeds(tiny):
    model, data, dense = tiny
    op = hessian.HessianOperator(model, data)
    runs = [hessian.trace(op, probes=20, method="hutchinson", seed=s) for s in range(60)]
    spread = torch.tensor([r.value for r in runs]).std().item()
    reported = torch.tensor([r.stderr for r in runs]).mean().item()
    assert 0.6 < reported / spread < 1.6


def test_trace_counts_its_hvps(tiny):
    model, data, dense = tiny
    assert hessian.trace(model, data, probes=12, method="hutch++").num_hvps == 12
    assert hessian.trace(model, data, probes=10, method="hutchinson").num_hvps == 10


@pytest.mark.slow
def test_spectral_density_integrates_to_one_and_its_mean_is_trace_over_p(tiny):
    model, data, dense = tiny
    p = dense.shape[0]
    sd = hessian.spectral_density(model, data, probes=20, steps=30, seed=0)
    assert abs(torch.trapezoid(sd.density, sd.grid).item() - 1) < 1e-9
    assert torch.allclose(sd.weights.sum(1), torch.ones(20, dtype=torch.float64))
    mean, err = sd.moment(1)
    assert abs(mean - torch.trace(dense).item() / p) < 3 * err
    smoothed_mean = torch.trapezoid(sd.grid * sd.density, sd.grid).item()
    assert abs(smoothed_mean - mean) < 1e-3 * max(abs(mean), 1e-12) + 1e-6


@pytest.mark.slow
def test_spectral_density_nodes_span_the_exact_spectrum(tiny):
    model, data, dense = tiny
    exact = torch.linalg.eigvalsh(dense)
    sd = hessian.spectral_density(model, data, probes=2, steps=dense.shape[0], seed=1)
    assert abs(sd.nodes.max().item() - exact[-1].item()) < 1e-6 * abs(exact[-1].item())
    assert abs(sd.nodes.min().item() - exact[0].item()) < 1e-6 * max(abs(exact[0].item()), 1.0)


def test_spectral_density_grid_stays_on_the_spectrum_when_probes_stop_at_different_steps():
    # Linear regression (MSE, one Linear layer without bias) whose Hessian is diag(1, 2, 2 + 1e-12, 3):
    # whether Lanczos resolves the near-double eigenvalue, or stops at an invariant subspace one
    # step earlier, depends on the probe, so the probes' node lists differ in length.
    loss = torch.nn.functional.mse_loss
    eigs = torch.tensor([1.0, 2.0, 2.0 + 1e-12, 3.0], dtype=torch.float64)
    model = torch.nn.Linear(4, 1, bias=False).double()
    data = (torch.diag((eigs * 2).sqrt()), torch.zeros(4, 1, dtype=torch.float64))
    exact = torch.linalg.eigvalsh(dense_hessian(model, data, loss))
    lo, hi = exact[0].item(), exact[-1].item()
    assert abs(lo - 1) < 1e-12 and abs(hi - 3) < 1e-12  # the Hessian is the one built
    sd = hessian.spectral_density(model, data, probes=10, loss=loss)
    assert len(set((sd.weights > 0).sum(1).tolist())) > 1  # some probes stopped early: the case under test
    assert sd.nodes.min().item() >= lo - 1e-9 and sd.nodes.max().item() <= hi + 1e-9
    # default width: 1 % of the spectrum's range, and the grid reaches 5 widths beyond it
    margin = 5 * 0.01 * (hi - lo)
    assert sd.grid[0].item() >= lo - margin - 1e-9 and sd.grid[-1].item() <= hi + margin + 1e-9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hvp_on_cuda_matches_cpu(tiny):
    model, data, dense = tiny
    v = torch.randn(dense.shape[0], dtype=torch.float64)
    import copy
    gpu = hessian.hvp(copy.deepcopy(model).cuda(), (data[0].cuda(), data[1].cuda()), v.cuda())
    assert ((gpu.cpu() - dense @ v).norm() / (dense @ v).norm()).item() < 1e-8


def test_diagonal_is_the_dense_hessian_diagonal_for_an_mlp(tiny):
    model, data, dense = tiny
    assert hessian.plain_mlp_layers(model) is not None  # the batched path (mlp_diagonals)
    diag = hessian.diagonal(model, data, batch_size=16)  # batches of 16, 16, 8
    assert torch.allclose(diag, torch.diagonal(dense), rtol=1e-9, atol=1e-12)


def test_an_mlp_the_batched_path_does_not_take_still_gets_the_dense_hessian_diagonal():
    torch.manual_seed(2)
    nn = torch.nn
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5, bias=False), nn.ReLU(),
                          nn.Sequential(nn.Linear(5, 4), nn.ReLU()), nn.Linear(4, 3)).double()
    assert hessian.plain_mlp_layers(model) is None  # no bias, and a nested container: one pass per class
    data = (torch.randn(30, 6, dtype=torch.float64), torch.randint(0, 3, (30,)))
    diag = hessian.diagonal(model, data, batch_size=16)
    assert torch.allclose(diag, torch.diagonal(dense_hessian(model, data)), rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_diagonal_is_the_dense_hessian_diagonal_for_a_cnn():
    model, data = tiny_cnn()
    dense = dense_hessian(model, data)
    diag = hessian.diagonal(model, data)
    assert torch.allclose(diag, torch.diagonal(dense), rtol=1e-9, atol=1e-12)


def test_diagonal_refuses_networks_it_would_get_wrong():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="Tanh"):
        hessian.diagonal(model, (torch.randn(5, 3), torch.zeros(5, dtype=torch.long)))
    relu = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="batch_size must be a positive"):
        hessian.diagonal(relu, (torch.randn(5, 3), torch.zeros(5, dtype=torch.long)), batch_size=0)
    with pytest.raises(ValueError, match="data is empty"):
        hessian.diagonal(relu, (torch.randn(0, 3), torch.zeros(0, dtype=torch.long)))
