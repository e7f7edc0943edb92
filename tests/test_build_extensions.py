"""The book's local Sphinx extensions (book/_ext), tested without a build."""
import sys
from pathlib import Path

import pytest

from flatlib import report

sys.path.insert(0, str(report.ROOT / "book" / "_ext"))
import bibstyle  # noqa: E402
import mathjax  # noqa: E402
import source_archive  # noqa: E402


def test_without_npm_a_missing_mathjax_is_one_error_that_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(mathjax.shutil, "which", lambda name: None)
    with pytest.raises(mathjax.MathJaxMissing, match="npm is not installed"):
        mathjax.ensure(tmp_path / "mathjax")
    (tmp_path / "present").mkdir()
    (tmp_path / "present" / mathjax.ENTRY).write_text("")
    assert mathjax.ensure(tmp_path / "present") is False  # already there: nothing fetched


@pytest.mark.parametrize("remote, page", [
    ("git@github.com:owner/flat-minima.git", "https://github.com/owner/flat-minima"),
    ("https://github.com/owner/flat-minima.git", "https://github.com/owner/flat-minima"),
    ("https://token@gitlab.com/group/sub/repo", "https://gitlab.com/group/sub/repo"),
    ("ssh://git@github.com/owner/repo.git", "https://github.com/owner/repo"),
    ("/srv/git/repo.git", None), (None, None),
])
def test_a_remote_gives_the_web_page_of_its_repository(remote, page):
    assert source_archive.web_address(remote) == page


def test_the_bibtex_of_a_chapter_escapes_its_title_and_names_the_commit(monkeypatch):
    monkeypatch.setitem(source_archive.SOURCE, "commit", "0123456789abcdef")
    monkeypatch.setitem(source_archive.SOURCE, "remote", None)
    text = source_archive.bibtex("Weakness & sharpness: 100% of C2_x", "atlas/atlas", "A team", "2026")
    assert text.startswith("@incollection{flatminima2026_atlas,")
    assert r"Weakness \& sharpness: 100\% of C2\_x" in text and "commit 0123456789ab" in text
    assert "howpublished" not in text  # no remote: no address


def test_bibliography_labels_read_author_and_year():
    from pybtex.database import parse_string

    entries = parse_string(r"""
        @article{a, author = {Hochreiter, Sepp and Schmidhuber, J{\"u}rgen}, year = {1997}}
        @article{b, author = {P{\'e}rez-Ortiz, Mar{\'i}a and Rivasplata, Omar and Shawe-Taylor, John}, year = {2021}}
        @misc{c, author = {Bennett, Michael Timothy}, year = {2026}}
        @misc{d, author = {Dziugaite, G. and Roy, D. and X, Y}, year = {2020}}
        @misc{e, author = {Dziugaite, G. and Drouin, A. and Z, Z}, year = {2020}}
    """, "bibtex").entries
    labels = list(bibstyle.AuthorYearLabels().format_labels(entries.values()))
    assert labels == ["Hochreiter & Schmidhuber 1997", "P\u00e9rez-Ortiz et al. 2021", "Bennett 2026",
                      "Dziugaite et al. 2020a", "Dziugaite et al. 2020b"]


def test_the_extensions_are_the_ones_the_book_loads():
    import yaml

    config = yaml.safe_load((report.ROOT / "_config.yml").read_text())
    loaded = config["sphinx"]["local_extensions"]
    assert {"mathjax", "source_archive", "bibstyle"} <= set(loaded)
    assert all(Path(report.ROOT / path, f"{name}.py").is_file() for name, path in loaded.items())
    assert config["sphinx"]["config"]["bibtex_default_style"] == "flatbook"
