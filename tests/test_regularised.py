"""flatlib.regularised (claim C6): the regimes, the behaviour metrics against hand computations
and scipy, SAM's step against a hand computation on a quadratic, and the store."""
import concurrent.futures
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy import stats as sps
from torch import nn

from flatlib import executors, regularised, store
from flatlib import train as ftrain

SMALL = dict(dataset="mnist", n=100, arch="mlp", widths=(8,), lr=0.05, batch_size=50, epochs=1,
             weight_decay=5e-4, sam_rho=0.05)


# ----------------------------------------------------------------------------- regimes

def test_each_regime_switches_on_only_its_own_regularisation():
    configs = {r: regularised.config(r, 3, **SMALL) for r in regularised.REGIMES}
    assert (configs["baseline"].weight_decay, configs["baseline"].sam_rho, configs["baseline"].augment) == (0, 0, False)
    assert (configs["weight_decay"].weight_decay, configs["weight_decay"].sam_rho) == (5e-4, 0)
    assert configs["augmentation"].augment and configs["augmentation"].weight_decay == 0
    assert configs["sam"].sam_rho == 0.05 and not configs["sam"].augment
    assert (configs["all"].weight_decay, configs["all"].sam_rho, configs["all"].augment) == (5e-4, 0.05, True)
    # the same seed, data and budget in every regime: regularisation is the only difference
    shared = {(c.seed, c.n, c.data_seed, c.epochs, c.target_train_acc, c.target_train_loss) for c in configs.values()}
    assert shared == {
        (3, 100, 0, 1, None, None)}


@pytest.mark.parametrize("regimes,wd,rho,arch,match", [
    (["baseline", "dropout"], 5e-4, 0.05, "cnn", r"unknown regime.*'baseline', 'weight_decay'"),
    (["sam"], 5e-4, 0.05, "cnn", "must include 'baseline'"),
    (["baseline", "sam", "sam"], 5e-4, 0.05, "cnn", "repeat"),
    (["baseline"], -1e-4, 0.05, "cnn", "non-negative"),
    (["baseline"], 5e-4, -0.05, "cnn", "non-negative"),
    (["baseline", "weight_decay"], 0.0, 0.05, "cnn", "weight_decay > 0"),
    (["baseline", "all"], 5e-4, 0.0, "cnn", "sam_rho > 0"),
    (["baseline", "augmentation"], 5e-4, 0.05, "transformer", r"cannot take it.*'mlp', 'cnn'"),
])
def test_a_study_it_cannot_run_is_refused_with_the_valid_choices(regimes, wd, rho, arch, match):
    with pytest.raises(ValueError, match=match):
        regularised.check(regimes, wd, rho, arch)


def test_zero_strengths_are_fine_when_no_regime_uses_them():
    regularised.check(["baseline", "augmentation"], 0.0, 0.0, "cnn")


def test_sam_steps_from_w_with_the_gradient_at_the_ascent_point_of_a_quadratic():
    # L(w) = w^T A w / 2, g = A w; SAM: w' = w - lr A (w + rho g / |g|) (plain SGD, no momentum)
    A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    w0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    model = nn.Module()
    model.w = nn.Parameter(w0.clone())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss_fn():
        return 0.5 * model.w @ A @ model.w

    opt.zero_grad()
    loss_fn().backward()
    ftrain.sam_step(model, loss_fn, opt, rho=0.5)
    g = A @ w0
    expected = w0 - 0.1 * (A @ (w0 + 0.5 * g / g.norm()))
    assert torch.allclose(model.w.detach(), expected, atol=1e-12)


# ----------------------------------------------------------------------------- behaviour metrics

def _history(accuracies):
    return [{"epoch": i, "batch_loss": 0.1, "train_loss": 0.1, "train_acc": a} for i, a in enumerate(accuracies)]


