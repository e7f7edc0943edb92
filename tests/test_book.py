"""The book as published: chapters smoke-run with tiny parameters, the scoreboard matches the
committed summaries, and the site builds with warnings as errors."""
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from flatlib import claims, report, runner, scoreboard
from flatlib.publishing import claim_figures, manifest

CHAPTERS = runner.manifest()
PUBLISHED = runner.published()


def _toc_order() -> list[str]:
    toc = yaml.safe_load((report.ROOT / "_toc.yml").read_text())
    entries = list(toc.get("chapters", [])) + [c for p in toc.get("parts", []) for c in p.get("chapters", [])]
    return [e["file"] for e in entries]


def test_the_toc_lists_exactly_the_published_runs_of_the_manifest_in_its_order():
    chapter_entries = [f for f in _toc_order() if "/" in f]
    assert chapter_entries == [f"{r.folder}/{r.chapter}" for r in PUBLISHED], \
        "_toc.yml and chapters.yml disagree: list each published run in both, in the same order"


def test_every_chapter_has_a_source_smoke_parameters_and_a_published_run():
    for name, chapter in CHAPTERS.items():
        assert chapter.source.is_file(), chapter.source
        assert chapter.source.suffix == ".md", "chapter sources are MyST Markdown notebooks"
        assert chapter.smoke, f"{name} needs smoke parameters in chapters.yml"
        # a chapter with no published run yet (published: [] in chapters.yml) is in no page
        assert chapter.published or f"{name}/{name}" not in _toc_order(), f"{name} is in the toc but unpublished"
        runner.validate(name, chapter.smoke)  # smoke parameters are real parameters of the source


def test_no_stray_notebooks_outside_the_manifest():
    on_disk = {p.relative_to(runner.BOOK).as_posix() for p in runner.BOOK.glob("*/*.ipynb")
               if not p.parent.name.startswith(".") and not p.parent.name.endswith(".failed")}  # runs at work
    assert on_disk == {r.notebook.relative_to(runner.BOOK).as_posix() for r in PUBLISHED}


def test_every_parameter_declares_its_range_and_the_defaults_lie_inside():
    for name, chapter in CHAPTERS.items():
        defaults = runner.parameters(chapter.source)
        assert set(chapter.ranges) == set(defaults) - {"out_dir"}, f"{name}: declare a range for every parameter"
        runner.validate(name, {})  # the defaults pass their own ranges


@pytest.mark.parametrize("chapter,name,value,words", [
    ("head_to_head", "networks", "0", ">= 4"), ("head_to_head", "resamples", "0", ">= 99"),
    ("head_to_head", "n", "0", ">= 100"), ("head_to_head", "n", "70000", "<= 60000"),
    ("head_to_head", "widths", "[]", "1 to 8 items"), ("head_to_head", "dataset", "cifar", "one of 'mnist'"),
    ("head_to_head", "lr", "0", "> 0"), ("head_to_head", "max_epochs", "0", ">= 1"),
    ("head_to_head", "optimizer", "adamw", "one of 'sgd', 'adam'"), ("head_to_head", "lr", "nan", "non-finite"),
    ("batch_sweep", "sizes", "[5000, 2000]", "strictly increasing"), ("reparameterisation", "alphas", "[1]", "2 to"),
])
def test_out_of_range_values_are_refused_before_a_kernel_starts(chapter, name, value, words, monkeypatch):
    import papermill

    def no_kernel(*args, **kwargs):
        raise AssertionError("a kernel was started")

    monkeypatch.setattr(papermill, "execute_notebook", no_kernel)
    with pytest.raises(runner.ChapterError, match=f"Parameter '{name}'") as err:
        runner.run(chapter, {name: value}, progress=False)
    assert words in str(err.value)


