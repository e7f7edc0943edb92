"""A local Sphinx extension: the source one click away from every page.

At each build it records the commit the site is built from and, when the repository has one,
the address of its ``origin`` remote (none is fine: then nothing links to it). It then

- writes ``source.tar.gz`` (``git archive`` of the commit's tracked files) into the site's root
  when the build finishes, so that a reader can download exactly the code the site came from;
- adds the repository and issues buttons to the page header when the remote is known;
- links a commit written ``{commit}`<sha>``` (the provenance of each chapter) to the commit's
  page at the remote, and shows it as code otherwise;
- renders ``{source-links}`` (a directive) as a paragraph with the archive and the repository;
- ends the landing page and each chapter with a "Cite this" box with BibTeX.

Outside a git checkout (an unpacked source archive, say) there is no commit: no archive and no
links, and the build goes on.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive

ROOT = Path(__file__).resolve().parents[2]
ARCHIVE = "source.tar.gz"
SOURCE: dict[str, str | None] = {"commit": None, "remote": None}


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def web_address(remote: str | None) -> str | None:
    """The web page of a git remote: ``git@github.com:owner/repo.git`` and
    ``https://github.com/owner/repo.git`` both give ``https://github.com/owner/repo``; a local
    path or another scheme gives None."""
    if not remote:
        return None
    found = re.match(r"^(?:git@|ssh://git@)([^:/]+)[:/](.+?)(?:\.git)?/?$", remote) or \
        re.match(r"^https?://(?:[^@/]+@)?([^/]+)/(.+?)(?:\.git)?/?$", remote)
    return f"https://{found.group(1)}/{found.group(2)}" if found else None


def _on_config(app, config):
    SOURCE["commit"] = _git("rev-parse", "HEAD")
    SOURCE["remote"] = web_address(_git("remote", "get-url", "origin")) if SOURCE["commit"] else None
    options = config.html_theme_options
    # one search box, in the sidebar: no header bar that holds only a second one
    options["navbar_persistent"] = []
    if SOURCE["remote"]:
        branch = _git("rev-parse", "--abbrev-ref", "HEAD")
        options.update(repository_url=SOURCE["remote"], use_repository_button=True,
                       use_issues_button="github.com" in SOURCE["remote"], path_to_docs="book",
                       repository_branch=branch if branch and branch != "HEAD" else "main")


def _archive(app, exception):
    if exception is not None or app.builder.format != "html" or not SOURCE["commit"] or \
            not app.config.flatbook_source_archive:
        return
    out = Path(app.outdir) / ARCHIVE
    done = subprocess.run(["git", "archive", "--format=tar.gz", f"--prefix=flat-minima-{SOURCE['commit'][:12]}/",
                           "-o", str(out), SOURCE["commit"]], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        from sphinx.util import logging

        logging.getLogger(__name__).warning(f"git archive failed, so the site has no {ARCHIVE}: {done.stderr.strip()}")


def _to_root(docname: str) -> str:
    return "../" * docname.count("/")


def commit_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    """``{commit}`<sha>[-dirty]``: the commit's first 12 characters as code, linked to its page at
    the remote when one is known."""
    sha, _, dirty = text.strip().partition("-")
    shown = nodes.literal(text=sha[:12] + (f" ({dirty})" if dirty else ""))
    if not SOURCE["remote"] or not re.fullmatch(r"[0-9a-f]{7,40}", sha):
        return [shown], []
    link = nodes.reference(rawtext, "", refuri=f"{SOURCE['remote']}/commit/{sha}", internal=False)
    link += shown
    return [link], []


def _links(docname: str) -> nodes.paragraph:
    """The archive of this build and, when known, the repository, as one paragraph."""
    para = nodes.paragraph()
    if not SOURCE["commit"]:
        para += nodes.Text("This copy of the site was not built from a git checkout, so it carries no source archive.")
        return para
    para += nodes.Text("The source of this site: ")
    archive = nodes.reference("", "", refuri=_to_root(docname) + ARCHIVE, classes=["source-archive"])
    archive += nodes.Text(ARCHIVE)
    para += archive
    para += nodes.Text(f" (every tracked file at commit {SOURCE['commit'][:12]})")
    if SOURCE["remote"]:
        para += nodes.Text("; the repository: ")
        para += nodes.reference("", SOURCE["remote"], refuri=SOURCE["remote"], internal=False)
    para += nodes.Text(".")
    return para


class SourceLinks(Directive):
    """``{source-links}``: the paragraph of :func:`_links` for the page it is on."""

    has_content = False

    def run(self):
        return [_links(self.state.document.settings.env.docname)]


def _escape(text: str) -> str:
    return re.sub(r"([&%$#_{}])", r"\\\1", text)


def bibtex(title: str, docname: str, author: str, year: str) -> str:
    """BibTeX for a page: the book itself for the landing page, a chapter of it otherwise."""
    commit = SOURCE["commit"][:12] if SOURCE["commit"] else "unknown"
    where = f"  howpublished = {{\\url{{{SOURCE['remote']}}}}},\n" if SOURCE["remote"] else ""
    note = f"Executable replication of Bennett, arXiv:2605.05209; built from commit {commit}"
    if docname == "intro":
        return (f"@misc{{flatminima{year},\n  title = {{{_escape(title)}}},\n  author = {{{{{_escape(author)}}}}},\n"
                f"  year = {{{year}}},\n{where}  note = {{{note}}}\n}}")
    key = re.sub(r"[^a-z0-9]+", "_", docname.split("/")[0].lower())
    return (f"@incollection{{flatminima{year}_{key},\n  title = {{{_escape(title)}}},\n"
            f"  booktitle = {{Flat minima, revisited}},\n  author = {{{{{_escape(author)}}}}},\n"
            f"  year = {{{year}}},\n{where}  note = {{{note}}}\n}}")


def _cite_box(app, doctree):
    from flatlib import runner

    docname = app.env.docname
    chapters = {f"{run.folder}/{run.notebook.stem}" for run in runner.published()}
    if docname != "intro" and docname not in chapters:
        return
    section = doctree.next_node(nodes.section)
    title = section.next_node(nodes.title).astext() if section is not None else app.config.project
    year = re.search(r"\d{4}", app.config.copyright or "")
    box = nodes.admonition(classes=["cite-this", "dropdown"])
    box += nodes.title(text="Cite this")
    box += nodes.paragraph(text="This book as a whole:" if docname == "intro" else "This chapter:")
    box += nodes.literal_block(text=bibtex(title, docname, app.config.author, year.group(0) if year else ""),
                               language="bibtex")
    box += _links(docname)
    (section or doctree).append(box)


def _outdated(app, env, added, changed, removed):
    # the commit is not a file the build tracks: every page that shows it is read afresh
    from flatlib import runner

    pages = {"intro", "rerun", *(f"{run.folder}/{run.notebook.stem}" for run in runner.published())}
    return [docname for docname in pages if docname in env.found_docs]


def setup(app):
    # off for a page of one run (flatlib.runner.page), which needs the commit links, not the archive
    app.add_config_value("flatbook_source_archive", True, "html")
    app.connect("config-inited", _on_config)
    app.connect("env-get-outdated", _outdated)
    app.connect("doctree-read", _cite_box)
    app.connect("build-finished", _archive)
    app.add_role("commit", commit_role)
    app.add_directive("source-links", SourceLinks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
