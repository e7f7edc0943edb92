"""A local Sphinx extension: the build brings its own MathJax, so that `jupyter-book build book/`
renders mathematics on a fresh clone and in an offline copy of the site.

MathJax 3.2.2 (npm's ``mathjax`` package) is served from the site itself: ``book/_extra/mathjax/``
(not in git), which ``html_extra_path`` copies to the site's root and ``mathjax_path`` points at.
When it is missing, the build unpacks it there from npm, before Sphinx checks the extra path;
without npm it stops with one error that says what to install. ``make mathjax`` runs the same
recipe (``python book/_ext/mathjax.py``).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "3.2.2"
TARGET = Path(__file__).resolve().parent.parent / "_extra" / "mathjax"
ENTRY = "tex-mml-chtml.js"


class MathJaxMissing(RuntimeError):
    """MathJax is not unpacked and cannot be fetched here."""


def ensure(target: Path = TARGET) -> bool:
    """Unpack npm's mathjax@VERSION (its ``es5`` folder) into ``target`` unless it is there;
    True when it was fetched now."""
    if (target / ENTRY).is_file():
        return False
    npm = shutil.which("npm")
    if npm is None:
        raise MathJaxMissing(f"MathJax is not in {target} and npm is not installed to fetch it: install npm "
                             "(`make sysdeps` does, with apt-get), or unpack the `es5` folder of npm's "
                             f"mathjax@{VERSION} there yourself.")
    with tempfile.TemporaryDirectory() as tmp:
        packed = subprocess.run([npm, "pack", "--silent", f"mathjax@{VERSION}"], cwd=tmp, capture_output=True,
                                text=True, timeout=600)
        tarball = Path(tmp) / f"mathjax-{VERSION}.tgz"
        if packed.returncode != 0 or not tarball.is_file():
            raise MathJaxMissing(f"`npm pack mathjax@{VERSION}` failed (is the npm registry reachable?): "
                                 f"{packed.stderr.strip()[-500:]}")
        with tarfile.open(tarball) as archive:
            archive.extractall(tmp, filter="data")
        staged = target.with_name(target.name + ".partial")
        shutil.rmtree(staged, ignore_errors=True)
        staged.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(Path(tmp) / "package" / "es5", staged)
        shutil.rmtree(target, ignore_errors=True)
        staged.rename(target)
    return True


def _on_config(app, config):
    from sphinx.errors import ExtensionError
    from sphinx.util import logging

    try:
        if ensure():
            logging.getLogger(__name__).info(f"MathJax {VERSION} unpacked into {TARGET}")
    except MathJaxMissing as exc:
        raise ExtensionError(str(exc)) from None


def setup(app):
    # before Sphinx's own check of html_extra_path (config-inited, priority 800)
    app.connect("config-inited", _on_config, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    try:
        print(f"MathJax {VERSION}: " + ("unpacked into " if ensure() else "already in ") + str(TARGET))
    except MathJaxMissing as exc:
        sys.exit(f"error: {exc}")
