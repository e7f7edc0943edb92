"""flatlib.finite: the finite domain, junta tables and exact weakness, on hand-counted cases."""
import itertools
import math
import re

import numpy as np
import pytest

from flatlib import finite


def test_domain_enumerates_every_string_in_counting_order():
    x = finite.domain(3)
    assert x.shape == (8, 3) and x.dtype == np.uint8
    assert x[5].tolist() == [1, 0, 1] and len({tuple(r) for r in x.tolist()}) == 8


def test_a_domain_too_large_is_refused_with_the_largest_that_fits():
    with pytest.raises(ValueError, match="largest that fits is bits=16"):
        finite.domain(17)
    with pytest.raises(ValueError, match="unknown rule 'xor'; choose from"):
        finite.labels("xor", finite.domain(3))


def test_rules_on_hand_checked_strings():
    x = np.array([[1, 1, 0, 1], [0, 1, 1, 0], [1, 0, 1, 1], [1, 0, 0, 0]], dtype=np.uint8)
    assert finite.labels("parity2", x).tolist() == [0, 1, 1, 1]
    assert finite.labels("parity3", x).tolist() == [0, 0, 0, 1]
    assert finite.labels("and2", x).tolist() == [1, 0, 0, 0]
    assert finite.labels("majority3", x).tolist() == [1, 1, 1, 0]
    # halves: 11+01 = 3+1 = 4 -> carry; 01+10 = 1+2 = 3 -> none; 10+11 = 2+3 = 5 -> carry; 10+00 -> none
    assert finite.labels("sum_carry", x).tolist() == [1, 0, 1, 0]
    # odd length: the middle bit is read by neither half: 11|0|01 = 3+1 -> carry; 01|1|10 = 1+2 -> none
    odd = np.array([[1, 1, 0, 0, 1], [0, 1, 1, 1, 0]], dtype=np.uint8)
    assert finite.labels("sum_carry", odd).tolist() == [1, 0]
    coin = finite.labels("exchangeable", finite.domain(10), seed=1)
    assert 0.45 < coin.mean() < 0.55
    with pytest.raises(ValueError, match="reads 3 bits; the domain has 2"):
        finite.labels("parity3", finite.domain(2))


@pytest.fixture
def and2():
    """and2 of bits 0 and 1 on 3-bit strings, trained on 000, 011, 110, 111."""
    x = finite.domain(3)
    return finite.Task(3, "and2", x, finite.labels("and2", x), np.array([0b000, 0b011, 0b110, 0b111]))


def test_consistent_junta_tables_and_their_exact_weakness_by_hand(and2):
    found = {h.J: h for h in finite.consistent(and2, 3)}
    # (1,), (2,), (1,2) and () give some pattern two labels; the rest are consistent.
    assert set(found) == {(0,), (0, 1), (0, 2), (0, 1, 2)}
    assert {J: h.log2_weakness() for J, h in found.items()} == {(0,): 0, (0, 1): 2, (0, 2): 0, (0, 1, 2): 4}
    # size of J: 2 bits; each position: 2 bits; each row: |J| + 1 bits
    assert {J: h.description_length() for J, h in found.items()} == {(0,): 8, (0, 1): 15, (0, 2): 18,
                                                                      (0, 1, 2): 24}
    assert [h.J for h in finite.consistent(and2, 1)] == [(0,)]


def test_the_learners_pick_by_hand_and_the_scores_follow(and2):
    hypotheses = finite.consistent(and2, 3)
    rng = np.random.default_rng(0)
    weakest = finite.choose(hypotheses, "weakest", rng)
    shortest = finite.choose(hypotheses, "shortest", rng)
    assert weakest.J == (0, 1, 2) and shortest.J == (0,)
    # Unseen: 001, 010, 100, 101, all labelled 0. The shortest says bit 0: right, right, wrong, wrong.
    s = finite.score(and2, *shortest.predict(and2.x))
    assert s == {"accuracy": 0.5, "worst_case": 0.0, "bennett": 0.0, "bennett_strict": 0.0, "committed": 4, "open": 0}
    w = finite.score(and2, *weakest.predict(and2.x))
    assert w == {"accuracy": 0.5, "worst_case": 0.5, "bennett": 1.0, "bennett_strict": 0.0, "committed": 0, "open": 4}
    right = finite.score(and2, np.ones(8, dtype=bool), and2.y)
    assert right["bennett_strict"] == 1.0 and right["accuracy"] == 1.0
    with pytest.raises(ValueError, match="raise max_arity"):
        finite.choose([], "weakest", rng)


def test_the_weakest_is_never_worse_in_the_worst_case():
    # Minimax by construction: the worst case over completions is half the open fraction,
    # which the weakest consistent table maximises.
    table = finite.compare(bits=5, rule="exchangeable", train_size=6, max_arity=5, draws=20)
    worst = table.pivot(index="draw", columns="learner", values="worst_case")
    assert (worst["weakest"] >= worst["shortest"]).all() and (worst["weakest"] >= worst["any"]).all()
    assert (worst["weakest"] > worst["shortest"]).any()  # something was compared
    assert (table.groupby("learner")["log2_weakness"].mean()["weakest"]
            >= table.groupby("learner")["log2_weakness"].mean()["shortest"])


