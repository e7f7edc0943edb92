"""One plotting style for the whole book, and one way to save a figure beside a chapter's summary."""
from __future__ import annotations

from pathlib import Path

import matplotlib

# Chapters run headless under papermill and in CI.
if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "agg"):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
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


def style() -> None:
    """Apply the book's style: seaborn's white grid, paper context, readable sizes."""
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.2)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight",
                         "axes.spines.top": False, "axes.spines.right": False,
                         # tick labels carry their own values: no "1e-7+9.99e-1" offset over an axis
                         "axes.formatter.useoffset": False})


def savefig(fig, out_dir: str | Path, name: str) -> Path:
    """Save ``fig`` as ``out_dir/name.png`` (the chapter's output folder) and return the path."""
    path = Path(out_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# ----------------------------------------------------------------------------- the primer's pictures

def slices(ax, curves: dict, xlabel: str, log: bool = False) -> None:
    """1-D loss slices (``flatlib.landscape.Slice``) on one axis, one line per label, the
    trained weights (step 0) marked."""
    for (label, s), style_ in zip(curves.items(), ("-", "--", ":", "-.")):
        ax.plot(s.steps, s.loss, style_, lw=1.8, label=label)
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set(xlabel=xlabel, ylabel="training loss (nats)", yscale="log" if log else "linear")
    ax.legend(fontsize=8)


def contour(ax, s, levels=None, xlabel: str = "direction 1", ylabel: str = "direction 2"):
    """A 2-D slice (``flatlib.landscape.Slice`` with ``steps2``) as filled contours of log10 loss,
    the trained weights marked at the origin. Returns the contour set (for a colour bar)."""
    import numpy as np

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