@pytest.mark.parametrize("accuracies, expected", [
    ([0.90] * 15 + [0.905] * 15, True),            # means 0.90 then 0.905: half a point, within
    ([0.90] * 15 + [0.915] * 15, False),           # 1.5 points: still rising
    ([0.5] * 60 + [0.93] * 15 + [0.92] * 15, True),  # only the last 30 epochs count; a fall counts too
    ([0.95, 0.85] * 15, True),                     # noisy but level: means 0.90 and 0.90
    ([0.9] * 29, False),                           # fewer than 2 x 15 epochs
])
def test_converged_compares_the_last_15_epochs_mean_training_accuracy_with_the_15_before(accuracies, expected):
    history = _history(accuracies) + [{"epoch": 99, "step": 3, "loss": 0.1, "event": "x"}]  # no train_acc: skipped
    assert regularised.converged(history) is expected


def test_ece_matches_a_hand_computation():
    # bins of width 1/2: confidences 0.9, 0.8 (right, wrong) in (0.5, 1]; 0.4, 0.45 (right, right) in (0, 0.5]
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.4, 0.3, 0.3], [0.45, 0.35, 0.2]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 0])
    upper = 0.5 * abs(0.5 - 0.85)
    lower = 0.5 * abs(1.0 - 0.425)
    assert regularised.expected_calibration_error(probs, labels, bins=2) == pytest.approx(upper + lower, abs=1e-12)
    # one bin: |accuracy - mean confidence| over everything
    assert regularised.expected_calibration_error(probs, labels, bins=1) == pytest.approx(abs(0.75 - 0.6375), abs=1e-12)


def test_ece_is_zero_for_calibrated_predictions_and_puts_bin_edges_in_the_lower_bin():
    probs = torch.tensor([[0.8, 0.2]] * 5, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 0, 1])  # 80 % right at confidence 0.8
    assert regularised.expected_calibration_error(probs, labels, bins=15) == pytest.approx(0.0, abs=1e-12)
    edge = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    # 0.5 lies in (0, 0.5] and 1.0 in (0.5, 1]; each bin holds one right prediction
    assert regularised.expected_calibration_error(edge, torch.tensor([0, 0]), bins=2) == pytest.approx(0.25, abs=1e-12)
    with pytest.raises(ValueError, match="one label per example"):
        regularised.expected_calibration_error(probs, labels[:3])


