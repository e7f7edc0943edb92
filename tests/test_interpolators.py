"""flatlib.interpolators (claim C7): the data against its definition, the closed-form trace
against a dense autograd Hessian, the minimum over rescalings against scipy's optimiser, and
the interpolators themselves."""
import math

import numpy as np
import pytest
import torch
from scipy import optimize
from scipy import stats as sps

from flatlib import interpolators as I


def test_the_data_match_their_definition():
    task = I.Task(d=6, links=("relu", "tanh"), noise=0.3, seed=1)
    u = task.directions()
    assert torch.allclose(u @ u.T, torch.eye(2, dtype=torch.float64), atol=1e-12)
    x, y = task.sample(50000, seed=0)
    assert x.mean(0).abs().max() < 0.03 and (torch.cov(x.T) - torch.eye(6, dtype=torch.float64)).abs().max() < 0.03
    by_hand = torch.relu(x @ u[0]) + torch.tanh(x @ u[1])
    assert torch.allclose(task.target(x), by_hand)
    assert (y - by_hand).std().item() == pytest.approx(0.3, rel=0.02)
    assert by_hand.mean().item() == pytest.approx(1 / math.sqrt(2 * math.pi), abs=0.02)  # E relu(z) + E tanh(z)
    hard = I.Task(d=6, links=("relu",), approximation=0.5)
    z = x @ hard.directions()[0]
    assert torch.allclose(hard.target(x), torch.relu(z) + 0.5 * torch.cos(3 * z))
    assert torch.equal(task.sample(10, 3)[0], task.sample(10, 3)[0])


def test_bad_tasks_and_networks_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match="unknown link.*relu"):
        I.Task(links=("sin",))
    with pytest.raises(ValueError, match="width >= 10"):
        I.check(d=9, width=5, n=100)
    with pytest.raises(ValueError, match="tanh.*no rescaling symmetry.*'relu'"):
        I.check(d=9, width=50, n=100, activation="tanh")
    with pytest.raises(ValueError, match="unknown kind"):
        I.Fit(I.Task(), "random")
    with pytest.raises(ValueError, match="fewer than the 200 samples"):  # the extra points count too
        I.Fit(I.Task(d=10), "adversarial", n=100, width=15, adversarial_points=100)


def dense_trace(model, x, y):
    params = [model.w, model.a]
    shapes = [p.shape for p in params]
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def f(theta):
        w = theta[:shapes[0].numel()].reshape(shapes[0])
        a = theta[shapes[0].numel():]
        return 0.5 * ((torch.relu(x @ w.T) @ a - y) ** 2).mean()

    return torch.autograd.functional.hessian(f, flat).diagonal().sum().item()


def test_the_closed_form_trace_is_the_dense_hessians_at_any_point():
    torch.manual_seed(0)
    model = I.TwoLayer(d=4, width=6, init_scale=1.0, seed=2)
    x = torch.randn(30, 4, dtype=torch.float64)
    y = torch.randn(30, dtype=torch.float64)  # far from interpolation: the residual term is there
    assert I.trace(model, x) == pytest.approx(dense_trace(model, x, y), rel=1e-10)


