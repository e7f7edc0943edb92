"""The book's one figure style (``flatlib.plots``, which re-exports it): the colours of the measure
families, figures sized for the book's column (``figure``), the check that no text is too small
or overlaps (``check``), and saving and publishing a figure with its metadata (``savefig``,
``publish``). The module docstring of ``flatlib.plots`` explains the sizes.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

# Chapters run headless under papermill and in CI.
if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "agg"):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

# Colour per measure family, used by every chapter so a reader learns it once.
FAMILY_COLORS = {
    "sharpness": "#c44e52",
    "weakness": "#4c72b0",
    "simplicity": "#55a868",
    "bound": "#8172b2",
    "margin": "#dd8452",
    "generalisation": "#333333",
}

CSS_PX_PER_INCH = 96
DPI = 2 * CSS_PX_PER_INCH
COLUMN_PX = 672  # a figure's width in the book's column at a 1280-px window (Chromium, measured)
MIN_TEXT_PX = 9  # the smallest text a figure may show at that width
MAX_LEGEND_ENTRIES = 8  # more, and a reader matches colours instead of reading: label directly, or split
# Inches: a full-width figure fills the column; a single panel is narrower, so that on a phone
# (a 342-px column) it shrinks less.
WIDTH_IN = {"single": 4.8, "row": COLUMN_PX / CSS_PX_PER_INCH, "grid": COLUMN_PX / CSS_PX_PER_INCH}
HEIGHT_IN = {"single": 3.3, "row": 3.0, "grid": 2.6}  # a grid's is per row of panels
FONTS = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
         "legend.fontsize": 9, "legend.title_fontsize": 9, "figure.titlesize": 11, "figure.labelsize": 10}
METADATA_KEY = "flatbook"


def style() -> None:
    """Apply the book's style: seaborn's white grid with the book's font sizes (``FONTS``)."""
    sns.set_theme(context="paper", style="whitegrid")
    plt.rcParams.update({**FONTS, "figure.dpi": 96, "savefig.dpi": DPI,
                         "axes.spines.top": False, "axes.spines.right": False,
                         # tick labels carry their own values: no "1e-7+9.99e-1" offset over an axis,
                         # and from 10^4 up a "x10^4" beside the axis, not six digits per tick
                         "axes.formatter.useoffset": False, "axes.formatter.limits": (-3, 4),
                         "axes.formatter.use_mathtext": True, "legend.frameon": False})


def figure(kind: str = "single", nrows: int = 1, ncols: int = 1, height: float | None = None, **subplots):
    """A figure of one of the book's kinds and its axes (``plt.subplots`` with constrained layout):
    ``single``, one panel 4.8 inches wide; ``row``, panels side by side across the column;
    ``grid``, rows of panels across the column. ``height`` (inches, the whole figure) overrides the
    kind's default; other keywords go to ``plt.subplots``."""
    if kind not in WIDTH_IN:
        raise ValueError(f"figure kind {kind!r}: choose one of {sorted(WIDTH_IN)}")
    tall = HEIGHT_IN[kind] * (nrows if kind == "grid" else 1) if height is None else height
    return plt.subplots(nrows, ncols, figsize=(WIDTH_IN[kind], tall), layout="constrained", **subplots)


def _tick_labels(axis, drawn: bool = True) -> list:
    """The tick labels of ``axis`` (major and minor) with text; with ``drawn``, only those of ticks
    inside the view, which are the ones drawn (matplotlib keeps labels for ticks beyond it)."""
    low, high = sorted(axis.get_view_interval())
    slack = 1e-9 * max(abs(low), abs(high), 1e-300)
    found = []
    for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
        inside = tick.get_loc() is not None and low - slack <= tick.get_loc() <= high + slack
        for label in (tick.label1, tick.label2):
            if label.get_visible() and label.get_text().strip() and (inside or not drawn):
                found.append(label)
    return found