@pytest.mark.slow
@pytest.mark.book
@pytest.mark.parametrize("chapter", sorted(CHAPTERS))
def test_chapter_smoke_run(chapter, tmp_path):
    # One run checks two things: the chapter at its smoke parameters, overlaid with the first re-run
    # example its page shows, smoke-sized (tests/test_rerun_examples.py runs the page's other examples).
    from test_rerun_examples import first_example

    summary = runner.run(chapter, first_example(chapter), out=tmp_path / chapter, progress=False)
    notebook = (tmp_path / chapter / f"{chapter}.ipynb").read_text()
    assert summary["headline"], "a chapter must report headline numbers"
    for row in summary["scoreboard"]:
        assert row["verdict"] in claims.VERDICTS
    assert "it/s]" not in notebook and "s/it]" not in notebook, "a progress bar reached the published page"
    assert "TqdmWarning" not in notebook, "a progress-bar warning reached the published page"
    shown = _reader_facing(nbformat.reads(notebook, as_version=4))
    assert 'class="dataframe"' not in shown, "a raw DataFrame reached the page: show it with flatlib.report.table"
    assert not re.search(r"\bNaN\b|\{'[^']*': ", shown), "a NaN or a dict's repr reached the page"
    _check_figures(tmp_path / chapter)


def _reader_facing(nb) -> str:
    """Everything a chapter's outputs show on its page: printed text, tables, glued values."""
    found = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            found.append(output.get("text", ""))
            for mime, value in output.get("data", {}).items():
                if mime.endswith(("text/plain", "text/html", "text/markdown")):
                    found.append(value if isinstance(value, str) else "".join(value))
    return "\n".join(found)


def _check_figures(folder: Path) -> None:
    """Every figure a run wrote was saved by ``flatlib.plots`` for the book's column: text at least
    ``plots.MIN_TEXT_PX`` where the column shows it, at most ``MAX_LEGEND_ENTRIES`` legend entries,
    no tick labels run together, no text printed over another panel."""
    from flatlib import plots

    figures = sorted(folder.glob("*.png"))
    problems = []
    for path in figures:
        found = plots.metadata(path)
        if not found:
            problems.append(f"{path.name}: not saved by flatlib.plots.savefig")
            continue
        if found["min_text_px"] < plots.MIN_TEXT_PX:
            problems.append(f"{path.name}: text of {found['min_text_px']:.1f} px in the column")
        if found["width_px"] * plots.CSS_PX_PER_INCH / found["dpi"] > 1.25 * plots.COLUMN_PX:
            problems.append(f"{path.name}: {found['width_px']} px wide, shrunk by more than a fifth in the column")
        problems += [f"{path.name}: {p}" for p in found["problems"]]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("run", PUBLISHED, ids=lambda r: r.folder)
def test_every_published_figure_was_drawn_for_the_column(run):
    if run.folder in runner.stale():
        pytest.skip("a stale chapter's figures are its last run's; they are redrawn by its re-run")
    _check_figures(run.out_dir)


@pytest.mark.slow
@pytest.mark.book
def test_a_chapter_on_worker_processes_publishes_the_serial_runs_numbers(tmp_path, monkeypatch):
    # The whole chapter (tables, statistics, verdict), each run from its own empty store; the
    # full-size run of this on the published head-to-head page is benchmarks/chapter_bench.py.
    from flatlib import compare

    smoke = CHAPTERS["head_to_head"].smoke
    for executor in ("serial", "processes"):
        monkeypatch.setenv("FLATLIB_EXECUTOR", executor)  # the chapter's kernel inherits it
        monkeypatch.setenv("FLATLIB_CACHE", str(tmp_path / f"store-{executor}"))
        runner.run("head_to_head", smoke, out=tmp_path / executor, progress=False)
    result = compare.compare(tmp_path / "processes", tmp_path / "serial")
    assert result.identical, str(result)
    assert result.files == sorted(p.name for p in runner.BOOK.glob("head_to_head/*.csv"))  # networks and statistics


