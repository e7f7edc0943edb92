"""The book as published: chapters smoke-run with tiny parameters, the scoreboard matches the
committed summaries, and the site builds with warnings as errors."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flatlib import report, runner, scoreboard

# Tiny parameters for each chapter's smoke run; every chapter must have an entry.
SMOKE: dict[str, dict] = {
    "reparameterisation": {"n": "300", "widths": "[32, 32]", "alphas": "[1.0, 10.0]",
                           "neuron_log_ranges": "[1.0]", "tau_sensitivity": "[0.2]"},
    "head_to_head": {"networks": "8", "n": "200", "widths": "[16, 16]", "max_epochs": "40", "resamples": "200"},
    "batch_sweep": {"sizes": "[300, 1000]", "seeds": "3", "widths": "[16]", "large_floor": "100",
                    "max_epochs": "40", "target_train_loss": "0.3", "sharpness_subsample": "200", "probe_n": "200"},
    "pacbayes_link": {"networks": "8", "n": "200", "widths": "[16, 16]", "max_epochs": "40", "resamples": "200"},
}


def _toc_files() -> set[str]:
    toc = yaml.safe_load((report.ROOT / "_toc.yml").read_text())
    files = {toc["root"]}
    stack = list(toc.get("chapters", [])) + [c for p in toc.get("parts", []) for c in p.get("chapters", [])]
    while stack:
        entry = stack.pop()
        files.add(entry["file"])
        stack.extend(entry.get("sections", []))
    return files


def test_every_chapter_has_smoke_parameters_and_is_published():
    assert set(runner.chapters()) == set(SMOKE)
    published = {r.chapter for r in runner.PUBLISHED}
    assert set(runner.chapters()) <= published


@pytest.mark.parametrize("chapter", sorted(SMOKE))
def test_chapter_smoke_run(chapter, tmp_path):
    summary = runner.run(chapter, SMOKE[chapter], out=tmp_path / chapter, progress=False)
    assert (tmp_path / chapter / f"{chapter}.ipynb").is_file()
    assert summary["headline"], "a chapter must report headline numbers"
    for row in summary["scoreboard"]:
        assert row["verdict"] in report.VERDICTS


@pytest.mark.parametrize("run", runner.PUBLISHED, ids=lambda r: r.folder or r.chapter)
def test_published_run_has_executed_notebook_summary_and_toc_entry(run):
    notebook = run.out_dir / f"{run.chapter}.ipynb"
    assert notebook.is_file() and (run.out_dir / report.SUMMARY_NAME).is_file()
    assert str(notebook.relative_to(runner.BOOK).with_suffix("")) in _toc_files()


def test_toc_symlink_points_at_the_root_toc():
    link = report.ROOT / "book" / "_toc.yml"
    assert link.is_symlink() and link.resolve() == (report.ROOT / "_toc.yml").resolve()


def test_committed_scoreboard_is_generated_from_the_summaries():
    assert scoreboard.current() == scoreboard.render(), "run `python -m flatlib scoreboard` and commit"


def test_book_builds_with_warnings_as_errors(tmp_path):
    jb = Path(sys.executable).parent / "jupyter-book"
    out = subprocess.run([str(jb), "build", "-W", "-n", "--keep-going", "book/", "--path-output", str(tmp_path)],
                         cwd=report.ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "_build" / "html" / "intro.html").is_file()
