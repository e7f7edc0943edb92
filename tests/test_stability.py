"""Verdict stability: ``flatlib.claims.stability`` on tables whose answer is known (a clear-cut
one gives every replicate to one verdict, one on a threshold splits them), and each chapter's
adapter in ``flatlib.stability`` against the chapter's own way of computing the rule's inputs."""
import numpy as np
import pandas as pd
import pytest

from flatlib import atlas, batchsize, claims, regularised, stability, stats
from oracles import paired_table

# At n = 2,000 the paper's 1.6 points and at n = 60,000 its 0.02, each +- 0.05 points over 5 seeds.
CLEAR = {2000: [0.0155, 0.0160, 0.0165, 0.0158, 0.0162], 60000: [0.0001, 0.0003, 0.0002, 0.0000, 0.0004]}


def test_a_clear_cut_table_gives_every_replicate_to_one_verdict():
    table = paired_table(CLEAR)
    assert stability.batch_sweep_verdict(table, 0.0025).verdict == "supported"
    assert stability.batch_sweep(table, 0.0025, replicates=100) == {"supported": 1.0}


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_a_table_on_a_threshold_splits_the_replicates():
    # at n = 60,000 a gap whose interval's upper end sits on the 0.25-point margin: whether it has
    # vanished depends on which seeds a replicate draws
    edge = {**CLEAR, 60000: [0.0005, 0.0025, 0.0010, 0.0030, 0.0015, 0.0005, 0.0020, 0.0010]}
    shares = stability.batch_sweep(paired_table(edge), 0.0025, replicates=200)
    assert set(shares) == {"supported", "partly supported"}
    assert min(shares.values()) > 0.1
    assert sum(shares.values()) == pytest.approx(1.0)
    assert list(shares.values()) == sorted(shares.values(), reverse=True)


def test_stability_is_reproducible_from_its_seed_and_reuses_the_rule_unchanged():
    calls = []

    def rule(table):
        calls.append(len(table))
        return claims.batch_sweep(batchsize.regime_differences(table, "test_acc"))

    table = paired_table(CLEAR)
    a = claims.stability(rule, table, replicates=30, seed=4, units=("seed",), within=("n",))
    assert calls == [len(table)] * 30
    assert a == claims.stability(rule, table, replicates=30, seed=4, units=("seed",), within=("n",))


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_a_replicate_the_rule_cannot_judge_counts_as_inconclusive():
    # two seeds: at each size half the replicates draw one seed twice, whose gap then has no spread, so the
    # rule refuses three replicates in four (both sizes keep two seeds with probability 1/4)
    two = {n: gaps[:2] for n, gaps in CLEAR.items()}
    shares = stability.batch_sweep(paired_table(two), 0.0025, replicates=400)
    assert shares["inconclusive"] == pytest.approx(0.75, abs=0.07)

    def refuses(table):
        raise ValueError("nothing to judge")

    with pytest.raises(ValueError, match="refused every replicate; the first said: nothing to judge"):
        claims.stability(refuses, paired_table(CLEAR), replicates=3, units=("seed",))


def test_stability_of_several_tables_resamples_each_by_its_own_plan():
    learners = pd.DataFrame({"rule": ["r"] * 6, "draw": [0, 0, 1, 1, 2, 2], "x": [1, 2, 3, 4, 5, 6]})
    nets = pd.DataFrame({"seed": range(5), "y": range(5)})
    seen = []

    def rule(tables):
        seen.append((len(tables["learners"]), tables["learners"]["draw"].nunique(), len(tables["networks"])))
        return claims.Verdict("C8", "supported", ())

    shares = claims.stability(rule, {"learners": learners, "networks": nets}, replicates=5,
                              units={"learners": ("draw",), "networks": ("seed",)}, within={"learners": ("rule",)})
    assert shares == {"supported": 1.0}
    assert seen == [(6, 3, 5)] * 5


def test_stability_reads_as_the_scoreboard_shows_it():
    assert claims.describe_stability("not supported", {"not supported": 0.64, "contradicted": 0.31,
                                                       "inconclusive": 0.05}) == \
        "not supported (64 %; contradicted 31 %, inconclusive 5 %)"
    assert claims.describe_stability("supported", {"supported": 1.0}) == "supported (100 %)"
    assert claims.describe_stability("supported", None) == "supported"
    assert claims.describe_stability("contradicted", {"contradicted": 0.995, "inconclusive": 0.005}) == \
        "contradicted (> 99 %; inconclusive < 1 %)"


# ----------------------------------------------------------------------------- the adapters

def _head_to_head_table(n=40, seed=0):
    rng = np.random.default_rng(seed)
    acc = rng.normal(0.9, 0.01, n)
    return pd.DataFrame({"seed": range(n), "test_acc": acc, "w": acc + 0.01 * rng.normal(size=n),
                         "s": -acc + 0.02 * rng.normal(size=n), "q": rng.normal(size=n)})