@pytest.mark.parametrize("run", PUBLISHED, ids=lambda r: r.folder)
def test_published_run_has_executed_notebook_and_a_summary_judging_its_claims(run):
    assert run.notebook.is_file() and (run.out_dir / report.SUMMARY_NAME).is_file()
    summary = json.loads((run.out_dir / report.SUMMARY_NAME).read_text())
    judged = [row["claim"] for row in summary["scoreboard"]]
    if run.folder in runner.stale():  # a claim registered since its last run waits for its re-run
        assert judged == [c for c in run.claims if c in judged], (judged, run.claims)
    else:
        assert judged == list(run.claims)
    assert {k: summary["parameters"][k] for k in run.params} == run.params


def test_toc_symlink_points_at_the_root_toc():
    link = report.ROOT / "book" / "_toc.yml"
    assert link.is_symlink() and link.resolve() == (report.ROOT / "_toc.yml").resolve()


def test_committed_scoreboard_is_generated_from_the_summaries():
    assert scoreboard.current() == scoreboard.render(), "run `python -m flatlib scoreboard` and commit"
    assert scoreboard.FIGURE.read_text() == scoreboard.figure(), "run `python -m flatlib scoreboard` and commit"


def test_the_landing_figure_colours_each_claim_by_its_verdict(tmp_path):
    book = tmp_path / "book"
    (book / "c").mkdir(parents=True)
    from flatlib import keys

    (book / "c" / "summary.json").write_text(json.dumps({"chapter": "c", "computations": keys.used(), "scoreboard": [
        {"claim": "C1", "ours": "x", "verdict": "supported"},
        {"claim": "C4", "ours": "y", "verdict": "contradicted"}]}))
    assert scoreboard.verdicts(book) == {cid: {"C1": "supported", "C4": "contradicted"}.get(cid, "pending")
                                         for cid in claims.CLAIMS}
    svg = scoreboard.figure(book)
    assert svg == scoreboard.figure(book)  # deterministic: the committed file can be checked
    assert svg.count(scoreboard.VERDICT_COLORS["pending"]) >= len(claims.CLAIMS) - 2
    assert scoreboard.VERDICT_COLORS["supported"] in svg and scoreboard.VERDICT_COLORS["contradicted"] in svg
    text = " ".join(re.findall(r"<text[^>]*>([^<]*)</text>", svg.replace("&#39;", "'")))
    for claim in claims.CLAIMS.values():  # each topic, wrapped onto lines of its column
        assert claim.topic and claim.topic in " ".join(text.split())


def test_the_scoreboard_shows_each_verdicts_stability_recomputed_from_the_summaries(tmp_path):
    book = tmp_path / "book"
    (book / "c").mkdir(parents=True)
    shares = {"not supported": 0.64, "contradicted": 0.31, "inconclusive": 0.05}
    rows = [report.scoreboard_row(claims.Verdict("C2", "not supported", ()), "x", shares),
            report.scoreboard_row(claims.Verdict("C4", "supported", ()), "y")]
    summary = book / "c" / "summary.json"
    from flatlib import keys

    summary.write_text(json.dumps({"chapter": "c", "computations": keys.used(), "scoreboard": rows}))
    table = scoreboard.render(book)
    assert "| x | **not supported** (64 %; contradicted 31 %, inconclusive 5 %) |" in table
    assert "| y | **supported** |" in table  # a row without a stability shows the verdict alone
    svg = scoreboard.figure(book)
    assert "not supported 64 %" in svg and scoreboard.VERDICT_COLORS["contradicted"] in svg
    assert svg == scoreboard.figure(book)
    # the figures follow the summaries: a new stability redraws both
    rows[0]["stability"] = {"not supported": 1.0}
    summary.write_text(json.dumps({"chapter": "c", "computations": keys.used(), "scoreboard": rows}))
    assert "| x | **not supported** (100 %) |" in scoreboard.render(book)
    redrawn = scoreboard.figure(book)
    assert "not supported 100 %" in redrawn and scoreboard.VERDICT_COLORS["contradicted"] not in redrawn
    with pytest.raises(ValueError, match="sum"):
        report.scoreboard_row(claims.Verdict("C2", "supported", ()), "x", {"supported": 0.5})
    with pytest.raises(ValueError, match="verdicts"):
        report.scoreboard_row(claims.Verdict("C2", "supported", ()), "x", {"maybe": 1.0})


