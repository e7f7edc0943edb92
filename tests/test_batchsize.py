"""flatlib.batchsize: the large batch, and the paired differences, on
hand-built tables whose answers are known."""
import numpy as np
import pytest
from scipy import stats as sps

from flatlib import batchsize
from oracles import paired_table


@pytest.mark.parametrize("n,expected", [(2000, 500), (5000, 500), (10000, 1000), (20000, 2000),
                                        (60000, 6000), (300, 300), (5999, 599)])
def test_large_batch_is_a_tenth_of_n_with_a_floor_and_at_most_n(n, expected):
    assert batchsize.large_batch_size(n) == expected


def test_large_batch_rejects_impossible_settings():
    with pytest.raises(ValueError, match="fraction"):
        batchsize.large_batch_size(1000, fraction=0)
    with pytest.raises(ValueError, match="floor"):
        batchsize.large_batch_size(1000, floor=0)


def test_regime_differences_are_paired_by_seed():
    gaps = {2000: [0.010, 0.014, 0.018, 0.012, 0.016], 60000: [0.001, -0.001, 0.0, 0.002, -0.002]}
    table = paired_table(gaps)
    out = batchsize.regime_differences(table, "test_acc")
    for n, per_seed in gaps.items():
        ref = sps.ttest_1samp(per_seed, 0.0)
        ci = ref.confidence_interval(0.95)
        assert out.loc[n, "difference"] == pytest.approx(np.mean(per_seed))
        assert (out.loc[n, "ci_low"], out.loc[n, "ci_high"]) == pytest.approx((ci.low, ci.high))
        assert out.loc[n, "p"] == pytest.approx(ref.pvalue)
        assert out.loc[n, "pairs"] == 5


def test_a_network_missing_from_one_regime_is_an_error():
    table = paired_table({2000: [0.01, 0.02, 0.03]})
    with pytest.raises(ValueError, match="lack a network"):
        batchsize.regime_differences(table.iloc[:-1], "test_acc")


GAPS = {2000: [0.010, 0.014, 0.018, 0.012, 0.016], 10000: [0.020, 0.019, 0.024, 0.021, 0.017, 0.022],
        60000: [0.001, -0.001, 0.002, 0.0, 0.003]}


def test_gap_changes_are_welch_tests_between_the_sizes_per_seed_gaps():
    changes = batchsize.gap_changes(batchsize.regime_differences(paired_table(GAPS), "test_acc"))
    assert list(zip(changes["n_from"], changes["n_to"])) == [(2000, 10000), (2000, 60000), (10000, 60000)]
    for row in changes.itertuples():
        later, earlier = np.array(GAPS[row.n_to]), np.array(GAPS[row.n_from])
        assert row.change == pytest.approx(later.mean() - earlier.mean())
        assert row.p_rise == pytest.approx(sps.ttest_ind(later, earlier, equal_var=False,
                                                         alternative="greater").pvalue)
        assert row.p_fall == pytest.approx(sps.ttest_ind(later, earlier, equal_var=False, alternative="less").pvalue)


def test_against_figures_is_a_one_sample_t_test_at_each_size_the_figures_give():
    gaps = batchsize.regime_differences(paired_table(GAPS), "test_acc")
    rows = batchsize.against_figures(gaps, {2000: 0.016, 60000: 0.0002, 5000: 0.01})
    assert list(rows["n"]) == [2000, 60000]  # n = 5,000 is not in the run
    for row in rows.itertuples():
        assert row.p == pytest.approx(sps.ttest_1samp(GAPS[row.n], row.paper).pvalue)
        assert row.difference == pytest.approx(np.mean(GAPS[row.n]) - row.paper)
        assert row.ci_low < row.ours < row.ci_high
    with pytest.raises(ValueError, match="regime_differences"):
        batchsize.gap_changes(gaps.drop(columns="se"))
