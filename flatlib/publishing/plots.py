"""One figure style for the whole book, sized for its column, and one way to publish a figure.

Every chapter draws through this module: :func:`figure` makes a figure of one of a few kinds,
each sized for the book's column; the chapter-specific drawings below fill it; :func:`publish`
saves it beside the chapter's summary and glues the saved file into the page, so the page shows
exactly the file a reader downloads, at the size the fonts were chosen for.

Sizes. At a 1280-px window the book's column (sphinx-book-theme 1.3) shows a figure 672 CSS px
wide: 7 inches at 96 CSS px per inch. A figure is saved at ``DPI`` = 192 dots per inch, twice
the CSS resolution (sharp on high-density screens), and shown at half its pixel width, so one
typographic point of the figure is 96/72 = 1.33 CSS px on the page: the 9-point tick labels are
12 px. A figure wider than the column is shrunk to it, and its text with it; :func:`check` and
the metadata :func:`savefig` writes say how small the smallest text then is.
"""
from __future__ import annotations

import matplotlib

# Chapters run headless under papermill and in CI.
if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "agg"):
    matplotlib.use("Agg")


from flatlib.publishing.figures_claims import (  # noqa: E402, F401 (re-exported, after the backend is chosen)
    KIND_COLORS,
    REGIME_COLORS,
    SCORE_TITLES,
    atlas_across,
    atlas_within,
    certificates_against_error,
    effects_grid,
    estimators_against_exact,
    forest,
    interpolators_benign,
    learner_scores,
    placeholder,
    regularised_sharpness,
    reparameterisation,
    separation_bars,
)
from flatlib.publishing.figures_landscape import (  # noqa: E402, F401 (re-exported, after the backend is chosen)
    batch_gap,
    batch_measures,
    contour,
    paths,
    ranks_by_family,
    scatter_row,
    slices,
    slices_1d,
    slices_2d,
    spectra,
    spectrum,
    wrapped_label,
)
from flatlib.publishing.plot_style import (  # noqa: E402, F401 (re-exported, after the backend is chosen)
    COLUMN_PX,
    CSS_PX_PER_INCH,
    DPI,
    FAMILY_COLORS,
    FONTS,
    HEIGHT_IN,
    MAX_LEGEND_ENTRIES,
    METADATA_KEY,
    MIN_TEXT_PX,
    WIDTH_IN,
    check,
    figure,
    metadata,
    publish,
    savefig,
    shown_px,
    style,
)

