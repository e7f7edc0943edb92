"""A local Sphinx extension: each page loads each script once.

sphinx-thebe (a Jupyter Book 1 default) adds its configuration script to every page twice,
which a browser reports as "Identifier 'THEBE_JS_URL' has already been declared".
"""


def _dedupe(app, pagename, templatename, context, doctree):
    seen, kept = set(), []
    for script in context.get("script_files", []):
        # an inline script is registered with filename None by one extension and "" by another
        key = (str(getattr(script, "filename", script) or ""), repr(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    if "script_files" in context:
        context["script_files"][:] = kept


def setup(app):
    # early: emit_firstresult stops at the first handler that returns a template name
    app.connect("html-page-context", _dedupe, priority=1)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
