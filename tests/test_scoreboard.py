"""The landing page's bottom line and the order of its claims, from the verdicts alone."""
import json

import pytest

from flatlib import claims, keys, runner, scoreboard


def _book(tmp_path, rows: dict[str, str], stale: tuple[str, ...] = ()):
    """A book folder with one summary per claim judged (``rows``: claim -> verdict); the claims in
    ``stale`` come from a summary whose recorded versions are out of date."""
    book = tmp_path / "book"
    for i, (cid, verdict) in enumerate(rows.items()):
        (book / f"c{i}").mkdir(parents=True)
        computations = {"module:flatlib.train": 0} if cid in stale else keys.used()
        (book / f"c{i}" / "summary.json").write_text(json.dumps({
            "chapter": f"c{i}", "computations": computations,
            "scoreboard": [{"claim": cid, "ours": "x", "verdict": verdict}]}))
    return book


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_the_bottom_line_counts_each_verdict_and_says_where_the_central_claim_stands(tmp_path):
    rows = {"C1": "supported", "C7": "supported", "C4": "partly supported", "C2": "not supported",
            "C3": "contradicted", "C2+": "contradicted", "C5": "contradicted", "C6": "not supported",
            "C8": "partly supported"}
    line = scoreboard.bottom_line(_book(tmp_path, rows))
    assert line == ("Of the ten claims tested here, two are supported (C1, C7), two partly supported (C4, C8), "
                    "two not supported (C2, C6) and three contradicted (C3, C2+, C5); one waits for a run of its "
                    "chapter (C2+m). The paper's central claim, "
                    "that weakness rather than sharpness predicts generalisation, is not supported on MNIST (C2), "
                    "contradicted on Fashion-MNIST (C3) and contradicted across training recipes (C2+).")


def test_a_stale_or_unrun_chapter_is_counted_as_waiting_never_by_its_last_verdict(tmp_path):
    line = scoreboard.bottom_line(_book(tmp_path, {"C1": "supported", "C2": "supported", "C3": "contradicted"},
                                        stale=("C2",)))
    assert line.startswith("Of the ten claims tested here, one is supported (C1) and one contradicted (C3); "
                           "eight wait for a run of their chapter (C2, C2+, C2+m, C4, C6, C5, C7, C8).")
    assert line.endswith("is contradicted on Fashion-MNIST (C3), and waits for a run on MNIST and across training "
                         "recipes.")
    nothing = scoreboard.bottom_line(_book(tmp_path / "empty", {}))
    assert nothing.startswith("None of the ten claims tested here has a current verdict")


def test_the_claims_follow_the_chapters_order():
    order = scoreboard.claim_order()
    assert sorted(order) == sorted(claims.CLAIMS)
    from_manifest = [cid for run in runner.published() for cid in run.claims]
    assert order[:len(from_manifest)] == from_manifest
    table = scoreboard.render()
    import re

    assert [re.match(r"\| \[?([^\]:]+)", line).group(1) for line in table.splitlines()[2:]] == order


@pytest.mark.slow  # over 2 s: left out of make test-fast
def test_the_committed_bottom_line_is_generated_from_the_summaries():
    assert scoreboard.current(start=scoreboard.BOTTOM_START, end=scoreboard.BOTTOM_END) == scoreboard.bottom_line(), \
        "run `python -m flatlib scoreboard` and commit"


def test_both_readings_of_weakness_are_shown_as_peers_the_primary_first(tmp_path):
    from flatlib import report

    book = tmp_path / "book"
    (book / "c").mkdir(parents=True)
    literal = claims.Verdict("C2", "contradicted", ())
    geometric = claims.Verdict("C2", "supported", ())
    row = report.scoreboard_row(literal, "x", {"contradicted": 1.0}, geometric=(geometric, {"supported": 0.9,
                                                                                           "inconclusive": 0.1}))
    (book / "c" / "summary.json").write_text(json.dumps({"chapter": "c", "computations": keys.used(),
                                                         "scoreboard": [row]}))
    table = scoreboard.render(book)
    assert ("| literal reading (primary): **contradicted** (100 %); geometric reading: **supported** (90 %; "
            "inconclusive 10 %) |") in table
    assert "geometric reading: supported" in scoreboard.figure(book)
    import pytest

    with pytest.raises(TypeError, match="same claim"):
        report.scoreboard_row(literal, "x", geometric=(claims.Verdict("C3", "supported", ()), None))


def test_the_bottom_line_says_what_each_reading_found(tmp_path):
    from flatlib import report

    book = tmp_path / "book"
    (book / "c").mkdir(parents=True)
    row = report.scoreboard_row(claims.Verdict("C2", "contradicted", ()), "x",
                                geometric=(claims.Verdict("C2", "supported", ()), None))
    (book / "c" / "summary.json").write_text(json.dumps({"chapter": "c", "computations": keys.used(),
                                                         "scoreboard": [row]}))
    line = scoreboard.bottom_line(book)
    assert "Under the literal reading of weakness (labels left open, pre-registered), the paper's central claim, " \
           "that weakness rather than sharpness predicts generalisation, is contradicted on MNIST (C2)" in line
    assert line.endswith("Under the geometric reading (how far an input moves before its label changes), it is "
                         "supported on MNIST (C2).")


def test_the_bottom_line_names_a_verdict_its_rule_returns_in_fewer_than_half_the_replicates(tmp_path):
    from flatlib import report

    book = tmp_path / "book"
    (book / "c").mkdir(parents=True)
    row = report.scoreboard_row(claims.Verdict("C2", "contradicted", ()), "x",
                                {"contradicted": 0.52, "not supported": 0.48},
                                geometric=(claims.Verdict("C2", "supported", ()), {"supported": 0.12,
                                                                                   "partly supported": 0.88}))
    (book / "c" / "summary.json").write_text(json.dumps({"chapter": "c", "computations": keys.used(),
                                                         "scoreboard": [row]}))
    line = scoreboard.bottom_line(book)
    assert "is contradicted on MNIST (C2)" in line  # 52 %: the likeliest state, said plainly
    assert line.endswith("it is supported (in 12 % of bootstrap replicates) on MNIST (C2).")

