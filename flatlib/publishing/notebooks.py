"""An executed chapter notebook made ready for the site (``tidy``: tags, the provenance cell, the
parameters table) and a web page of one run (``page``). Part of ``flatlib.runner``, which
re-exports it.
"""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat

from flatlib.publishing import report
from flatlib.publishing.manifest import ChapterError


def tidy(notebook: Path, source: Path, final: Path, overrides: dict | None = None, summary: dict | None = None,
         rerun: str | None = None) -> None:
    """Make the executed notebook a stable document: name the source and the final location
    (relative to the repository when inside it) instead of the scratch folder; drop per-cell
    timings and give cells ids from their position, so a re-run with unchanged numbers changes
    no line; on the site, fold every code cell behind a toggle (its outputs stay) and show the
    parameters once, as a table of the values this run used. A run with ``overrides`` (the
    Fashion-MNIST page of a chapter published twice) names them in its title, so that its page
    and its entry in search differ from the default run's. With ``summary``, the page ends with
    its provenance (``_provenance``) and links to download the files beside it."""
    def shown(path: Path) -> str:
        return os.path.relpath(path, report.ROOT) if path.is_relative_to(report.ROOT) else str(path)

    nb = nbformat.read(notebook, as_version=4)
    meta = nb.metadata.setdefault("papermill", {})
    meta.update(input_path=shown(source), output_path=shown(final))
    for key in ("start_time", "end_time", "duration"):
        meta.pop(key, None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    nb.cells = [c for c in nb.cells if "parameters-table" not in c.metadata.get("tags", [])]
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = list(cell.metadata.get("tags", []))
        if {"parameters", "injected-parameters"} & set(tags):
            tags = [*dict.fromkeys([*tags, "remove-cell"])]  # shown once, as the table below
        elif not {"remove-cell", "remove-input", "hide-input"} & set(tags):
            tags.append("hide-input")  # code folded behind a toggle; its outputs are the page
        cell.metadata["tags"] = tags
    used = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])] or \
        [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if used:
        at = nb.cells.index(used[-1]) + 1
        nb.cells.insert(at, nbformat.v4.new_markdown_cell(_parameters_table(used[-1].source),
                                                          metadata={"tags": ["parameters-table"]}))
    nb.cells = [c for c in nb.cells if "provenance" not in c.metadata.get("tags", [])]
    if summary is not None:
        files = sorted(p.name for p in notebook.parent.iterdir()
                       if p.suffix in (".csv", ".json") and p.is_file())
        nb.cells.append(nbformat.v4.new_markdown_cell(_provenance(summary, files, rerun),
                                                      metadata={"tags": ["provenance"]}))
    if overrides:
        _suffix_labels(nb, overrides)
        suffix = " (" + ", ".join(f"{k} = {v}" for k, v in overrides.items()) + ")"
        for cell in nb.cells:
            if cell.cell_type == "markdown" and cell.source.startswith("# "):
                title, _, rest = cell.source.partition("\n")
                if not title.endswith(suffix):
                    cell.source = title + suffix + ("\n" + rest if rest else "")
                break
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"
    nbformat.write(nb, notebook)


def _suffix_labels(nb, overrides: dict) -> None:
    """Give every label a page defines (``:name:`` of a figure or table) a suffix from
    ``overrides``, and every reference to it on the page the same, so that a chapter published
    twice (once per dataset) defines each label once in the book."""
    suffix = "-" + re.sub(r"[^a-z0-9]+", "-", "-".join(str(v) for v in overrides.values()).lower()).strip("-")
    markdown = [c for c in nb.cells if c.cell_type == "markdown"]
    names = {m for c in markdown for m in re.findall(r"^:name:\s*(\S+)\s*$", c.source, flags=re.M)}
    names = {n for n in names if not n.endswith(suffix)}
    if not names:
        return
    alternatives = "|".join(map(re.escape, names))
    pattern = re.compile(r"(^:name:\s*|\{(?:numref|ref)\}`(?:[^`<]*<)?)(" + alternatives + r")(?=\s*$|>?`)", flags=re.M)
    for cell in markdown:
        cell.source = pattern.sub(lambda m: m.group(1) + m.group(2) + suffix, cell.source)


def _provenance(summary: dict, files: list[str], rerun: str | None) -> str:
    """The provenance of a run, from its summary, as Markdown: when and where it ran, the code
    and libraries, the data, the command that re-runs it, and the files to download. The commit is
    written ``{commit}`<sha>```, which the site links to the repository when it knows one."""
    commit = summary.get("git_commit")
    data = "; ".join(f"{name}: " + ", ".join(f"`{f}` {h[:12]}" for f, h in files_.items())
                     for name, files_ in summary.get("data_checksums", {}).items()) or "none"
    versions = ", ".join(f"{k} {v}" for k, v in summary.get("versions", {}).items())
    # the wall time stays in summary.json: on the page it would change a re-run's notebook
    rows = [("run", f"{summary.get('run_date', 'unknown')} (UTC); its wall time is in `summary.json`"),
            ("device", summary.get("device", "unknown")),
            ("code", (f"git {{commit}}`{commit}`" if commit else "git commit unknown")
             + f", flatlib {summary.get('flatlib_version', '?')} "
               f"(source hash `{summary.get('flatlib_source_hash', '?')}`)"),
            ("libraries", versions or f"torch {summary.get('torch_version', '?')}"),
            ("data (SHA-256)", data)]
    if rerun:
        rows.append(("re-run", f"`{rerun}`"))
    listed = "\n".join(f"- **{k}**: {v}" for k, v in rows)
    downloads = ", ".join(f"{{download}}`{name} <{name}>`" for name in files)
    return f"## Provenance\n\n{listed}\n\n" + (f"Downloads: {downloads}." if downloads else "")


def _parameters_table(source: str) -> str:
    """The assignments of a parameters cell as a Markdown table, for the page."""
    rows = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id != "out_dir":  # where the runner put the files, not a parameter
            value = ast.get_source_segment(source, node.value).replace("|", "\\|")
            rows.append(f"| `{node.targets[0].id}` | `{value}` |")
    return "**Parameters of this run**\n\n| parameter | value |\n|---|---|\n" + "\n".join(rows)


PAGE = "page"  # the folder inside a run's output where `page` builds it


def page(out_dir: str | os.PathLike) -> Path:
    """Build a viewable web page of the run in ``out_dir`` (its executed notebook, rendered as the
    site renders a chapter, never executed again) and return the page's path.

    The run's folder is the book's source, so its figures and downloads are where the notebook
    names them; the book's configuration lives in ``out_dir/page/`` (a folder, which the run's seal
    does not cover) with a references page, and the HTML in ``out_dir/page/_build/html/``. MathJax
    is the site's own copy (unpacked from npm when missing), so the page renders its mathematics
    offline; citations resolve against ``book/references.bib``. Links to other chapters of the
    book do not resolve: the page stands alone."""
    import yaml

    out_dir = Path(out_dir).resolve()
    summary_path = out_dir / report.SUMMARY_NAME
    if not summary_path.is_file():
        raise ChapterError(f"{out_dir} holds no {report.SUMMARY_NAME}: it is not the output folder of a run.")
    notebook = out_dir / json.loads(summary_path.read_text()).get("notebook", "")
    if notebook.suffix != ".ipynb" or not notebook.is_file():
        raise ChapterError(f"{out_dir} holds no executed notebook named by its {report.SUMMARY_NAME}.")
    book, ext = report.ROOT / "book", str(report.ROOT / "book" / "_ext")
    config = {
        "title": f"A run of {notebook.stem}", "only_build_toc_files": True,
        "exclude_patterns": [f"{PAGE}/_build/**"],
        "execute": {"execute_notebooks": "off"},
        "bibtex_bibfiles": [str(book / "references.bib")],
        "parse": {"myst_enable_extensions": ["dollarmath", "amsmath", "colon_fence", "deflist"]},
        "sphinx": {"config": {"html_extra_path": [str(book / "_extra")], "mathjax_path": "../mathjax/tex-mml-chtml.js",
                              "html_static_path": [str(book / "_static")], "html_css_files": ["flatbook.css"],
                              "html_js_files": ["enlarge.js"], "bibtex_default_style": "flatbook",
                              "flatbook_source_archive": False, "nb_merge_streams": True,
                              "suppress_warnings": ["mystnb.unknown_mime_type"]},
                   "local_extensions": {"mathjax": ext, "bibstyle": ext, "source_archive": ext}},
    }
    folder = out_dir / PAGE
    folder.mkdir(exist_ok=True)
    (folder / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "_toc.yml").write_text(yaml.safe_dump({"format": "jb-book", "root": notebook.stem,
                                                     "chapters": [{"file": f"{PAGE}/references"}]}, sort_keys=False))
    (folder / "references.md").write_text("# References\n\n```{bibliography}\n```\n")
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    built = subprocess.run([str(jupyter_book if jupyter_book.exists() else "jupyter-book"), "build", str(out_dir),
                            "--config", str(folder / "_config.yml"), "--toc", str(folder / "_toc.yml"),
                            "--path-output", str(folder)], capture_output=True, text=True, timeout=1800)
    html = folder / "_build" / "html" / f"{notebook.stem}.html"
    if built.returncode != 0 or not html.is_file():
        raise ChapterError(f"Building the page of {out_dir} failed:\n{(built.stdout + built.stderr)[-3000:]}")
    return html
