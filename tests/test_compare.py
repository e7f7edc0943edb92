"""flatlib.compare: a run against the published run, number for number. The oracle is the
published head-to-head folder itself, copied and then changed by hand in known places."""
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from flatlib import compare, runner
from flatlib.__main__ import main

PUBLISHED = runner.BOOK / "head_to_head"
NETWORKS = "head_to_head_networks.csv"


@pytest.fixture
def copy(tmp_path):
    """A copy of the published head-to-head run, as a re-run that reproduced it would look."""
    target = tmp_path / "run"
    shutil.copytree(PUBLISHED, target)
    return target


def _edit_csv(folder, name, edit):
    frame = pd.read_csv(folder / name)
    edit(frame)
    frame.to_csv(folder / name, index=False)  # floats written with repr, so they read back exactly


def _edit_summary(folder, edit):
    path = folder / "summary.json"
    summary = json.loads(path.read_text())
    edit(summary)
    path.write_text(json.dumps(summary))


def test_a_copy_of_the_published_run_is_identical_and_every_result_is_counted(copy):
    result = compare.compare(copy, PUBLISHED)
    assert result.identical, str(result)
    cells = sum(len(frame) * sum(compare.compared(c) for c in frame.columns)
                for frame in (pd.read_csv(p) for p in sorted(PUBLISHED.glob("*.csv"))))
    assert result.files == sorted(p.name for p in PUBLISHED.glob("*.csv"))
    assert cells < result.values < cells + 200  # every table cell, then the summary's leaves


def test_the_published_run_of_the_same_parameters_is_found_by_itself(tmp_path):
    for folder in ("head_to_head", "head_to_head_fashion_mnist"):
        shutil.copytree(runner.BOOK / folder, tmp_path / folder)
        assert compare.published_counterpart(tmp_path / folder) == runner.BOOK / folder
        assert compare.compare(tmp_path / folder).identical


def test_a_run_of_parameters_nobody_published_asks_for_a_folder(copy):
    _edit_summary(copy, lambda s: s["parameters"].update(networks=12))
    with pytest.raises(compare.CompareError, match="--against"):
        compare.published_counterpart(copy)
    result = compare.compare(copy, PUBLISHED)
    assert [str(d) for d in result.differences] == ["parameters: differ in networks"]


def test_times_and_what_the_store_held_are_not_results(copy):
    _edit_csv(copy, NETWORKS, lambda f: f.__setitem__("train_time_s", f["train_time_s"] * 3))
    _edit_summary(copy, lambda s: s["headline"].update(study_wall_time_s=1e6, chapter_wall_time_s=1e6,
                                                       networks_already_in_store=0))
    assert compare.compare(copy, PUBLISHED).identical


def test_one_value_off_by_its_last_bit_is_found_and_a_tolerance_accepts_it(copy):
    value = pd.read_csv(PUBLISHED / NETWORKS)["top_eigenvalue"].iloc[7]
    _edit_csv(copy, NETWORKS, lambda f: f.__setitem__("top_eigenvalue", f["top_eigenvalue"].where(
        f.index != 7, np.nextafter(value, math.inf))))
    result = compare.compare(copy, PUBLISHED)
    assert len(result.differences) == 1
    difference = result.differences[0]
    assert difference.where == f"{NETWORKS}[top_eigenvalue]"
    assert difference.what.startswith("1 of 100 rows differ (first: row 7")
    assert not result.identical and "\n1 difference:\n" in str(result)
    assert compare.compare(copy, PUBLISHED, rtol=1e-12).identical


def test_a_headline_number_is_named_by_its_path(copy):
    _edit_summary(copy, lambda s: s["headline"]["primary_vs_test_acc"]["weakness"].update(rho=0.374))
    result = compare.compare(copy, PUBLISHED)
    assert [d.where for d in result.differences] == ["headline.primary_vs_test_acc.weakness.rho"]


def test_a_verdict_that_moved_is_named_by_its_scoreboard_row(copy):
    published = json.loads((PUBLISHED / "summary.json").read_text())["scoreboard"][0]["verdict"]
    moved = "supported" if published != "supported" else "contradicted"
    _edit_summary(copy, lambda s: s["scoreboard"][0].update(verdict=moved))
    found = {d.where: d.what for d in compare.compare(copy, PUBLISHED).differences}
    assert found == {"scoreboard[0].verdict": f"'{moved}' against '{published}'"}


