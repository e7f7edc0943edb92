"""Tables and numbers for people (``flatlib.report.table``, ``number``, ``interval``)."""

import numpy as np
import pandas as pd
import pytest

from flatlib import report


@pytest.mark.parametrize("value, digits, shown", [
    (0.123456, 3, "0.123"), (2.0e6, 2, "2.0\u00d710\u2076"),
    (12.3456, 3, "12.3"), (-0.0456789, 2, "\u22120.046"), (1234.567, 3, "1,235"),
    (60000, 3, "60,000"), (150.0, 3, "150"), (3.2e-6, 2, "3.2\u00d710\u207b\u2076"), (2.5e7, 3, "2.50\u00d710\u2077"),
    (float("nan"), 3, "\u2014"), (None, 3, "\u2014"), (pd.NA, 3, "\u2014"), (True, 3, "yes"),
    (np.bool_(False), 3, "no"),
    (np.int64(7), 3, "7"), (np.float32(0.5), 3, "0.500"), ("sgd", 3, "sgd"), (float("inf"), 3, "\u221e"),
])
def test_numbers_are_shown_to_significant_figures_with_a_true_minus_and_no_nan(value, digits, shown):
    assert report.number(value, digits) == shown


def test_a_dict_is_written_out_not_shown_as_its_repr():
    assert report.number({"target_loss": 97, "patience": 3}) == "target_loss: 97, patience: 3"
    assert report.tally(["target_loss"] * 97 + ["patience"] * 3) == "target loss (97), patience (3)"


def test_intervals_line_up_their_decimals_and_signs():
    assert report.interval(-0.0213, 0.4567, 3, signed=True) == "[\u22120.021, +0.457]"
    assert report.interval(0.64, 0.88, 2) == "[0.64, 0.88]"
    assert report.interval(float("nan"), 1.0) == "\u2014"


def test_a_table_has_no_index_column_formats_units_and_intervals_and_folds_when_long():
    frame = pd.DataFrame({"n": [2000, 60000], "difference": [0.0076, 0.00298], "ci_low": [0.0064, 0.00204],
                          "ci_high": [0.0088, 0.00391], "se": [0.0006, 0.0005], "p": [1e-9, 0.2],
                          "fitted": [True, False], "note": [None, "x"]}).set_index("n")
    shown = report.table(frame, scale={"difference": 100, "ci_low": 100, "ci_high": 100, "se": 100},
                         intervals={"95% interval (pp)": ("ci_low", "ci_high")}, units={"difference": "pp", "se": "pp"},
                         pvalues=["p"], rename={"difference": "gap"})
    assert list(shown.frame.columns) == ["n", "gap (pp)", "95% interval (pp)", "se (pp)", "p", "fitted", "note"]
    first = shown.frame.iloc[0].tolist()
    assert first == ["2,000", "0.760", "[0.640, 0.880]", "0.0600", "1e-09", "yes", "\u2014"]
    html = shown._repr_html_()
    assert "<th" in html and "<tbody><tr><td" in html and "NaN" not in html and "None" not in html
    assert "<details" not in html
    long = report.table(pd.DataFrame({"x": np.arange(30) / 7}), summary="thirty rows", max_rows=12)
    assert long.folded and "<details" in long._repr_html_() and "thirty rows" in long._repr_html_()


def test_a_p_value_at_the_monte_carlo_floor_is_a_bound():
    shown = report.table(pd.DataFrame({"p_perm": [1 / 10001, 0.03]}), pvalues=["p_perm"], resamples=10000)
    assert shown.frame["p_perm"].tolist() == ["< 1e-4", "0.03"]


def test_durations_read_as_prose():
    assert report.duration(0.02) == "under a second"
    assert report.duration(42.4) == "42 s"
    assert report.duration(192) == "3.2 minutes"
    assert report.duration(3600 + 5 * 60) == "1 h 05 min"
