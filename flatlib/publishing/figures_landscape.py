"""The figures of the primer (loss slices, contours, spectra, paths), of the batch sweep (C4) and
of the correlation studies, drawn in the book's style (``flatlib.plots``, which re-exports them).
"""
from __future__ import annotations

import numpy as np  # noqa: E402

from flatlib.publishing.plot_style import FAMILY_COLORS, figure

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


def wrapped_label(text: str, width: int = 26) -> str:
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
        ax.set(xlabel=wrapped_label(xlabel), title=title)
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
