"""flatlib.atlas: the grid of environments, refused before anything trains when it is bad, and
the tidy tables equal to the statistics computed directly on each environment."""
import numpy as np
import pandas as pd
import pytest

from flatlib import atlas, stats


def test_grid_is_the_full_product_in_a_fixed_order():
    envs = atlas.grid(["sgd", "adam"], [1000, 5000, 20000], [64, 256], [64, 256])
    assert len(envs) == 24 and len(set(envs)) == 24
    assert envs[0] == atlas.Environment("sgd", 1000, 64, 64)
    assert envs[0].label == "sgd n=1000 w=64 b=64"


@pytest.mark.parametrize("args, words", [
    ((["sgd", "rmsprop"], [1000], [64], [64]), "unknown optimizer(s) ['rmsprop']"),
    (([], [1000], [64], [64]), "optimizers is empty"),
    ((["sgd"], [1000, 1000], [64], [64]), "sizes repeats a value"),
    ((["sgd"], [100, 1000], [64], [256]), "batch size 256 exceeds the smallest training set n=100"),
])
def test_a_bad_grid_is_refused_with_one_error(args, words):
    with pytest.raises(ValueError, match="Invalid atlas grid") as info:
        atlas.grid(*args)
    assert words in str(info.value)


def test_configs_follow_the_environment_and_share_everything_but_the_seed():
    env = atlas.Environment("adam", 5000, 64, 256)
    configs = atlas.configs("fashion_mnist", env, 3, {"sgd": 0.05, "adam": 1e-3}, 100, 0.01, 10)
    assert [c.seed for c in configs] == [0, 1, 2]
    c = configs[0]
    assert (c.dataset, c.n, c.widths, c.optimizer, c.lr, c.batch_size, c.epochs) == \
        ("fashion_mnist", 5000, (64, 64), "adam", 1e-3, 256, 100)
    assert (c.target_train_acc, c.target_train_loss, c.patience) == (None, 0.01, 10)
    with pytest.raises(ValueError, match="no learning rate given for 'adam'"):
        atlas.configs("mnist", env, 3, {"sgd": 0.05}, 100, 0.01, 10)


@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    rows = []
    for env in atlas.grid(["sgd", "adam"], [1000, 5000], [64], [64]):
        for seed in range(6):
            acc = 0.9 + 0.01 * (env.train_size == 5000) + 0.002 * rng.normal()
            rows.append({"dataset": "mnist", "environment": env.label, **env.as_dict(), "seed": seed,
                         "status": "ok", "test_acc": acc, "good": acc + 0.001 * rng.normal(),
                         "noise": rng.normal()})
    rows.append({**rows[0], "status": "diverged", "seed": 99, "good": np.nan})
    return pd.DataFrame(rows)


def test_within_is_the_correlation_table_of_each_environment(table):
    result = atlas.within(table, ["good", "noise"], n_resamples=200)
    assert len(result) == 4 * 2
    first = table[(table.environment == "sgd n=1000 w=64 b=64") & (table.status == "ok")]
    direct = stats.correlation_table(first, ["good"], ["test_acc"], n_resamples=200, kendall_too=False).iloc[0]
    row = result[(result.environment == "sgd n=1000 w=64 b=64") & (result.measure == "good")].iloc[0]
    assert row.rho == direct.rho and row.p == direct.p_perm and row.p_asymptotic == direct.p and row.n == 6
    assert row.optimizer == "sgd" and row.n == 6


def test_across_reads_jiang_and_dziugaite_from_stats(table):
    result = atlas.across(table, ["good", "noise"], {"good": 1, "noise": -1}).set_index("measure")
    ok = table[table.status == "ok"]
    psi = stats.granulated_kendall(ok, "good", "test_acc", list(atlas.AXES))
    assert result.loc["good", "psi"] == psi["overall"] and result.loc["good", "psi_train_size"] == 1.0
    errors = stats.sign_errors(ok, "noise", "test_acc", list(atlas.AXES), sign=-1)["sign_error"]
    assert result.loc["noise", "sign_error_max"] == errors.max()
    assert result.loc["good", "pairs"] == 4  # 2 x 2 environments, pairs differing in one axis


def test_pooled_rows_are_stats_pooled_correlation_with_counts(table):
    result = atlas.within(table, ["good", "noise"], n_resamples=200)
    rows = atlas.pooled(result).set_index("measure")
    part = result[result.measure == "good"]
    direct = stats.pooled_correlation(part.rho, part.n)
    assert rows.loc["good", "pooled_rho"] == direct.statistic and rows.loc["good", "Q_p"] == direct.q_pvalue
    assert rows.loc["good", "positive"] == int((part.rho > 0).sum()) and rows.loc["good", "environments"] == 4


def test_labelled_and_fit_tables():
    envs = atlas.grid(["sgd"], [1000, 5000], [64], [64])
    plan = [("mnist", env, None) for env in envs for _ in range(2)]
    raw = pd.DataFrame({"seed": [0, 1, 0, 1], "status": ["ok", "ok", "ok", "diverged"], "epochs": [3, 5, 4, 2],
                        "train_loss": [0.01, 0.009, 0.2, np.nan], "test_acc": [0.9, 0.91, 0.8, np.nan],
                        "stopped_by": ["target_train_loss", "target_train_loss", "patience", "diverged"]})
    table = atlas.labelled(raw, plan)
    assert list(table.columns[:6]) == ["dataset", "environment", *atlas.AXES]
    assert list(table["train_size"]) == [1000, 1000, 5000, 5000]
    fit = atlas.fit(table)
    row = fit.loc[("mnist", "sgd n=5000 w=64 b=64")]
    assert (row.reached_target, row.diverged, row.networks, row.epochs) == (0, 1, 2, 3.0)
    with pytest.raises(ValueError, match="4 rows for 3 planned"):
        atlas.labelled(raw, plan[:3])