def _texts(fig, renderer):
    """The figure's drawn texts, each with its extent and the panel it belongs to (None for the
    figure's own): visible, non-empty, inside the figure."""
    from matplotlib.text import Text

    box = fig.bbox
    owners, undrawn = {}, set()
    for ax in fig.axes:
        for text in ax.findobj(Text):
            owners.setdefault(id(text), ax)
        for axis in (ax.xaxis, ax.yaxis):
            undrawn |= {id(t) for t in _tick_labels(axis, drawn=False)} - {id(t) for t in _tick_labels(axis)}
    found = []
    for text in fig.findobj(Text):
        owner = owners.get(id(text))
        if owner is not None and not owner.get_visible() or not text.get_visible() or not text.get_text().strip() \
                or id(text) in undrawn:
            continue
        extent = text.get_window_extent(renderer)
        if extent.width > 0 and extent.x1 > box.x0 and extent.x0 < box.x1 and extent.y1 > box.y0 and extent.y0 < box.y1:
            found.append((text, extent, owner))
    return found


def _run_together(labels, renderer, axis: str) -> bool:
    """Whether neighbouring tick labels of one axis print into each other. Upright labels overlap
    when their boxes do; rotated ones when the distance between neighbours across the direction
    of the text is less than the text's height (their boxes overlap without the glyphs touching)."""
    labels = [t for t in labels if t.get_visible() and t.get_text().strip()]
    extents = [t.get_window_extent(renderer) for t in labels]
    angle = np.deg2rad(labels[0].get_rotation()) if labels else 0.0
    if abs(np.sin(angle)) < 1e-3 or abs(np.cos(angle)) < 1e-3 and axis == "y":
        # upright neighbours need a gap of a fifth of the type size, or "-1.00-0.75" reads as one number
        gap = 0.2 * labels[0].get_fontsize() * renderer.points_to_pixels(1.0) if labels else 0.0
        ordered = sorted(extents, key=lambda e: e.x0 if axis == "x" else e.y0)
        for a, b in zip(ordered, ordered[1:]):
            if axis == "x" and b.x0 - a.x1 < gap and min(a.y1, b.y1) > max(a.y0, b.y0) or \
                    axis == "y" and b.y0 - a.y1 < gap and min(a.x1, b.x1) > max(a.x0, b.x0):
                return True
        return False
    height = labels[0].get_fontsize() * renderer.points_to_pixels(1.0)
    along = [(e.x0 + e.x1) / 2 if axis == "x" else (e.y0 + e.y1) / 2 for e in extents]
    spacing = np.diff(sorted(along))
    across = np.abs(spacing * (np.sin(angle) if axis == "x" else np.cos(angle)))
    return bool(len(across) and across.min() < 0.95 * height)


def check(fig) -> dict:
    """What a reader meets in ``fig``, measured on the drawn figure: every font size used (points),
    the largest legend, and problems: a legend over ``MAX_LEGEND_ENTRIES`` entries, tick labels of
    one axis that run into each other, text that prints over another panel. (How small the text is
    in the book's column depends on the saved size: :func:`metadata`.)"""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = _texts(fig, renderer)
    fonts = sorted({round(float(t.get_fontsize()), 2) for t, _, _ in texts})
    legends = [legend for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes)] if legend is not None]
    entries = max((len(legend.texts) for legend in legends), default=0)
    problems = []
    if entries > MAX_LEGEND_ENTRIES:
        problems.append(f"a legend of {entries} entries (at most {MAX_LEGEND_ENTRIES}: label directly or split)")
    for ax in fig.axes:
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            if _run_together(_tick_labels(axis), renderer, name):
                problems.append(f"{name} tick labels run into each other on the panel titled {ax.get_title()!r}")
    upright = [(t, e) for t, e, _ in texts if abs(np.sin(np.deg2rad(t.get_rotation()))) < 1e-3]
    for i, (a, box_a) in enumerate(upright):
        for b, box_b in upright[i + 1:]:
            if min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0) > 1.5 and \
                    min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0) > 1.5:
                problems.append(f"{a.get_text()!r} prints over {b.get_text()!r}")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    for text, extent, owner in texts:
        for ax in panels:
            if ax is owner:
                continue
            inner = ax.get_window_extent(renderer)
            if min(extent.x1, inner.x1) - max(extent.x0, inner.x0) > 2 and \
                    min(extent.y1, inner.y1) - max(extent.y0, inner.y0) > 2:
                problems.append(f"{text.get_text()!r} prints over the panel titled {ax.get_title()!r}")
                break
    return {"fonts_pt": fonts, "legend_entries": entries, "problems": problems}


