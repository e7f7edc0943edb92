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


# ----------------------------------------------------------------------------- the primer's pictures

def slices(ax, curves: dict, xlabel: str, log: bool = False) -> None:
    """1-D loss slices (``flatlib.landscape.Slice``) on one axis, one line per label, the
    trained weights (step 0) marked."""
    for (label, s), style_ in zip(curves.items(), ("-", "--", ":", "-.")):
        ax.plot(s.steps, s.loss, style_, lw=1.8, label=label)
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set(xlabel=xlabel, ylabel="training loss (nats)", yscale="log" if log else "linear")
    ax.legend()


def contour(ax, s, levels=None, xlabel: str = "direction 1", ylabel: str = "direction 2"):
    """A 2-D slice (``flatlib.landscape.Slice`` with ``steps2``) as filled contours of log10 loss,
    the trained weights marked at the origin. Returns the contour set (for a colour bar)."""
    grid_b, grid_a = np.meshgrid(s.steps2, s.steps)
    filled = ax.contourf(grid_a, grid_b, np.log10(s.loss), levels=levels if levels is not None else 20, cmap="viridis")
    ax.plot([0], [0], marker="*", color="white", markersize=10, markeredgecolor="black")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    return filled


def spectrum(ax, density, top=None) -> None:
    """A Hessian spectral density (``flatlib.hessian.SpectralDensity``) on a log density axis,
    so the bulk near zero and the outliers both show, with the top eigenvalues (Lanczos) as
    ticks along the bottom."""
    ax.plot(density.grid.numpy(), density.density.clamp_min(1e-12).numpy(), color=FAMILY_COLORS["sharpness"], lw=1.5)
    ax.set(yscale="log", xlabel="eigenvalue of the training-loss Hessian", ylabel="density (log scale)")
    floor = max(float(density.density.max()) * 1e-8, 1e-10)
    ax.set_ylim(bottom=floor)
    if top is not None:
        for value in top:
            ax.axvline(float(value), ymax=0.08, color="black", lw=1.2)


def spectra(found: dict):
    """One spectral density per network (``found``: label -> (density, top eigenvalues)), side by side."""
    fig, axes = figure("row", ncols=len(found), sharey=True, height=3.0, squeeze=False)
    for ax, (label, (density, top)) in zip(axes[0], found.items()):
        spectrum(ax, density, top)
        ax.set_title(label)
    for ax in axes[0, 1:]:
        ax.set_ylabel("")
    return fig


def slices_1d(one_d: dict):
    """1-D slices of the network and its twin along a plain (left) and a filter-normalised (right)
    direction (``one_d``: (normalisation, label) -> Slice)."""
    fig, axes = figure("row", ncols=2, height=3.0)
    for ax, normalise, xlabel in ((axes[0], None, "step along a plain unit direction"),
                                  (axes[1], "filter", "step along a filter-normalised direction")):
        slices(ax, {label: s for (norm, label), s in one_d.items() if norm == normalise}, xlabel, log=True)
        ax.set_title("plain" if normalise is None else "filter-normalised")
    return fig


def slices_2d(two_d: dict, labels: list[str]):
    """2-D slices on one colour scale of log10 loss: rows plain and filter-normalised, columns the
    networks (``labels``); ``two_d``: (normalisation, label) -> Slice."""
    low = np.log10(min(float(s.loss.min()) for s in two_d.values()))
    high = np.log10(max(float(s.loss.max()) for s in two_d.values()))
    levels = np.linspace(low, high, 21)
    fig, axes = figure("grid", nrows=2, ncols=len(labels), height=5.6)
    for row, normalise in enumerate((None, "filter")):
        for col, label in enumerate(labels):
            filled = contour(axes[row, col], two_d[normalise, label], levels)
            axes[row, col].set_title(f"{'plain' if normalise is None else 'filter-normalised'}: {label}")
    fig.colorbar(filled, ax=axes, label="log10 training loss", shrink=0.8)
    return fig