def _networks(cells):
    """A hand-built network table: per (dataset, environment), a list of stop rules."""
    import pandas as pd

    rows = [{"dataset": d, "environment": e, "status": "diverged" if s == "diverged" else "ok", "stopped_by": s}
            for (d, e), stops in cells.items() for s in stops]
    return pd.DataFrame(rows)


def test_only_networks_at_the_target_of_environments_at_80_percent_are_kept():
    from flatlib import atlas

    table = _networks({("mnist", "a"): ["target_train_loss"] * 4 + ["patience"],          # 80 %: kept
                       ("mnist", "b"): ["target_train_loss"] * 3 + ["epoch cap"] * 2,     # 60 %: left out
                       ("fashion_mnist", "a"): ["target_train_loss"] * 5,                 # 100 %
                       ("fashion_mnist", "b"): ["target_train_loss"] * 4 + ["diverged"]})  # 80 %
    kept, environments = atlas.usable(table)
    assert environments["eligible"].tolist() == [True, False, True, True]
    assert environments["share"].tolist() == [0.8, 0.6, 1.0, 0.8]
    assert len(kept) == 4 + 5 + 4 and set(kept["stopped_by"]) == {"target_train_loss"}
    assert not ((kept["dataset"] == "mnist") & (kept["environment"] == "b")).any()


def test_the_head_to_head_keeps_the_networks_at_the_target_and_counts_the_rest():
    from flatlib import study

    table = _networks({("mnist", "h"): ["target_train_loss"] * 5 + ["patience"] * 2 + ["epoch cap", "diverged"]})
    kept, left_out = study.at_target(table)
    assert len(kept) == 5 and left_out == {"patience": 2, "epoch cap": 1, "diverged": 1}
    with pytest.raises(study.StudyError, match="2 of 6 networks reached the training-loss target"):
        study.at_target(table.iloc[3:], minimum=4)


def test_within_partial_is_partial_spearman_per_environment_and_margin(table):
    table = table.assign(margin=table["test_acc"] + 0.002 * np.random.default_rng(1).normal(size=len(table)))
    result = atlas.within_partial(table, "good", ["margin", "noise"])
    assert len(result) == 4 * 2 and set(result["given"]) == {"margin", "noise"}
    first = table[(table.environment == "sgd n=1000 w=64 b=64") & (table.status == "ok")]
    row = result[(result.environment == "sgd n=1000 w=64 b=64") & (result.given == "margin")].iloc[0]
    direct = stats.partial_spearman(first["good"], first["test_acc"], first["margin"], n_resamples=99)
    assert row.partial_rho == pytest.approx(direct.statistic, abs=1e-12) and row.n == 6
    assert row.rho == pytest.approx(stats.spearman(first["good"], first["test_acc"], n_resamples=99).statistic)
    with pytest.raises(ValueError, match="jacobian_norm"):
        atlas.within_partial(table, "good", ["jacobian_norm"])


def test_within_carries_the_partial_given_the_training_loss_and_pooled_pools_it(table):
    from scipy.stats import rankdata

    rng = np.random.default_rng(2)
    table = table.assign(train_loss=0.01 + 0.001 * rng.random(len(table)))
    result = atlas.within(table, ["good", "noise"], n_resamples=99)
    first = table[(table.environment == "adam n=5000 w=64 b=64") & (table.status == "ok")]
    # oracle: Pearson correlation of the rank residuals after a least-squares fit on the control's ranks
    rx, ry, rz = (rankdata(first[c]) for c in ("good", "test_acc", "train_loss"))
    design = np.column_stack([np.ones_like(rz), rz])
    res = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in (rx, ry)]
    row = result[(result.environment == "adam n=5000 w=64 b=64") & (result.measure == "good")].iloc[0]
    assert row.rho_given_fit == pytest.approx(np.corrcoef(*res)[0, 1], abs=1e-12)
    pooled = atlas.pooled(result).set_index("measure")
    rule_input = atlas.within_partial(table, "good", ["train_loss"])  # what claims.robust_to_fit pools
    direct = stats.pooled_correlation(rule_input["partial_rho"], rule_input["n"])
    assert pooled.loc["good", "given_fit_rho"] == pytest.approx(direct.statistic, abs=1e-12)
    assert pooled.loc["good", "given_fit_ci_low"] == pytest.approx(direct.interval.low, abs=1e-12)
    # without the column, no partial: nothing to control for
    assert "rho_given_fit" not in atlas.within(table.drop(columns="train_loss"), ["good"], n_resamples=99)
    constant = atlas.within(table.assign(train_loss=0.01), ["good"], n_resamples=99)
    assert constant["rho_given_fit"].isna().all()
    assert np.isnan(atlas.pooled(constant)["given_fit_rho"]).all()