@pytest.mark.book
def test_book_builds_with_warnings_as_errors(tmp_path):
    jb = Path(sys.executable).parent / "jupyter-book"
    out = subprocess.run([str(jb), "build", "-W", "-n", "--keep-going", "book/", "--path-output", str(tmp_path)],
                         cwd=report.ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    html = tmp_path / "_build" / "html"
    methods = (html / "methods.html").read_text()
    assert "_static/../mathjax/tex-mml-chtml.js" in methods and "cdn.jsdelivr.net/npm/mathjax" not in methods
    assert (html / "mathjax" / "tex-mml-chtml.js").is_file(), "MathJax is missing: run make test"
    # a stale chapter's page opens with the build's note and its re-run command; a current one has none
    stale = runner.stale()
    for run in PUBLISHED:
        page = (html / run.folder / f"{run.notebook.stem}.html").read_text()
        if run.folder in stale:
            assert "stale-note" in page and "Re-run pending" in page, run.folder
            assert f"--out book/{run.folder}" in page, run.folder
        else:
            assert "stale-note" not in page, run.folder


def test_the_chapters_command_lists_each_parameter_with_its_range(capsys):
    from flatlib.__main__ import main

    assert main(["chapters"]) == 0
    out = capsys.readouterr().out
    assert "    networks = 100    (>= 4, <= 10000)" in out
    assert "out_dir" not in out  # where a run's files go is --out, not a parameter offered to readers


def _summaries(tmp_path, monkeypatch, computations: dict) -> dict:
    """Published runs in ``tmp_path``, one per entry: a summary recording those versions (None:
    no versions recorded; "missing": never run)."""
    from types import SimpleNamespace

    runs = []
    for folder, recorded in computations.items():
        path = tmp_path / folder
        if recorded != "missing":
            path.mkdir()
            (path / "summary.json").write_text(json.dumps({"computations": recorded} if recorded else {}))
        runs.append(SimpleNamespace(folder=folder, out_dir=path))
    monkeypatch.setattr(manifest, "published", lambda: runs)
    return runs


def test_a_run_is_stale_exactly_when_a_version_it_used_changed(tmp_path, monkeypatch):
    from flatlib import measures, stats
    from flatlib import train as ftrain

    used = {"module:flatlib.train": ftrain.VERSION, "module:flatlib.stats": stats.VERSION,
            "measure:top_eigenvalue": measures.MEASURES["top_eigenvalue"].version,
            "rule:C2": claims.RULE_VERSIONS["C2"]}
    _summaries(tmp_path, monkeypatch, {"current": used, "old_measure": {**used, "measure:top_eigenvalue": 0},
                                       "gone": {**used, "measure:no_such_measure": 1}, "unversioned": None,
                                       "never": "missing"})
    reasons = runner.stale()
    assert set(reasons) == {"old_measure", "gone", "unversioned", "never"}
    assert reasons["old_measure"] == "versions changed since the run: measure:top_eigenvalue 0 -> 1"
    assert "measure:no_such_measure no longer exists" in reasons["gone"]
    assert "before results were versioned" in reasons["unversioned"] and "not been run" in reasons["never"]
    monkeypatch.setattr(claim_figures, "RULE_VERSIONS", {**claims.RULE_VERSIONS, "C2": 2})  # a rule repaired
    assert runner.stale()["current"] == "versions changed since the run: rule:C2 1 -> 2"


def test_check_fails_on_a_stale_chapter_and_reports_another_environment_apart(tmp_path, monkeypatch, capsys):
    from flatlib import keys
    from flatlib.__main__ import main

    used = keys.used()
    _summaries(tmp_path, monkeypatch, {"here": used, "elsewhere": used})
    summary = json.loads((tmp_path / "elsewhere" / "summary.json").read_text())
    (tmp_path / "elsewhere" / "summary.json").write_text(json.dumps(
        {**summary, "environment": {"torch": "2.14", "cpu": "x86_64 AVX2"}}))
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "other environment (not stale): book/elsewhere" in out and "all 2 published chapters are current" in out
    (tmp_path / "here" / "summary.json").write_text(json.dumps({"computations": {**used, "module:flatlib.train": 0}}))
    assert main(["check"]) == 1
    assert "stale: book/here: versions changed since the run: module:flatlib.train 0 ->" in capsys.readouterr().out


def test_check_flags_a_published_file_edited_after_its_run(tmp_path, monkeypatch, capsys):
    from flatlib import keys
    from flatlib.__main__ import main

    _summaries(tmp_path, monkeypatch, {"run": keys.used()})
    (tmp_path / "run" / "table.csv").write_text("a,b\n1,2\n")
    report.seal(tmp_path / "run" / "summary.json")
    (tmp_path / "run" / "run.md").write_text("# the chapter's source, which is code, not output\n")
    assert main(["check"]) == 0
    (tmp_path / "run" / "table.csv").write_text("a,b\n1,3\n")
    assert main(["check"]) == 1
    assert "edited: book/run: edited after its run: table.csv" in capsys.readouterr().out
    (tmp_path / "run" / "table.csv").write_text("a,b\n1,2\n")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    summary["scoreboard"] = [{"claim": "C2", "verdict": "supported"}]  # a verdict typed in
    (tmp_path / "run" / "summary.json").write_text(json.dumps(summary))
    assert runner.edited() == {"run": "edited after its run: summary.json"}


def test_reproduce_reruns_only_the_stale_chapters_and_says_what_remains(tmp_path, monkeypatch):
    import io

    from flatlib import keys

    used = keys.used()
    runs = _summaries(tmp_path, monkeypatch, {"current": used, "stale": None, "never": "missing"})
    for run, minutes in zip(runs, (None, 12.0, None)):
        run.chapter, run.params, run.cold_minutes = run.folder, {}, minutes
    done = []
    monkeypatch.setattr(runner, "run", lambda chapter, params, out, progress, resume: done.append(chapter) or {})
    said = io.StringIO()
    runner.reproduce(out=said)
    assert done == ["stale", "never"]
    text = said.getvalue()
    assert text.startswith("1 of 3 published runs are current; 2 to re-run:")
    assert "book/stale (about 12 min)" in text and "book/never (time unknown)" in text
    assert "it resumes from the store" in text
    done.clear()
    runner.reproduce(everything=True, out=io.StringIO())
    assert done == ["current", "stale", "never"]


def test_a_stale_chapter_shows_re_run_pending_on_the_scoreboard(tmp_path):
    from flatlib import keys

    book = tmp_path / "book"
    for folder, computations in (("new", keys.used()), ("old", {"module:flatlib.train": 0})):
        (book / folder).mkdir(parents=True)
        (book / folder / "summary.json").write_text(json.dumps({"chapter": folder, "computations": computations,
                                                                "scoreboard": [{"claim": "C1" if folder == "new"
                                                                                else "C4", "ours": "x",
                                                                                "verdict": "supported"}]}))
    state = scoreboard.verdicts(book)
    assert state["C1"] == "supported" and state["C4"] == scoreboard.PENDING
    table = scoreboard.render(book)
    assert "| **re-run pending** (last run: supported) |" in table and table.count("re-run pending") == 1
    assert scoreboard.VERDICT_COLORS[scoreboard.PENDING] in scoreboard.figure(book)