def paths(lines: dict, plane, projection):
    """Left: the training loss along straight lines (``lines``: label -> Slice over t). Right: the
    optimisation trajectory (``projection``, ``flatlib.landscape.project_trajectory``) over the loss
    on the plane of its top two principal directions (``plane``, a 2-D Slice)."""
    fig, axes = figure("row", ncols=2, height=3.2)
    for label, path in lines.items():
        axes[0].plot(path.steps, path.loss, lw=1.8, label=label)
    axes[0].axvline(0, color="0.6", lw=0.8)
    axes[0].axvline(1, color="0.6", lw=0.8)
    axes[0].set(yscale="log", xlabel="t (0: first end, 1: second end)", ylabel="training loss (nats)")
    axes[0].legend(loc="lower left", bbox_to_anchor=(0, 1.0))
    filled = contour(axes[1], plane, 20, xlabel=f"PC1 ({projection.explained[0]:.0%} of the path)",
                     ylabel=f"PC2 ({projection.explained[1]:.0%})")
    axes[1].plot(projection.coords[:, 0], projection.coords[:, 1], "o-", color="white", markersize=3, lw=1)
    fig.colorbar(filled, ax=axes[1], label="log10 training loss")
    return fig


def _log_size_axis(ax, sizes) -> None:
    """A log axis of training-set sizes, ticked at the sizes themselves ("2,000", "60,000")."""
    ax.set_xscale("log")
    ax.set_xticks(list(sizes), [f"{int(n):,}" for n in sizes])
    ax.minorticks_off()


# ----------------------------------------------------------------------------- the batch sweep (C4)

def batch_gap(gaps, per_seed, margin: float, paper: dict, title: str):
    """The small-batch minus large-batch test-accuracy gap (pp) against the training-set size:
    each seed's pair as a faint dot, the mean with its 95 % interval, the band of +-``margin``
    (a fraction) within which the gap counts as vanished, and the paper's figures (``paper``:
    n -> pp) as crosses. ``gaps``: ``batchsize.regime_differences``; ``per_seed``:
    ``batchsize.paired`` of test accuracy."""
    fig, ax = figure("single", height=3.4)
    colour = FAMILY_COLORS["generalisation"]
    ax.axhspan(-100 * margin, 100 * margin, color="0.9", label=f"vanished (within \u00b1{100 * margin:.2g} pp)")
    ax.axhline(0, color="0.5", lw=0.8)
    for n in gaps.index:
        diff = 100 * (per_seed.loc[n, "small"] - per_seed.loc[n, "large"])
        ax.scatter(np.full(len(diff), n) * np.exp(np.linspace(-0.06, 0.06, len(diff))), diff, s=8, color=colour,
                   alpha=0.35)
    ax.errorbar(gaps.index, 100 * gaps["difference"],
                yerr=[100 * (gaps["difference"] - gaps["ci_low"]), 100 * (gaps["ci_high"] - gaps["difference"])],
                fmt="o-", color=colour, capsize=4, label="ours (mean, 95% interval)")
    if paper:
        ax.scatter(list(paper), list(paper.values()), marker="x", s=60, color=FAMILY_COLORS["margin"], zorder=5,
                   label="paper")
    _log_size_axis(ax, gaps.index)
    ax.set(xlabel="training-set size n", ylabel="small minus large batch:\ntest accuracy (pp)", title=title)
    ax.legend()
    return fig