def shown_px(points: float, width_px: int, dpi: float = DPI) -> float:
    """The CSS pixel height of ``points``-point text of a PNG ``width_px`` wide saved at ``dpi``, as
    the book's column shows it: at its natural CSS size (``width_px * CSS_PX_PER_INCH / dpi``) up
    to ``COLUMN_PX``, shrunk to the column beyond."""
    natural = width_px * CSS_PX_PER_INCH / dpi
    return points * CSS_PX_PER_INCH / 72 * min(1.0, COLUMN_PX / natural)


def _si(value: float, _position=None) -> str:
    """A tick label for a large value: 120k, 1.5M, with a true minus sign."""
    size = abs(value)
    for power, suffix in ((9, "G"), (6, "M"), (3, "k")):
        if size >= 10 ** power:
            return f"{value / 10 ** power:g}{suffix}".replace("-", "\u2212")
    return f"{value:g}".replace("-", "\u2212")


def _compact_large_ticks(fig) -> None:
    """Axes whose tick labels need a "x10^4" multiplier (values of 10^4 and more) are labelled
    120k, 1.5M instead: a multiplier at the end of an axis is easily missed, and lands on the
    axis label."""
    from matplotlib.ticker import FuncFormatter, ScalarFormatter

    fig.canvas.draw()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if isinstance(axis.get_major_formatter(), ScalarFormatter) and axis.get_offset_text().get_text() \
                    and max(abs(v) for v in axis.get_view_interval()) >= 1e4:
                axis.set_major_formatter(FuncFormatter(_si))


def _no_minor_log_labels(fig) -> None:
    """A log axis spanning less than a decade labels its minor ticks (2x10^1, 3x10^1, ...), which
    run into each other in a third of the column: keep the major labels only."""
    from matplotlib.ticker import NullFormatter

    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                axis.set_minor_formatter(NullFormatter())


def savefig(fig, out_dir: str | Path, name: str) -> Path:
    """Save ``fig`` as ``out_dir/name.png`` (the chapter's output folder) at ``DPI`` and return the
    path. The PNG carries what :func:`check` measured, under the text key ``flatbook`` (read it back
    with :func:`metadata`), so a test can check a chapter's figures without drawing them again."""
    _no_minor_log_labels(fig)
    _compact_large_ticks(fig)
    measured = check(fig)
    path = Path(out_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.04,
                metadata={METADATA_KEY: json.dumps({"dpi": DPI, **measured}, sort_keys=True)})
    return path


def metadata(path: str | Path) -> dict:
    """What :func:`savefig` recorded in a PNG, with its pixel size and the CSS size of its smallest
    text in the book's column (``min_text_px``); an empty dict for a PNG saved otherwise."""
    from PIL import Image

    with Image.open(path) as image:
        raw = image.text.get(METADATA_KEY)
        width, height = image.size
    if raw is None:
        return {}
    found = json.loads(raw)
    smallest = min(found["fonts_pt"], default=None)
    return {**found, "width_px": width, "height_px": height,
            "min_text_px": None if smallest is None else shown_px(smallest, width, found["dpi"])}


def publish(fig, out_dir: str | Path, name: str, glue_as: str | None = None):
    """Save ``fig`` (:func:`savefig`), close it, and return the saved file as an image the page
    shows at its natural size; with ``glue_as``, also glue it under that name for a
    ``{glue:figure}``, so that the page shows exactly the file a reader downloads."""
    from IPython.display import Image

    path = savefig(fig, out_dir, name)
    plt.close(fig)
    width = metadata(path)["width_px"]
    image = Image(filename=str(path), width=round(width * CSS_PX_PER_INCH / DPI))
    if glue_as is not None:
        from myst_nb import glue

        glue(glue_as, image, display=False)
    return image
