"""The book as published: chapters smoke-run with tiny parameters, the scoreboard matches the
committed summaries, and the site builds with warnings as errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flatlib import claims, report, runner, scoreboard

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


@pytest.mark.parametrize("chapter", sorted(CHAPTERS))
def test_chapter_smoke_run(chapter, tmp_path):
    summary = runner.run(chapter, CHAPTERS[chapter].smoke, out=tmp_path / chapter, progress=False)
    notebook = (tmp_path / chapter / f"{chapter}.ipynb").read_text()
    assert summary["headline"], "a chapter must report headline numbers"
    for row in summary["scoreboard"]:
        assert row["verdict"] in claims.VERDICTS
    assert "it/s]" not in notebook and "s/it]" not in notebook, "a progress bar reached the published page"
    assert "TqdmWarning" not in notebook, "a progress-bar warning reached the published page"


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
    assert [row["claim"] for row in summary["scoreboard"]] == list(run.claims)
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
    (book / "c" / "summary.json").write_text(json.dumps({"chapter": "c", "scoreboard": [
        {"claim": "C1", "ours": "x", "verdict": "supported"},
        {"claim": "C4", "ours": "y", "verdict": "contradicted"}]}))
    assert scoreboard.verdicts(book) == {cid: {"C1": "supported", "C4": "contradicted"}.get(cid, "pending")
                                         for cid in claims.CLAIMS}
    svg = scoreboard.figure(book)
    assert svg == scoreboard.figure(book)  # deterministic: the committed file can be checked
    assert svg.count(scoreboard.VERDICT_COLORS["pending"]) >= len(claims.CLAIMS) - 2
    assert scoreboard.VERDICT_COLORS["supported"] in svg and scoreboard.VERDICT_COLORS["contradicted"] in svg
    for claim in claims.CLAIMS.values():
        assert claim.topic and claim.topic in svg.replace("&#39;", "'")


def test_the_scoreboard_shows_each_verdicts_stability_recomputed_from_the_summaries(tmp_path):
    book = tmp_path / "book"
    (book / "c").mkdir(parents=True)
    shares = {"not supported": 0.64, "contradicted": 0.31, "inconclusive": 0.05}
    rows = [report.scoreboard_row(claims.Verdict("C2", "not supported", ()), "x", shares),
            report.scoreboard_row(claims.Verdict("C4", "supported", ()), "y")]
    summary = book / "c" / "summary.json"
    summary.write_text(json.dumps({"chapter": "c", "scoreboard": rows}))
    table = scoreboard.render(book)
    assert "| x | **not supported** (64 %; contradicted 31 %, inconclusive 5 %) |" in table
    assert "| y | **supported** |" in table  # a row without a stability shows the verdict alone
    svg = scoreboard.figure(book)
    assert "not supported 64 %" in svg and scoreboard.VERDICT_COLORS["contradicted"] in svg
    assert svg == scoreboard.figure(book)
    # the figures follow the summaries: a new stability redraws both
    rows[0]["stability"] = {"not supported": 1.0}
    summary.write_text(json.dumps({"chapter": "c", "scoreboard": rows}))
    assert "| x | **not supported** (100 %) |" in scoreboard.render(book)
    redrawn = scoreboard.figure(book)
    assert "not supported 100 %" in redrawn and scoreboard.VERDICT_COLORS["contradicted"] not in redrawn
    with pytest.raises(ValueError, match="sum"):
        report.scoreboard_row(claims.Verdict("C2", "supported", ()), "x", {"supported": 0.5})
    with pytest.raises(ValueError, match="verdicts"):
        report.scoreboard_row(claims.Verdict("C2", "supported", ()), "x", {"maybe": 1.0})


def test_book_builds_with_warnings_as_errors(tmp_path):
    jb = Path(sys.executable).parent / "jupyter-book"
    out = subprocess.run([str(jb), "build", "-W", "-n", "--keep-going", "book/", "--path-output", str(tmp_path)],
                         cwd=report.ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    html = tmp_path / "_build" / "html"
    methods = (html / "methods.html").read_text()
    assert "_static/../mathjax/tex-mml-chtml.js" in methods and "cdn.jsdelivr.net/npm/mathjax" not in methods
    assert (html / "mathjax" / "tex-mml-chtml.js").is_file(), "MathJax is missing: run make test"


def test_the_chapters_command_lists_each_parameter_with_its_range(capsys):
    from flatlib.__main__ import main

    assert main(["chapters"]) == 0
    assert "    networks = 100    (>= 4, <= 10000)" in capsys.readouterr().out


def test_no_published_chapter_is_stale():
    # `make check`: every published run's numbers came from the code as it is now.
    assert runner.stale() == {}, "re-run these chapters (make chapter / make reproduce)"


def test_stale_names_a_run_whose_code_changed(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from flatlib._version import code_version
    fresh, old, none = (tmp_path / name for name in ("fresh", "old", "none"))
    for folder, versions in ((fresh, {"flatlib.stats": code_version("flatlib.stats")}),
                             (old, {"flatlib.stats": "0" * 16}), (none, None)):
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({"code_versions": versions} if versions else {}))
    runs = [SimpleNamespace(folder=p.name, out_dir=p) for p in (fresh, old, none, tmp_path / "never")]
    monkeypatch.setattr(runner, "published", lambda: runs)
    reasons = runner.stale()
    assert set(reasons) == {"old", "none", "never"}
    assert "flatlib.stats" in reasons["old"] and "not been run" in reasons["never"]