def test_a_target_in_the_language_is_found_by_the_shortest():
    table = finite.compare(bits=6, rule="parity2", train_size=40, max_arity=2, draws=10)
    shortest = table[table.learner == "shortest"]
    assert (shortest["J"] == "01").all() and (shortest["accuracy"] == 1.0).all()


def test_log2_weakness_closed_form_matches_counting_the_domain():
    t = finite.task(6, "and2", 20, seed=3)
    for h in finite.consistent(t, 3):
        committed, _ = h.predict(t.x)
        assert h.log2_weakness() == int((~committed).sum())


def test_compare_is_reproducible_and_breaks_ties_at_random():
    a = finite.compare(bits=5, rule="exchangeable", train_size=6, max_arity=3, draws=5, seed=7)
    b = finite.compare(bits=5, rule="exchangeable", train_size=6, max_arity=3, draws=5, seed=7)
    assert a.equals(b)
    t = finite.task(4, "and2", 4, seed=0)
    tied = [h for h in finite.consistent(t, 4) if h.log2_weakness() == 2 ** 4 - 4]  # e.g. the memoriser
    picks = {finite.choose(tied + tied[:1], "weakest", np.random.default_rng(s)).J for s in range(40)}
    assert len(picks) == len(set(h.J for h in tied))  # every tied hypothesis gets picked


def test_exact_weakness_of_a_network_hypothesis_by_hand():
    probs = np.array([[0.95, 0.05], [0.5, 0.5], [0.08, 0.92], [0.1, 0.9]])
    assert finite.network_hypothesis(probs, 0.1).sum(1).tolist() == [1, 2, 1, 2]
    assert finite.exact_log2_weakness(probs, 0.1) == pytest.approx(2.0)
    assert finite.exact_log2_weakness(probs, 0.1, inputs=np.array([0, 2])) == 0.0
    assert finite.exact_log2_weakness(probs, 0.6) == 0.0  # the top label always counts
    assert math.isclose(finite.exact_log2_weakness(np.full((3, 2), 0.5), 0.1), 3.0)


def test_networks_train_deterministically_and_their_exact_weakness_is_the_open_labels_count_on_every_input():
    import torch

    from flatlib import measures, models
    t = finite.task(6, "parity2", 24, seed=1)
    a, b = finite.train_network(t, (8,), seed=3, max_epochs=200), finite.train_network(t, (8,), seed=3, max_epochs=200)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    x = torch.as_tensor(t.x, dtype=torch.float32)
    probs = torch.softmax(models.predict(a, x).double(), 1).numpy()
    exact = finite.exact_log2_weakness(probs, 0.1, t.unseen)
    # weakness_open_labels probed on *every* unseen input is the exact count per input.
    train = (x[t.train], torch.as_tensor(t.y[t.train], dtype=torch.long))
    sampled = measures.MEASURES["weakness_open_labels"](a, train, probe=x[t.unseen], tau=0.1)
    assert sampled == pytest.approx(exact / len(t.unseen), abs=1e-12)


def test_network_table_has_a_row_per_seed_and_every_measure():
    t = finite.task(5, "and2", 12, seed=0)
    table = finite.network_table(t, networks=3, widths=(8,), probe_n=8)
    assert list(table["seed"]) == [0, 1, 2]
    assert set(finite.NETWORK_MEASURES) <= set(table.columns)
    assert (table["exact_log2_weakness"] >= 0).all() and table["unseen_acc"].between(0, 1).all()
    assert (table["exact_per_input"] == table["exact_log2_weakness"] / len(t.unseen)).all()
    assert table.equals(finite.network_table(t, networks=3, widths=(8,), probe_n=8))  # seeded


def test_learner_summary_and_paired_differences():
    import pandas as pd
    from scipy import stats as sps
    table = pd.DataFrame({"draw": [0, 0, 1, 1, 2, 2], "learner": ["weakest", "shortest"] * 3,
                          "accuracy": [0.5, 0.7, 0.5, 0.9, 0.5, 0.8], "rule": "parity2"})
    summary = finite.learner_summary(table, scores=("accuracy",)).set_index("learner")
    assert summary.loc["shortest", "accuracy"] == pytest.approx(0.8)
    assert summary.loc["shortest", "accuracy_pm"] == pytest.approx(sps.t.ppf(0.975, 2) * 0.1 / math.sqrt(3))
    d = finite.weakest_minus(table, "accuracy", "shortest")
    assert d["mean"] == pytest.approx(-0.3) and d["ci_high"] < 0 and d["draws"] == 3