def test_the_minimum_over_rescalings_is_scipys_and_keeps_the_function():
    model = I.TwoLayer(d=3, width=5, init_scale=1.0, seed=4)
    x = torch.randn(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    best = optimize.minimize(lambda logc: I.trace(I.rescaled(model, np.exp(logc)), x), np.zeros(5),
                             method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
    assert I.min_rescaled_trace(model, x) == pytest.approx(best.fun, rel=1e-6)
    flat = I.rescaled(model, I.flattest_rescaling(model, x))
    assert I.trace(flat, x) == pytest.approx(I.min_rescaled_trace(model, x), rel=1e-10)
    assert I.min_rescaled_trace(flat, x) == pytest.approx(I.min_rescaled_trace(model, x), rel=1e-10)
    with torch.no_grad():
        assert torch.allclose(flat(x), model(x), atol=1e-12)
    with pytest.raises(ValueError, match="positive"):
        I.rescaled(model, [1, 1, 1, 1, -1])


SMALL = dict(n=30, width=60, steps=20000, penalty_steps=1000, adversarial_points=30)


@pytest.mark.slow
def test_interpolators_fit_what_they_are_given_and_are_kept_in_the_store(monkeypatch):
    task = I.Task(d=5, links=("relu",))
    rows = {kind: I.row(I.Fit(task, kind, seed=0, **SMALL)) for kind in I.KINDS}
    for kind, row in rows.items():
        assert row["interpolated"], (kind, row)
        assert row["train_loss"] < 1e-5  # interpolates its training targets (shuffled: its own)
    assert rows["flattest"]["trace"] == pytest.approx(rows["flattest"]["min_trace"], rel=1e-9)  # stored rescaled
    for bad in I.NON_GENERALISING:
        assert rows[bad]["population_loss"] > rows["gd"]["population_loss"]
    monkeypatch.setattr(I, "TwoLayer", None)  # a second request trains nothing
    assert I.train(I.Fit(task, "gd", seed=0, **SMALL))["interpolated"]


def test_separation_is_the_mann_whitney_auc():
    g, o = [1.0, 2.0, 3.0, 3.0], [2.5, 3.0, 7.0]
    out = I.separation(g, o)
    u = sps.mannwhitneyu(o, g).statistic  # pairs where the other group's value is larger, ties a half
    assert out["auc"] == pytest.approx(u / (len(g) * len(o)))
    assert out["p_flatter"] == pytest.approx(sps.mannwhitneyu(g, o, alternative="less").pvalue)
    assert math.isnan(I.separation([], o)["auc"])


def test_per_seed_separation_is_a_sign_test_over_training_sets():
    import pandas as pd
    rows = []
    for seed, (good, bad) in enumerate([(1.0, 2.0), (1.0, 2.0), (1.0, 2.0), (3.0, 2.0)]):
        rows += [{"seed": seed, "generalising_kind": True, "min_trace": good},
                 {"seed": seed, "generalising_kind": True, "min_trace": good * 0.9},
                 {"seed": seed, "generalising_kind": False, "min_trace": bad}]
    rows.append({"seed": 9, "generalising_kind": True, "min_trace": 0.1})  # no non-generalising run: not counted
    out = I.per_seed_separation(pd.DataFrame(rows))
    assert (out["seeds"], out["separating"]) == (4, 3)
    assert out["p"] == pytest.approx(5 / 16)  # P(Binomial(4, 1/2) >= 3)


def test_auc_standard_error_is_the_cluster_bootstraps_over_seeds():
    import pandas as pd
    # Seed A: generalising 0 < other 1; seed B: generalising 1 > other 0. Drawing two seeds: AA gives
    # AUC 1 (p 1/4), BB gives 0 (p 1/4), AB or BA gives 0.5 (p 1/2): standard deviation sqrt(1/8).
    table = pd.DataFrame([{"seed": 0, "generalising_kind": True, "min_trace": 0.0},
                          {"seed": 0, "generalising_kind": False, "min_trace": 1.0},
                          {"seed": 1, "generalising_kind": True, "min_trace": 1.0},
                          {"seed": 1, "generalising_kind": False, "min_trace": 0.0}])
    assert I.auc_standard_error(table, replicates=4000) == pytest.approx(math.sqrt(1 / 8), rel=0.05)
    separated = table.assign(min_trace=[0.0, 1.0, 0.0, 1.0])
    assert I.auc_standard_error(separated, replicates=200) == 0.0


def test_conditions_are_what_the_rule_reads_per_condition():
    import pandas as pd
    rng = np.random.default_rng(0)
    rows = [{"noise": noise, "approximation": 0.0, "kind": kind, "seed": seed,
             "generalising_kind": kind in I.GENERALISING, "trace": rng.uniform(1, 2) * (3 if kind in I.GENERALISING
                                                                                          else 5),
             "min_trace": rng.uniform(1, 2) * (1 if kind in I.GENERALISING else 2), "relative_loss": rng.uniform()}
            for noise in (0.0, 1.0) for kind in I.KINDS for seed in range(3)]
    table = pd.DataFrame(rows)
    out = I.conditions(table, replicates=50)
    assert [(c["noise"], c["approximation"]) for c in out] == [(0.0, 0.0), (1.0, 0.0)]
    for c in out:
        part = table[table["noise"] == c["noise"]]
        good, bad = part[part["generalising_kind"]], part[~part["generalising_kind"]]
        assert c["separation"]["auc"] == I.separation(good["min_trace"], bad["min_trace"])["auc"]
        assert c["raw_attack"]["auc"] == I.separation(good["trace"], bad["min_trace"])["auc"]
        assert c["flattest_relative_loss"] == part.loc[part["kind"] == "flattest", "relative_loss"].median()
        assert c["separation"]["auc_se"] == I.auc_standard_error(part, replicates=50)