def batch_measures(table, sizes, probes_note: str | None = None):
    """Sharpness (top eigenvalue, log axis) and weakness (open labels) of the small- and
    large-batch networks against the training-set size: mean and standard deviation over seeds."""
    import matplotlib.ticker as mticker

    fig, axes = figure("row", ncols=2, height=3.2)
    for ax, (name, family, label) in zip(axes, [("top_eigenvalue", "sharpness", "top Hessian eigenvalue"),
                                               ("weakness_open_labels", "weakness", "weakness: open labels (bits)")]):
        for regime, marker in (("small", "o"), ("large", "s")):
            cell = table[table["regime"] == regime].groupby("n")[name]
            ax.errorbar(cell.mean().index, cell.mean(), yerr=cell.std(), marker=marker, capsize=3,
                        color=FAMILY_COLORS[family], alpha=1.0 if regime == "small" else 0.55,
                        ls="-" if regime == "small" else "--", label=f"{regime} batch")
        _log_size_axis(ax, sizes)
        ax.set(xlabel="training-set size n", ylabel=label)
        ax.legend(title="mean \u00b1 sd over seeds")
    axes[0].set_yscale("log")
    axes[0].yaxis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    axes[0].yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axes[0].yaxis.set_minor_formatter(mticker.NullFormatter())
    if probes_note:
        axes[1].set_title(probes_note)
    return fig


def _wrap(text: str, width: int = 26) -> str:
    """A label broken onto lines of about ``width`` characters, at spaces and after underscores
    (a measure's name breaks as ``simplicity_description_`` / ``length``), never inside a word."""
    import re

    lines, line = [], ""
    for token in (t for t in re.split(r"(?<=_)|(?= )", text) if t):
        if line and len(line) + len(token) > width:
            lines.append(line.rstrip())
            line = token.lstrip()
        else:
            line += token
    return "\n".join([*lines, line.rstrip()])


# ----------------------------------------------------------------------------- correlation studies

def scatter_row(frame, panels: list[tuple[str, str, str, str]], y, ylabel: str, height: float = 3.4):
    """One panel per ``(column, family, xlabel, title)`` of ``panels``, side by side with a shared
    vertical axis: ``y`` (one value per row of ``frame``) against the column, one dot per network,
    in the family's colour."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = figure("row", ncols=len(panels), height=height, sharey=True, squeeze=False)
    for ax, (column, family, xlabel, title) in zip(axes[0], panels):
        ax.scatter(frame[column], y, s=10, color=FAMILY_COLORS[family], alpha=0.8)
        ax.set(xlabel=_wrap(xlabel), title=title)
        # a third of the column each: at most four ticks, so that labels such as -106.5k stay apart
        ax.xaxis.set_major_locator(MaxNLocator(nbins=3))
    axes[0, 0].set_ylabel(ylabel)
    return fig


def ranks_by_family(frame, families: dict, y, ylabel: str):
    """One panel per family (``families``: family -> {measure: legend label}), each of its measures
    as a rank among the networks (so that measures in different units share an axis) against
    ``y``; the legend to the right of its panel."""
    fig, axes = figure("grid", nrows=len(families), ncols=1, sharex=True, squeeze=False)
    for ax, (family, members) in zip(axes[:, 0], families.items()):
        for i, (measure, label) in enumerate(members.items()):
            ax.scatter(frame[measure].rank(pct=True), y, s=8, alpha=0.6, marker="os^Dv<>p"[i % 8], label=label)
        ax.set(ylabel=ylabel, title=family)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), title="Spearman rho")
    axes[-1, 0].set_xlabel("rank among the networks (fraction)")
    return fig


# ----------------------------------------------------------------------------- the robustness atlas (C2+)

def atlas_within(within, order: list[str], environments: list[str], datasets: list[str], seeds: int):
    """Every measure (rows, in ``order``) in every environment (columns), one heat map per dataset
    stacked above one another, coloured by the measure's Spearman rho with test accuracy within
    the environment; a dot marks a permutation p below 0.05. The environments are labelled once,
    under the lowest map."""
    height = 1.0 + 0.19 * len(order) * len(datasets) + 0.09 * max(map(len, environments))
    fig, axes = figure("grid", nrows=len(datasets), ncols=1, sharex=True, squeeze=False, height=height)
    for ax, dataset in zip(axes[:, 0], datasets):
        part = within[within["dataset"] == dataset]
        rho, p = (part.pivot(index="measure", columns="environment", values=v)
                  .reindex(index=order, columns=environments) for v in ("rho", "p"))
        image = ax.imshow(rho.to_numpy(float), cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
        ys, xs = np.nonzero(p.to_numpy(float) < 0.05)
        ax.scatter(xs, ys, s=6, color="black")
        ax.set_yticks(range(len(order)), order)
        ax.set_xticks(range(len(environments)), environments, rotation=90)
        ax.set_title(f"{dataset}: {seeds} seeds per environment")
        ax.grid(False)
    fig.colorbar(image, ax=axes[:, 0].tolist(), shrink=0.5, label="Spearman rho")
    return fig


def atlas_across(across, order: list[str], datasets: list[str]):
    """Per measure (rows, in ``order``) and dataset: Jiang et al.'s Psi (left) and Dziugaite et
    al.'s sign errors over pairs of environments, mean (bar) and worst case (dot) (right)."""
    fig, (left, right) = figure("row", ncols=2, sharey=True, height=1.2 + 0.3 * len(order))
    height = 0.8 / len(datasets)
    for k, dataset in enumerate(datasets):
        part = across[across["dataset"] == dataset].set_index("measure").reindex(order)
        y = np.arange(len(order)) + k * height
        left.barh(y, part["psi"], height=height, color=f"C{k}")
        right.barh(y, part["sign_error_mean"], height=height, color=f"C{k}", label=dataset)
        right.scatter(part["sign_error_max"], y, s=14, color=f"C{k}", edgecolor="black", zorder=3, clip_on=False,
                      label=f"{dataset}: worst case")
    left.set_yticks(np.arange(len(order)) + height * (len(datasets) - 1) / 2, order)
    left.invert_yaxis()  # the heat map's top-to-bottom order
    left.axvline(0, color="black", lw=0.8)
    left.set(xlabel="Psi (oriented by the claimed sign)", title="Jiang et al.:\ngranulated Kendall")
    right.axvline(0.5, color="black", lw=0.8, ls="--")
    right.set(xlabel="sign error (0.5: a coin)", title="Dziugaite et al.:\nsign errors over pairs", xlim=(0, 1.03))
    fig.legend(*right.get_legend_handles_labels(), loc="outside upper center", ncol=2)
    return fig