def _brute_radius(values, bits, inputs):
    """The smallest Hamming distance from each input to an input of another value, by comparing
    every pair of strings of the domain bit by bit."""
    x = finite.domain(bits)
    out = []
    for i in inputs:
        distances = [int((x[i] != x[j]).sum()) for j in range(len(x)) if values[j] != values[i]]
        out.append(min(distances) if distances else bits + 1)
    return np.array(out)


@pytest.mark.parametrize("seed", range(5))
def test_hamming_radius_matches_brute_force_on_a_tiny_domain(seed):
    rng = np.random.default_rng(seed)
    bits = 5
    # few changes of value, so that radii beyond 1 occur
    values = np.where(rng.random(2 ** bits) < 0.1, rng.integers(1, 3, 2 ** bits), 0)
    inputs = rng.choice(2 ** bits, 12, replace=False)
    assert finite.hamming_radius(values, inputs).tolist() == _brute_radius(values, bits, inputs).tolist()


def test_hamming_radius_by_hand():
    x = finite.domain(3)
    assert finite.hamming_radius(np.zeros(8), np.arange(8)).tolist() == [4] * 8  # no change anywhere: bits + 1
    only = np.zeros(8)
    only[0b111] = 1  # one string differs: the radius is the distance to it
    assert finite.hamming_radius(only, np.arange(8)).tolist() == [3, 2, 2, 1, 2, 1, 1, 1]
    parity = finite.labels("parity2", x)
    assert (finite.hamming_radius(parity, np.arange(8)) == 1).all()
    with pytest.raises(ValueError, match="one value per input"):
        finite.hamming_radius(np.zeros(7), [0])


def test_geometric_reading_of_junta_tables_by_hand(and2):
    found = {h.J: h for h in finite.consistent(and2, 3)}
    # Training 000, 011, 110, 111, labelled 0, 0, 1, 1. The memoriser commits only there: every
    # training string has an open neighbour one flip away, so every radius is 1.
    memoriser = finite.hypothesis_values(found[(0, 1, 2)], and2.x)
    assert memoriser.tolist() == [0, 2, 2, 0, 2, 2, 1, 1]
    assert finite.hamming_radius(memoriser, and2.train).tolist() == [1, 1, 1, 1]
    # J = (0,) labels every string by its bit 0 and commits everywhere: flipping bit 0 changes
    # the label, so every radius is 1 as well; the two readings part: the memoriser leaves 4
    # inputs open and this table none.
    assert finite.mean_hamming_radius(finite.hypothesis_values(found[(0,)], and2.x), and2.train) == 1.0
    # The table on no position (J = ()) gives every input the one training label; with every
    # training label 0 it is consistent, its label never changes, and the radius is bits + 1.
    constant = finite.Task(3, "and2", and2.x, np.zeros(8, dtype=np.uint8), and2.train)
    empty = finite.fit_table(constant, ())
    assert finite.mean_hamming_radius(finite.hypothesis_values(empty, constant.x), constant.train) == 4.0
    table = finite.compare(bits=5, rule="exchangeable", train_size=6, max_arity=5, draws=3)
    assert table["hamming_radius"].between(1, 6).all()


def test_network_geometric_reading_is_the_radius_of_its_predicted_labels():
    import torch

    from flatlib import models
    t = finite.task(5, "parity2", 12, seed=2)
    table = finite.network_table(t, networks=2, widths=(8,), probe_n=8)
    model = finite.train_network(t, (8,), seed=1)
    predicted = models.predict(model, torch.as_tensor(t.x, dtype=torch.float32)).argmax(1).numpy()
    assert table.loc[1, "hamming_radius"] == pytest.approx(_brute_radius(predicted, 5, t.train).mean())


def test_the_language_check_refuses_exactly_what_compare_cannot_finish():
    # the oracle is the chapter's own computation: compare stops with "no consistent hypothesis"
    outcomes = set()
    for bits, rule, train_size, max_arity in itertools.product((4, 5), ("exchangeable", "parity2", "sum_carry"),
                                                               (3, 6, 10), range(6)):
        if max_arity > bits:
            continue
        try:
            finite.compare(bits, rule, train_size, max_arity, draws=4)
            finishes = True
        except ValueError as exc:
            assert "no consistent hypothesis" in str(exc)
            finishes = False
        try:
            finite.check_language(bits, [rule], train_size, max_arity, draws=4)
            passes = True
        except ValueError as exc:
            assert f"max_arity = {max_arity}" in str(exc)
            passes = False
        assert passes == finishes, (bits, rule, train_size, max_arity)
        outcomes.add(finishes)
    assert outcomes == {True, False}, "the grid must hold both cases"


@pytest.mark.parametrize("args,words", [
    ((5, ["exchangeable"], 32, 5, 3), "2^bits - 1 = 31"), ((5, ["exchangeable"], 8, 6, 3), "max_arity must be"),
    ((2, ["exchangeable", "parity3"], 2, 2, 3), "reads 3 bits"),
])
def test_the_language_check_refuses_a_domain_the_draws_cannot_come_from(args, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        finite.check_language(*args)
