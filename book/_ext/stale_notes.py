"""A local Sphinx extension: the page of a stale chapter says so, at build time.

A published run is stale when a version of a computation its numbers used has changed since it
ran (``flatlib.runner.stale``). Its page then opens with a note, made by this build from the
code on hand, saying what changed and the command that re-runs it; the scoreboard shows its claim
as "re-run pending" (``flatlib.scoreboard``). Staleness depends on the code, not on the page, so
every chapter page is read afresh at each build.
"""
from docutils import nodes

STALE: dict[str, tuple[str, str]] = {}  # docname -> (why, the command that re-runs it)


def _pages():
    from flatlib import runner

    return {f"{run.folder}/{run.notebook.stem}": run for run in runner.published()}


def _find_stale(app):
    from flatlib import runner

    reasons = runner.stale()
    STALE.clear()
    STALE.update({docname: (reasons[run.folder], runner.rerun_command(run))
                  for docname, run in _pages().items() if run.folder in reasons})


def _outdated(app, env, added, changed, removed):
    return [docname for docname in _pages() if docname in env.found_docs]


def _note(app, doctree):
    found = STALE.get(app.env.docname)
    if not found:
        return
    why, command = found
    note = nodes.admonition(classes=["warning", "stale-note"])
    note += nodes.title(text="Re-run pending")
    note += nodes.paragraph(text="The numbers on this page came from code that has changed in a way that can change "
                                 f"them: {why}. Its verdict waits for a re-run, which is this command:")
    note += nodes.literal_block(text=command, language="bash")
    section = doctree.next_node(nodes.section)
    (section or doctree).insert(1 if section is not None else 0, note)


def setup(app):
    app.connect("builder-inited", _find_stale)
    app.connect("env-get-outdated", _outdated)
    app.connect("doctree-read", _note)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