def test_a_folder_is_not_compared_with_itself(copy):
    with pytest.raises(compare.CompareError, match="is the folder it would be compared with"):
        compare.compare(copy, copy)


def test_missing_tables_rows_and_columns_are_differences(copy):
    (copy / "head_to_head_partial.csv").unlink()
    _edit_csv(copy, "head_to_head_variants.csv", lambda f: f.pop(f.columns[-1]))
    frame = pd.read_csv(copy / NETWORKS)
    frame.iloc[:-1].to_csv(copy / NETWORKS, index=False)
    found = {d.where: d.what for d in compare.compare(copy, PUBLISHED).differences}
    assert found["head_to_head_partial.csv"] == "only in the other folder"
    assert found[NETWORKS] == "99 rows against 100"
    assert found["head_to_head_variants.csv"].startswith("other columns")


def _pair(tmp_path, a: dict, b: dict):
    for side, columns in (("a", a), ("b", b)):
        (tmp_path / side).mkdir()
        pd.DataFrame(columns).to_csv(tmp_path / side / "t.csv", index=False)
        (tmp_path / side / "summary.json").write_text(json.dumps({"chapter": "c"}))
    return tmp_path / "a", tmp_path / "b"


def test_an_infinity_equals_only_the_same_infinity_whatever_the_tolerance(tmp_path):
    a, b = _pair(tmp_path, {"x": [3.0, -math.inf, math.inf, 1.0]}, {"x": [math.inf, math.inf, math.inf, 1.0 + 1e-9]})
    exact, within = compare.compare(a, b).differences, compare.compare(a, b, rtol=1e-6).differences
    assert len(exact) == 1 and exact[0].what.startswith("3 of 4 rows differ (first: row 0, 3.0 against inf)")
    assert exact[0].what.endswith("largest difference 1e-09 (relative 1e-09)")  # over the finite rows only
    assert len(within) == 1 and within[0].what == "2 of 4 rows differ (first: row 0, 3.0 against inf)"


def test_booleans_equal_booleans_only(tmp_path):
    a, b = _pair(tmp_path, {"fits": [True, False]}, {"fits": [1, 0]})
    assert [d.where for d in compare.compare(a, b).differences] == ["t.csv[fits]"]


def test_the_same_columns_in_another_order_are_said_to_be_so(tmp_path):
    a, b = _pair(tmp_path, {"x": [1.0], "y": [2.0]}, {"y": [2.0], "x": [1.0]})
    assert [str(d) for d in compare.compare(a, b).differences] == ["t.csv: the same columns in another order"]


def test_nan_equals_nan_and_strings_compare_as_text(tmp_path):
    for side, word in (("a", "ok"), ("b", "ok")):
        (tmp_path / side).mkdir()
        pd.DataFrame({"x": [1.0, math.nan], "status": [word, "diverged"]}).to_csv(tmp_path / side / "t.csv",
                                                                                   index=False)
        (tmp_path / side / "summary.json").write_text(json.dumps({"chapter": "c", "headline": {"v": None}}))
    assert compare.compare(tmp_path / "a", tmp_path / "b").identical
    _edit_csv(tmp_path / "b", "t.csv", lambda f: f.__setitem__("status", ["ok", "ok"]))
    assert [d.where for d in compare.compare(tmp_path / "a", tmp_path / "b").differences] == ["t.csv[status]"]


def test_a_folder_without_a_summary_is_one_clear_error(tmp_path):
    with pytest.raises(compare.CompareError, match="no summary.json"):
        compare.compare(tmp_path, PUBLISHED)
    with pytest.raises(compare.CompareError, match="rtol"):
        compare.compare(PUBLISHED, PUBLISHED, rtol=-1)


def test_the_command_exits_1_on_a_difference_and_2_on_an_error(copy, tmp_path, capsys):
    assert main(["compare", str(copy)]) == 0
    assert "identical" in capsys.readouterr().out
    _edit_summary(copy, lambda s: s["headline"].update(networks=99))
    assert main(["compare", str(copy), "--against", str(PUBLISHED)]) == 1
    assert "headline.networks: 99 against 100" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "nothing")]) == 2
    assert "no summary.json" in capsys.readouterr().err