def placeholder(text: str):
    """A small image that says ``text``, for a figure the page names but this run did not make
    (a dataset left out by the run's parameters); nothing is saved."""
    import io

    from IPython.display import Image

    fig, ax = figure("single", height=0.6)
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return Image(data=buffer.getvalue(), width=round(WIDTH_IN["single"] * CSS_PX_PER_INCH))


# ----------------------------------------------------------------------------- regularised minima (C6)

REGIME_COLORS = {"baseline": "#333333", "weight_decay": "#4c72b0", "augmentation": "#55a868", "sam": "#c44e52",
                 "all": "#8172b2"}


def regularised_sharpness(part, regimes: list[str], title: str):
    """Test accuracy against raw (top eigenvalue) and invariant (adaptive) sharpness, one dot per
    network of one dataset (``part``), coloured by regime."""
    fig, axes = figure("row", ncols=2, sharey=True, height=3.2)
    for ax, (name, label) in zip(axes, [("top_eigenvalue", "top Hessian eigenvalue (raw)"),
                                        ("adaptive_sharpness", "adaptive sharpness (invariant)")]):
        for regime in regimes:
            rows = part[part["regime"] == regime]
            ax.scatter(rows[name], 100 * rows["test_acc"], s=20, color=REGIME_COLORS[regime], label=regime,
                       alpha=0.85)
        ax.set(xscale="log", xlabel=label)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(title="regime", loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(title)
    return fig


def effects_grid(effects, cells: list[tuple[str, str]], titles: dict, labels: list[str]):
    """One panel per metric (``titles``: metric -> title): each regime-dataset cell's paired
    difference from the baseline with its interval, filled where the interval excludes 0."""
    rows_of_panels = -(-len(titles) // 3)
    fig, axes = figure("grid", nrows=rows_of_panels, ncols=3, sharey=True, squeeze=False,
                       height=0.9 + rows_of_panels * (0.5 + 0.22 * len(cells)))
    for ax, (metric, title) in zip(axes.flat, titles.items()):
        rows = effects[effects["metric"] == metric].set_index(["dataset", "regime"]).loc[cells].reset_index()
        y = np.arange(len(rows))[::-1]
        for i, row in rows.iterrows():
            lo, hi, colour = row["ci_low"], row["ci_high"], REGIME_COLORS[row["regime"]]
            ax.errorbar(row["difference"], y[i], xerr=[[row["difference"] - lo], [hi - row["difference"]]], fmt="o",
                        color=colour, mfc=colour if lo > 0 or hi < 0 else "white", capsize=2)
        ax.axvline(0, color="0.5", lw=0.8)
        ax.set_title(_wrap(title, 22))
        ax.set_yticks(y, labels)
    for ax in axes.flat[len(titles):]:
        ax.set_visible(False)
    fig.supxlabel("regime minus baseline (filled: the interval excludes 0)")
    return fig


# ----------------------------------------------------------------------------- PAC-Bayes certificates (C5)

def certificates_against_error(table, datasets: list[str], names: dict, sizes: list[int], optimizers: list[str]):
    """Each network's certificate against its test error (both %), one panel per dataset: colour
    for the training-set size, marker for the optimiser, each with its own short legend; the
    diagonal is where a certificate would equal the error it bounds."""
    from matplotlib.lines import Line2D

    fig, axes = figure("row", ncols=len(datasets), squeeze=False, height=3.4)
    colours = dict(zip(sizes, plt.cm.viridis(np.linspace(0.15, 0.85, len(sizes)))))
    markers = dict(zip(optimizers, "os^D"))
    for ax, dataset in zip(axes[0], datasets):
        part = table[(table["dataset"] == dataset) & (table["status"] == "ok")]
        for size in sizes:
            for optimizer in optimizers:
                rows = part[(part["optimizer"] == optimizer) & (part["train_size"] == size)]
                ax.scatter(100 * rows["test_error"], 100 * rows["certificate"], color=colours[size],
                           marker=markers[optimizer], s=24)
        high = 100 * max(part["certificate"].max(), part["test_error"].max()) * 1.05
        ax.plot([0, high], [0, high], color="grey", lw=0.8, ls="--")
        ax.set(xlabel="trained network's test error (%)", ylabel="certificate (%)", title=names[dataset])
    size_legend = axes[0, -1].legend(handles=[Line2D([], [], ls="", marker="o", color=c, label=f"{n:,}")
                                              for n, c in colours.items()], title="training set",
                                     loc="upper left", bbox_to_anchor=(1.02, 1))
    axes[0, -1].add_artist(size_legend)
    axes[0, -1].legend(handles=[Line2D([], [], ls="", marker=m, color="0.3", label=o) for o, m in markers.items()],
                       title="optimiser", loc="lower left", bbox_to_anchor=(1.02, 0))
    return fig


def forest(rows, labels: list[str], is_bound, xlabel: str):
    """Correlations with their 95 % intervals, one row each (``rows``: rho, ci_low, ci_high),
    labelled on the left; bounds as diamonds, weakness measures as dots."""
    from matplotlib.lines import Line2D

    fig, ax = figure("row", height=1.0 + 0.24 * len(rows))
    y = np.arange(len(rows))
    is_bound = np.asarray(is_bound, bool)
    rho = rows["rho"].to_numpy(float)
    ax.errorbar(rho, y, xerr=[rho - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - rho],
                fmt="none", ecolor="grey", lw=1)
    ax.scatter(rho[is_bound], y[is_bound], color=FAMILY_COLORS["bound"], marker="D", zorder=3)
    ax.scatter(rho[~is_bound], y[~is_bound], color=FAMILY_COLORS["weakness"], marker="o", zorder=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set(xlabel=xlabel, xlim=(-1.05, 1.05))
    ax.set_xticks([-1, -0.5, 0, 0.5, 1])
    ax.legend(handles=[Line2D([], [], ls="", marker="D", color=FAMILY_COLORS["bound"], label="a bound"),
                       Line2D([], [], ls="", marker="o", color=FAMILY_COLORS["weakness"], label="a weakness measure")],
              loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2)
    return fig


# ----------------------------------------------------------------------------- flattest interpolators (C7)

KIND_COLORS = ["#4c72b0", "#55a868", "#1b9e77", "#c44e52", "#dd8452"]  # generalising kinds blue-green, others warm


def interpolators_benign(benign, kinds: list[str], non_generalising: list[str]):
    """Relative population loss against the raw Hessian trace (left; hollow: the non-generalising
    interpolators at their flattest rescaling) and against the trace minimised over rescalings
    (right), one colour per kind; one legend for both panels, above them."""
    fig, axes = figure("row", ncols=2, sharey=True, height=3.4)
    colours = dict(zip(kinds, KIND_COLORS))
    for kind in kinds:
        rows = benign[benign["kind"] == kind]
        axes[0].scatter(rows["trace"], rows["relative_loss"], color=colours[kind], label=kind, s=22)
        axes[1].scatter(rows["min_trace"], rows["relative_loss"], color=colours[kind], s=22)
        if kind in non_generalising:  # the rescaling attack: the same functions at their flattest
            axes[0].scatter(rows["min_trace"], rows["relative_loss"], facecolors="none", edgecolors=colours[kind],
                            label=f"{kind}, flattest rescaling", s=22)
    axes[0].set(xscale="log", xlabel="Hessian trace (raw)", ylabel="population loss / zero function's")
    axes[1].set(xscale="log", xlabel="Hessian trace, minimised over rescalings")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncol=3)
    return fig


def separation_bars(by_condition, clean: float):
    """Per condition of noise and approximation error, the AUC by which flatness separates the
    generalising interpolators from the others: by the minimised trace and by the raw trace
    after the rescaling attack; a coin (0.5) dashed, ``clean`` dotted."""
    fig, ax = figure("row", height=3.0)
    labels = [f"noise {r.noise:g}\napprox. {r.approximation:g}" for r in by_condition.itertuples()]
    x = np.arange(len(by_condition))
    ax.bar(x - 0.2, by_condition["AUC, minimised trace"], width=0.4, label="minimised trace",
           color=FAMILY_COLORS["weakness"])
    ax.bar(x + 0.2, by_condition["AUC, raw trace after the attack"], width=0.4, label="raw trace after the attack",
           color=FAMILY_COLORS["sharpness"])
    ax.axhline(0.5, color="0.4", ls="--", lw=0.8)
    ax.axhline(clean, color="0.4", ls=":", lw=0.8)
    ax.set_xticks(x, labels)
    ax.set(ylim=(0, 1.05), ylabel="AUC (generalising flatter)")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2)
    return fig


# ----------------------------------------------------------------------------- weakness counted exactly (C8)

SCORE_TITLES = {"accuracy": "accuracy (open: a coin)", "worst_case": "worst case over completions",
                "bennett": "Bennett's criterion", "bennett_strict": "Bennett's criterion, read strictly"}


def learner_scores(summary, rules: list[str], learners: list[str]):
    """Each learner's mean score over the draws with its 95 % interval, by target rule: one panel
    per score (``SCORE_TITLES``), two by two; one legend above."""
    fig, axes = figure("grid", nrows=2, ncols=2, sharey=True, height=5.6)
    width = 0.8 / len(learners)
    for ax, (score, title) in zip(axes.flat, SCORE_TITLES.items()):
        for k, learner in enumerate(learners):
            part = summary[summary["learner"] == learner].set_index("rule").reindex(rules)
            x = np.arange(len(rules)) + (k - (len(learners) - 1) / 2) * width
            ax.bar(x, part[score], width=width, yerr=part[f"{score}_pm"], label=learner, capsize=2, color=f"C{k}")
        ax.set_xticks(range(len(rules)), rules)
        ax.set(title=title, ylim=(0, 1.05))
    for ax in axes[:, 0]:
        ax.set_ylabel("mean over draws")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside upper center", ncol=len(learners))
    return fig


def estimators_against_exact(nets, probe_n: int):
    """Each MNIST estimator against the exact value it estimates on the finite domain, one dot
    per network: the sampled open-labels count against exact weakness, and the input-volume rays
    against the mean Hamming radius."""
    fig, (left, right) = figure("row", ncols=2, height=3.2)
    left.scatter(nets["exact_per_input"], nets["weakness_open_labels"], s=12, color=FAMILY_COLORS["weakness"])
    left.set(xlabel=_wrap("exact weakness (open labels per unseen input)", 30),
             ylabel=_wrap(f"weakness_open_labels ({probe_n} probes)", 30), title="the literal reading")
    right.scatter(nets["hamming_radius"], nets["weakness_input_volume"], s=12, color=FAMILY_COLORS["weakness"])
    right.set(xlabel="mean Hamming radius (bits)", ylabel=_wrap("weakness_input_volume (mean log L2 radius)", 30),
              title="the geometric reading")
    return fig


# ----------------------------------------------------------------------------- reparameterisation (C1)

def reparameterisation(alphas, inflation: dict, changes, families: dict, invariant: dict, predictions_changed: int):
    """Alpha-scaling one network. Above: the Hessian measures' inflation over the original against
    alpha (``inflation``: name -> values), alpha squared dashed, 100x dotted. Below: every measure's
    largest relative change over the alphas (``changes``: measure -> value; zero drawn at 1e-9),
    coloured by family (``families``), filled where the registry tags it invariant."""
    from matplotlib.lines import Line2D

    rows = list(changes)
    fig, (top, bottom) = figure("grid", nrows=2, ncols=1, height=3.4 + 0.2 * len(rows),
                                gridspec_kw={"height_ratios": [2.6, 0.8 + 0.2 * len(rows)]})
    for (name, values), marker in zip(inflation.items(), "os^D"):
        top.plot(alphas, values, marker=marker, label=name)
    top.plot(alphas, np.asarray(alphas, float) ** 2, "k--", lw=1, label=r"$\alpha^2$")
    top.axhline(100, color="grey", lw=0.8, ls=":")
    top.set(xscale="log", yscale="log", xlabel=r"$\alpha$", ylabel="inflation over the original",
            title=f"The Hessian under alpha-scaling; test predictions changed: {predictions_changed}")
    top.legend()
    y = np.arange(len(rows))
    for i, name in enumerate(rows):
        colour = FAMILY_COLORS[families[name]]
        bottom.scatter(max(changes[name], 1e-9), y[i], s=30, color=colour,
                       facecolors=colour if invariant[name] else "white", zorder=3)
    bottom.axvline(1e-3, color="grey", lw=0.8, ls=":")
    bottom.set_yticks(y, rows)
    bottom.invert_yaxis()
    bottom.set(xscale="log", xlabel="largest relative change over the alphas (zero drawn at 1e-9)",
               title="Every measure under alpha-scaling")
    handles = [Line2D([], [], ls="", marker="o", color=FAMILY_COLORS[f], label=f)
               for f in dict.fromkeys(families[name] for name in rows)]
    handles += [Line2D([], [], ls="", marker="o", color="0.3", label="tagged invariant"),
                Line2D([], [], ls="", marker="o", color="0.3", mfc="white", label="not invariant")]
    bottom.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig
