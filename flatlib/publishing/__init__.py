"""Publishing: from a chapter's results to the site.

``runner`` (the chapter manifest, papermill runs, staleness), ``params`` (chapter parameters and
their constraints), ``report`` (a chapter's summary.json), ``claims`` (the paper's figures and
every verdict rule), ``stability``, ``scoreboard``, ``compare`` and ``plots``. It may import every
other sub-package; nothing below imports it.
"""