def test_agreement_counts_equal_predictions():
    assert regularised.agreement([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    with pytest.raises(ValueError, match="one length"):
        regularised.agreement([1, 2], [1, 2, 3])


def test_noise_is_seeded_clipped_and_of_the_asked_strength():
    grey = torch.full((200, 1, 28, 28), 0.5)
    a, b = regularised.noisy(grey, 0.1, seed=1), regularised.noisy(grey, 0.1, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, regularised.noisy(grey, 0.1, seed=2))
    assert (a - grey).std().item() == pytest.approx(0.1, rel=0.02)
    strong = regularised.noisy(grey, 5.0)
    assert strong.min() >= 0 and strong.max() <= 1
    assert torch.equal(regularised.noisy(grey, 0.0), grey)


def test_behaviour_agrees_with_direct_computations():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    x, y = torch.rand(300, 1, 28, 28), torch.randint(0, 10, (300,))
    out = regularised.behaviour(model, (x, y), noise=(0.1, 0.3), bins=15)
    logits = model(x).detach().double()
    assert out["test_acc"] == pytest.approx((logits.argmax(1) == y).double().mean().item())
    assert out["nll"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    noisy_acc = [(model(regularised.noisy(x, s)).argmax(1) == y).double().mean().item() for s in (0.1, 0.3)]
    assert [out["acc_noise_0.1"], out["acc_noise_0.3"]] == pytest.approx(noisy_acc)
    assert out["noise_acc"] == pytest.approx(np.mean(noisy_acc))
    assert out["predictions"] == "".join(str(int(v)) for v in logits.argmax(1))


def test_network_behaviour_is_stored_and_keyed_by_its_options(monkeypatch):
    config = regularised.config("baseline", 0, **SMALL)
    calls = []
    real = regularised.behaviour
    monkeypatch.setattr(regularised, "behaviour", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = regularised.network_behaviour(config, noise=(0.2,))
    again = regularised.network_behaviour(config, noise=(0.2,))
    assert first == again and len(calls) == 1
    regularised.network_behaviour(config, noise=(0.3,))
    assert len(calls) == 2


def test_behaviour_table_is_the_same_computed_on_workers_as_here(isolated_cache, tmp_path, monkeypatch):
    configs = [regularised.config(r, s, **SMALL) for r in ("baseline", "sam") for s in (0, 1)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        pooled = regularised.behaviour_table(configs, noise=(0.2,), executor=pool, progress=False)
    monkeypatch.setenv("FLATLIB_CACHE", str(tmp_path / "other"))
    here = regularised.behaviour_table(configs, noise=(0.2,), executor="serial", progress=False)
    pd.testing.assert_frame_equal(pooled, here)


class ElsewhereExecutor(concurrent.futures.ThreadPoolExecutor):
    """Workers that write into their own store, ``root``, instead of the one they are given:
    what a cluster whose workers do not mount the submitting process's store does."""

    def __init__(self, root):
        super().__init__(1)
        self.root = str(root)

    def submit(self, fn, *args, **kwargs):
        return super().submit(fn, *args[:-1], self.root, **kwargs)  # the store root is the last argument


def test_behaviour_table_refuses_a_store_its_workers_did_not_write_to(tmp_path, monkeypatch):
    configs = [regularised.config("baseline", 0, **SMALL)]
    computed_here = []
    real = regularised.behaviour
    monkeypatch.setattr(regularised, "behaviour", lambda *a, **k: computed_here.append(1) or real(*a, **k))
    with ElsewhereExecutor(tmp_path / "workers-store") as pool:
        with pytest.raises(executors.ExecutorError, match="not in the store .* cannot see"):
            regularised.behaviour_table(configs, noise=(0.2,), executor=pool, progress=False)
    assert len(computed_here) == 1  # once, by the worker; never again, silently, in this process
    assert list((tmp_path / "workers-store" / "behaviour").glob("*.json"))  # the worker did write, elsewhere


@pytest.mark.parametrize("executor", [None, "processes"])
def test_behaviour_table_refuses_a_store_it_cannot_write_before_any_work(executor, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FLATLIB_CACHE", str(blocker / "store"))  # a folder inside a file: even root cannot
    started = []
    monkeypatch.setattr(ftrain, "train", lambda *a, **k: started.append("train"))
    monkeypatch.setattr(executors, "run", lambda *a, **k: started.append("run"))
    with pytest.raises(store.StoreError, match="not writable"):
        regularised.behaviour_table([regularised.config("baseline", 0, **SMALL)], executor=executor, progress=False)
    assert started == []


def test_behaviour_table_refuses_an_unknown_executor_even_with_nothing_to_compute():
    with pytest.raises(ValueError, match="unknown executor 'threads'"):
        regularised.behaviour_table([], executor="threads", progress=False)


# ----------------------------------------------------------------------------- consistency and effects

def test_consistency_pairs_disjoint_seeds_within_each_regime():
    table = pd.DataFrame({"dataset": "mnist", "regime": ["a"] * 4 + ["b"] * 4, "seed": [3, 0, 1, 2] * 2,
                          "predictions": ["0000", "0011", "0001", "1111", "1234", "1234", "1200", "0000"]})
    pairs = regularised.consistency(table)
    a = pairs[pairs["regime"] == "a"].set_index("pair")
    assert list(a["seeds"]) == ["0,1", "2,3"]
    assert list(a["consistency"]) == [0.75, 0.0]  # seeds 0,1: 0011 vs 0001; seeds 2,3: 1111 vs 0000
    b = pairs[pairs["regime"] == "b"].set_index("pair")
    assert list(b["consistency"]) == [0.5, 0.0]  # seeds 0,1: 1234 vs 1200; seeds 2,3: 0000 vs 1234


def test_effects_are_paired_t_intervals_bonferroni_corrected_over_the_cells():
    rng = np.random.default_rng(0)
    rows = []
    for dataset in ("mnist", "fashion_mnist"):
        for regime, shift in (("baseline", 0.0), ("sam", 0.5), ("all", -0.2)):
            for seed in range(6):
                acc = seed * 0.1 + shift + rng.normal(0, 0.1)
                rows.append({"dataset": dataset, "regime": regime, "seed": seed, "acc": acc})
    table = pd.DataFrame(rows)
    out = regularised.effects(table, ["acc"])
    assert len(out) == 4 and set(out["level"]) == {1 - 0.05 / 4}
    row = out[(out["dataset"] == "fashion_mnist") & (out["regime"] == "sam")].iloc[0]
    wide = table[table["dataset"] == "fashion_mnist"].pivot(index="seed", columns="regime", values="acc")
    ref = sps.ttest_rel(wide["sam"], wide["baseline"])
    ci = ref.confidence_interval(1 - 0.05 / 4)
    assert (row["ci_low"], row["ci_high"], row["p"]) == pytest.approx((ci.low, ci.high, ref.pvalue))
    with pytest.raises(ValueError, match="missing"):
        regularised.effects(table.drop(index=0), ["acc"])
    lacking = table[~((table["dataset"] == "mnist") & (table["regime"] == "all"))]
    with pytest.raises(ValueError, match=r"dataset=mnist has no networks of regime\(s\) \['all'\]"):
        regularised.effects(lacking, ["acc"])


def test_converged_effects_pair_each_cell_on_its_converged_seeds_at_the_full_designs_level():
    rng = np.random.default_rng(1)
    rows = [{"dataset": d, "regime": r, "seed": s, "acc": s * 0.1 + shift + rng.normal(0, 0.1), "converged": True}
            for d in ("mnist", "fashion_mnist") for r, shift in (("baseline", 0.0), ("sam", 0.5), ("all", -0.2))
            for s in range(6)]
    table = pd.DataFrame(rows)
    stuck = (table["dataset"] == "fashion_mnist") & (((table["regime"] == "all") & (table["seed"] == 1))
                                                      | ((table["regime"] == "baseline") & (table["seed"] == 4)))
    table.loc[stuck, "converged"] = False
    out = regularised.converged_effects(table, ["acc"])
    assert set(out["level"]) == {1 - 0.05 / 4}
    units = out.set_index(["dataset", "regime"])["units"]
    assert (units[("mnist", "sam")], units[("fashion_mnist", "sam")], units[("fashion_mnist", "all")]) == (6, 5, 4)
    wide = table[table["dataset"] == "fashion_mnist"].pivot(index="seed", columns="regime", values="acc")
    ref = sps.ttest_rel(wide.loc[[0, 2, 3, 5], "all"], wide.loc[[0, 2, 3, 5], "baseline"])
    ci = ref.confidence_interval(1 - 0.05 / 4)
    row = out[(out["dataset"] == "fashion_mnist") & (out["regime"] == "all")].iloc[0]
    assert (row["ci_low"], row["ci_high"], row["p"]) == pytest.approx((ci.low, ci.high, ref.pvalue))
    table.loc[(table["dataset"] == "mnist") & (table["regime"] == "sam") & (table["seed"] > 0), "converged"] = False
    assert regularised.converged_pairs(table)[("mnist", "sam")] == 1
    assert regularised.converged_pairs(table)[("fashion_mnist", "all")] == 4
    with pytest.raises(ValueError, match="at least 2\\): mnist/sam 1$"):
        regularised.converged_effects(table, ["acc"])


def test_regime_means_are_student_t_intervals():
    table = pd.DataFrame({"dataset": "mnist", "regime": "a", "x": [1.0, 2.0, 4.0]})
    row = regularised.regime_means(table, ["x"]).iloc[0]
    ci = sps.t.interval(0.95, 2, loc=np.mean([1, 2, 4]), scale=sps.sem([1, 2, 4]))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(ci)
    assert math.isclose(row["mean"], 7 / 3)