def test_head_to_head_adapter_is_the_chapters_computation():
    table = _head_to_head_table()
    primary = {"weakness": "w", "sharpness": "s", "simplicity": "q"}
    rows = stats.correlation_table(table, ["w", "s", "q"], ["test_acc"], n_resamples=300).set_index("measure")
    chapter = claims.head_to_head("mnist", *(claims.correlation(rows.loc[m], len(table)) for m in ("w", "s", "q")))
    assert stability.head_to_head_verdict(table, "mnist", primary, resamples=300).as_dict() == chapter.as_dict()


def test_atlas_adapter_reads_atlas_withins_rho_p_and_n():
    rng = np.random.default_rng(0)
    rows = []
    for env in atlas.grid(["sgd", "adam"], [1000, 5000], [64], [64]):
        for seed in range(8):
            acc = rng.normal(0.9, 0.01)
            rows.append({"dataset": "mnist", "environment": env.label, **env.as_dict(), "seed": seed, "status": "ok",
                         "test_acc": acc, "a": acc + 0.01 * rng.normal(), "b": rng.normal()})
    table = pd.DataFrame(rows)
    full = atlas.within(table, ["a", "b"], n_resamples=99)
    light = stability._within_rho(table, ["a", "b"])
    merged = full.merge(light, on=["dataset", "environment", "measure"], suffixes=("", "_light"))
    assert len(merged) == len(full) == len(light)
    assert np.allclose(merged["rho"], merged["rho_light"]) and (merged["n"] == merged["n_light"]).all()
    assert np.allclose(merged["p_asymptotic"], merged["p_light"])


def test_regularised_adapter_is_the_chapters_computation_and_keeps_pairs():
    rng = np.random.default_rng(0)
    rows = []
    for dataset in ("mnist", "fashion_mnist"):
        for regime in ("baseline", "sam", "all"):
            for seed in range(6):
                rows.append({"dataset": dataset, "regime": regime, "seed": seed, "test_acc": rng.normal(0.9, 0.01),
                             **{m: rng.normal() for m in stability.REGULARISED_METRICS if m != "test_acc"},
                             "weakness_open_labels": rng.normal()})
    networks = pd.DataFrame(rows)
    pairs = pd.DataFrame([{"dataset": d, "regime": r, "pair": k, "consistency": rng.uniform(0.8, 0.9)}
                          for d in ("mnist", "fashion_mnist") for r in ("baseline", "sam", "all") for k in range(3)])
    effects = pd.concat([regularised.effects(networks, stability.REGULARISED_METRICS),
                         regularised.effects(pairs, ["consistency"], pair_on="pair")], ignore_index=True)
    weakness = {}
    for d, part in networks.groupby("dataset", sort=False):
        r = stats.spearman(part["weakness_open_labels"], part["test_acc"], n_resamples=200)
        weakness[d] = {"rho": r.statistic, "p": r.permutation_pvalue, "ci_low": r.confidence_interval().low,
                       "ci_high": r.confidence_interval().high, "n": len(part)}
    chapter = claims.regularised(effects, weakness)
    ours = stability.regularised_verdict(stability.with_pairs(networks, pairs), resamples=200)
    assert ours.as_dict() == chapter.as_dict()
    shares = stability.regularised(networks, pairs, replicates=5, resamples=99)
    assert sum(shares.values()) == pytest.approx(1.0)


def test_the_pacbayes_link_adapter_judges_only_the_networks_at_the_training_loss_target():
    rng = np.random.default_rng(0)
    z, e1, e2, e3 = (rng.normal(size=40) for _ in range(4))
    table = pd.DataFrame({"dataset": "mnist", "environment": "e", "seed": range(40), "status": "ok",
                          "stopped_by": "target_train_loss", "certificate": 0.5 - 0.05 * z + 0.015 * e2,
                          "certificate_kl": 5000.0, "test_error": -z + 0.3 * e1, "weakness_open_labels": z,
                          "weakness_input_volume": e3, "train_size": np.repeat([10000, 20000], 20),
                          "train_loss": 0.01 * rng.random(40)})
    # the chapter's way: claims.pacbayes_link_study over the networks at the target
    alone = claims.pacbayes_link_study(table, n_resamples=stability.RESAMPLES)[0]["weakness_open_labels"]
    assert alone.verdict == "supported"
    # ten more networks that stopped by patience (other certificates, weakness reversed): left out
    extra = table.head(10).assign(stopped_by="patience", seed=range(40, 50), certificate=0.9,
                                  weakness_open_labels=-z[:10])
    verdict = stability.pacbayes_link_verdict(pd.concat([table, extra], ignore_index=True), "mnist")
    assert verdict.as_dict() == alone.as_dict()
